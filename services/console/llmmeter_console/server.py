"""Running the console: uvicorn serving the app, stopped by SIGTERM or Ctrl-C like the other services."""

from __future__ import annotations

import uvicorn

from llmmeter_common.serving import configure_logging
from llmmeter_console.app import create_app
from llmmeter_console.settings import ConsoleSettings


def main() -> None:
    """`python -m llmmeter_console`."""
    configure_logging()
    settings = ConsoleSettings()
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_config=None,
                access_log=False, proxy_headers=False)
