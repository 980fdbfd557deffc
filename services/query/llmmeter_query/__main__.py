"""`python -m llmmeter_query`: run the query service until SIGTERM or Ctrl-C."""

from llmmeter_common.serving import run_service
from llmmeter_query.server import QueryServer
from llmmeter_query.settings import QuerySettings

if __name__ == "__main__":
    run_service(QueryServer(QuerySettings()))
