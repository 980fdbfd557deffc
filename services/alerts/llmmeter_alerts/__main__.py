"""`python -m llmmeter_alerts`: run the alerts service until SIGTERM or Ctrl-C."""

from llmmeter_alerts.settings import AlertsSettings
from llmmeter_common.placeholder import PlaceholderServer
from llmmeter_common.serving import run_service

if __name__ == "__main__":
    s = AlertsSettings()
    run_service(PlaceholderServer("alerts", s.database_url, s.host, s.port))
