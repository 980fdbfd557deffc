"""`python -m llmmeter_ingest`: run the ingest service until SIGTERM or Ctrl-C."""

from llmmeter_common.serving import run_service
from llmmeter_ingest.server import IngestServer
from llmmeter_ingest.settings import IngestSettings

if __name__ == "__main__":
    run_service(IngestServer(IngestSettings()))
