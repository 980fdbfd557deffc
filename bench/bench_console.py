"""Console benchmark: how long the /usage and /metrics pages take to answer, and what they weigh.

Run against a running stack (`make run`, then e.g. `llmmeter demo --records 20000`):

    .venv/bin/python bench/bench_console.py [--url http://127.0.0.1:8080] [--reps 10] [--since 30d]

For each page it prints the median and p95 of (a) its data calls alone (the console's own
`data` functions through the client package, all of a page's calls at once, as the page makes
them) and (b) the whole HTTP answer (data calls plus rendering), and the page's weight: the HTML
plus every asset it loads (CSS, JS, Chart.js). Figures only; the goal (all data calls of a page
within 300 ms at 10M records) is printed with them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
import urllib.request
from typing import Any

from llmmeter.config import ClientConfig
from llmmeter_console import data
from llmmeter_console.backend import Backend, client_config
from llmmeter_console.settings import ConsoleSettings
from llmmeter_console.window import parse_view

ASSETS = ("/static/console.css", "/static/console.js", "/vendor/chart.umd.js")
GOAL_MS = 300.0


def _get(url: str) -> tuple[float, int]:
    t0 = time.perf_counter()
    with urllib.request.urlopen(url, timeout=60) as resp:
        body = resp.read()
    return (time.perf_counter() - t0) * 1000, len(body)


def _stats(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {"median_ms": round(statistics.median(ordered), 1),
            "p95_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))], 1)}


async def _data_calls(backend: Backend, page: str, since: str, reps: int) -> list[float]:
    view = parse_view({"since": since, "group": "model"})
    times = []
    for _ in range(reps + 1):
        t0 = time.perf_counter()
        if page == "usage":
            await data.usage(backend, view, "")
        else:
            await data.metrics(backend, view)
        times.append((time.perf_counter() - t0) * 1000)
    return times[1:]  # the first warms the channel


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default="http://127.0.0.1:8080")
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--since", default="30d")
    args = p.parse_args()
    env = ClientConfig.from_env()
    settings = ConsoleSettings(query_addr=env.query_addr, alerts_addr=env.alerts_addr)
    config = client_config(settings, env.api_key or "")
    from llmmeter.alerts_client import AlertsClient
    from llmmeter.query_client import QueryClient

    backend = Backend(QueryClient(config), AlertsClient(config))
    report: dict[str, Any] = {"since": args.since, "reps": args.reps}
    try:
        for page in ("usage", "metrics"):
            calls = _stats(await _data_calls(backend, page, args.since, args.reps))
            url = f"{args.url}/{page}?since={args.since}&group=model"
            _get(url)
            http = [_get(url) for _ in range(args.reps)]
            html = http[-1][1]
            assets = sum(_get(args.url + a)[1] for a in ASSETS if page == "metrics" or "chart" not in a)
            report[page] = {"data_calls": calls, "http": _stats([t for t, _ in http]),
                            "html_bytes": html, "page_bytes": html + assets,
                            "goal_data_calls_le_300ms": calls["median_ms"] <= GOAL_MS}
            print(f"/{page:8} data calls {calls['median_ms']:7.1f} ms median ({calls['p95_ms']:.1f} p95)"
                  f"   whole answer {report[page]['http']['median_ms']:7.1f} ms"
                  f"   weight {html / 1024:.0f} KiB HTML, {(html + assets) / 1024:.0f} KiB with assets"
                  f"   goal <= {GOAL_MS:.0f} ms: {'met' if calls['median_ms'] <= GOAL_MS else 'NOT met'}")
    finally:
        await backend.close()
    print(json.dumps({"bench": "console", **report}))


if __name__ == "__main__":
    asyncio.run(main())
