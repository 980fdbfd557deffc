"""`python -m llmmeter_query`: run the query service until SIGTERM or Ctrl-C."""

from llmmeter_common.placeholder import PlaceholderServer
from llmmeter_common.serving import run_service
from llmmeter_query.settings import QuerySettings

if __name__ == "__main__":
    s = QuerySettings()
    run_service(PlaceholderServer("query", s.database_url, s.host, s.port))
