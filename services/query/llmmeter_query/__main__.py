"""`python -m llmmeter_query`: run the query service until SIGTERM or Ctrl-C."""

from llmmeter_common.heap import keep_freed_memory
from llmmeter_common.serving import run_service
from llmmeter_query.server import QueryServer
from llmmeter_query.settings import QuerySettings

if __name__ == "__main__":
    settings = QuerySettings()
    keep_freed_memory(settings.keep_heap_bytes)  # process-wide: here, not in the (testable) server
    run_service(QueryServer(settings))
