"""`python -m llmmeter_alerts`: run the alerts service until SIGTERM or Ctrl-C."""

from llmmeter_alerts.server import AlertsServer
from llmmeter_alerts.settings import AlertsSettings
from llmmeter_common.serving import run_service

if __name__ == "__main__":
    run_service(AlertsServer(AlertsSettings()))
