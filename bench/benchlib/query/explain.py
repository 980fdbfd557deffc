"""--explain: where the time of the aggregate calls goes, measured beside the service.

A slow aggregate call can be the database, the transfer or the service's own merging; this
rebuilds the service's statements, times them and the in-process Aggregator.run separately,
and keeps their EXPLAIN (ANALYZE, BUFFERS) plans. Informational: it never fails the benchmark.
"""

from __future__ import annotations

import functools
from datetime import datetime, timedelta
from typing import Any

from ..timing import time_async, time_sql


async def explain_aggregates(dsn: str, end: datetime, days: int) -> tuple[dict[str, Any], str]:
    """Where the time of the aggregate calls goes: the service's own statements (rebuilt with
    llmmeter_query.aggregate_sql.AggregateSql, as Aggregator.run builds them), each fetched 5 times, the
    in-process Aggregator.run, and EXPLAIN (ANALYZE, BUFFERS) of each statement (returned as text)."""
    import asyncpg

    from llmmeter_common.rollups import covering_mask
    from llmmeter_query.aggregate import ALL_PERCENTILES, Aggregator, Top, parse_group
    from llmmeter_query.filters import parse_filter
    from llmmeter_query.settings import QuerySettings
    from llmmeter_query.window import Window

    cases = {
        "summary": (Window(end - timedelta(days=days), end), None, None),
        "series": (Window(end - timedelta(days=7), end), "model", timedelta(hours=1)),
        "breakdown": (Window(end - timedelta(days=days), end), "user", None),
    }
    out: dict[str, Any] = {}
    plans: list[str] = []
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    try:
        agg = Aggregator(pool, timedelta(seconds=QuerySettings().exact_window_seconds))
        filt = parse_filter("")
        for name, (window, group_name, bucket) in cases.items():
            group = parse_group(group_name or "")
            q = agg._query(window, filt, group, bucket)
            stretches = q.stretches
            # the series asks for p95 latency only; summary and breakdown read both histograms
            percentiles = {"lat": (0.95,)} if name == "series" else ALL_PERCENTILES
            top = (None if group is None else
                   Top(10, lambda t: sorted(t, key=lambda g: (-t[g].get("request_count"), str(g))),
                       fold=name == "series"))
            stmts = {"measures": q.measures(),
                     "histograms (all groups)": q.histograms(list(percentiles), None)}
            info: dict[str, Any] = {"stretches": [
                f"{st.level.table if st.level else 'raw'} (dims_mask "
                f"{covering_mask(q.dims, st.level.table) if st.level else '-'}) "
                f"{st.start:%m-%d %H:%M:%S}..{st.end:%m-%d %H:%M:%S}" for st in stretches]}
            async with pool.acquire() as conn:
                for label, (sql, params) in stmts.items():
                    timing, rows = await time_sql(conn, sql, params, 1, 5)
                    plan = await conn.fetch("EXPLAIN (ANALYZE, BUFFERS) " + sql, *params)
                    text = "\n".join(r[0] for r in plan)
                    exec_ms = next((float(line.split(":")[1].split()[0]) for line in text.splitlines()
                                    if line.startswith("Execution Time")), None)
                    info[label] = {"fetch_median_ms": timing["median_ms"],
                                   "rows": len(rows), "explain_exec_ms": exec_ms}
                    plans.append(f"===== {name} / {label} ({len(rows)} rows)\n{sql}\n"
                                 f"-- params: {params}\n{text}\n")
            run = functools.partial(agg.run, window, filt, group, bucket, top=top, percentiles=percentiles)
            timing, _ = await time_async(run, 0, 5)
            info["aggregator_run_median_ms"] = timing["median_ms"]
            out[name] = info
    finally:
        await pool.close()
    return out, "\n".join(plans)
