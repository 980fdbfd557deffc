"""`python -m llmmeter_ingest`: run the ingest service until SIGTERM or Ctrl-C."""

from __future__ import annotations

import asyncio

from llmmeter_common.serving import configure_logging, wait_for_shutdown_signal
from llmmeter_ingest.server import IngestServer
from llmmeter_ingest.settings import IngestSettings


async def _main() -> None:
    server = IngestServer(IngestSettings())
    await server.start()
    try:
        await wait_for_shutdown_signal()
    finally:
        await server.stop()


def main() -> None:
    """Entry point."""
    configure_logging()
    asyncio.run(_main())


if __name__ == "__main__":
    main()
