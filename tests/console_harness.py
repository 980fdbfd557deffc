"""The console in-process for tests (uvicorn on a free loopback port) and a real headless Chromium.

Chromium is Debian's (`.ci/run` installs it); Playwright drives that binary, never a browser of
its own. Without it the browser tests fail, unless LLMMETER_SKIP_BROWSER_TESTS=1 says to skip.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from llmmeter_console.app import create_app
from llmmeter_console.settings import ConsoleSettings

SCREENSHOTS = Path(__file__).resolve().parent.parent / "test-artifacts" / "console"


@contextlib.asynccontextmanager
async def serving(settings: ConsoleSettings) -> AsyncIterator[str]:
    """The console on a free port; yields its base URL."""
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=0,
                                           log_config=None, access_log=False, lifespan="on"))
    task = asyncio.create_task(server.serve())
    try:
        for _ in range(200):
            if server.started:
                break
            await asyncio.sleep(0.05)
        assert server.started, "the console did not start"
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


def chromium_path() -> str:
    """Debian's chromium, or a failure that says how to get it."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if os.environ.get("LLMMETER_SKIP_BROWSER_TESTS") == "1":
        pytest.skip("LLMMETER_SKIP_BROWSER_TESTS=1 and no chromium")
    pytest.fail("no chromium: `make browser` (make test does it) installs Debian's; "
                "or set LLMMETER_SKIP_BROWSER_TESTS=1")


@contextlib.asynccontextmanager
async def browser_page() -> AsyncIterator[Any]:
    """A page of a fresh headless Chromium, 1400x900."""
    from playwright.async_api import async_playwright

    path = chromium_path()
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=path, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = await browser.new_page(viewport={"width": 1400, "height": 900})
            yield page
        finally:
            await browser.close()


async def screenshot(page: Any, name: str) -> Path:
    """A full-page screenshot for review, in test-artifacts/console/."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    await page.screenshot(path=str(path), full_page=True)
    return path
