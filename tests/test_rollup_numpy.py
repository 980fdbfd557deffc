"""The rollup worker's numpy aggregation and compaction against the rollups' SQL definition.

`rollup_agg` and `rollup_compact` replace `MATERIALIZE_SQL` and `compact_sql` on the worker's
path; they must write what the SQL writes: the same rows, sums (numeric ones with the same
value and scale), histograms holding the same counts per key (PostgreSQL's own keys), and
compacted histograms byte for byte.
"""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
import numpy as np
import pytest

from llmmeter.v1 import usage_pb2
from llmmeter_common import sketch
from llmmeter_common.rollups import DIMENSIONS, ROLLUPS
from llmmeter_ingest import rollup_agg
from llmmeter_ingest.rollup_compact import fold
from llmmeter_ingest.rollup_worker import COMPACT_SQL, MATERIALIZE_SQL, TAKE_SQL, compact
from llmmeter_ingest.rows import to_rows
from llmmeter_ingest.store import Store

from records import record

pytestmark = pytest.mark.usefixtures("postgres_flavor_only")


class _Undo(Exception):
    """Rolls a transaction back after looking at what it wrote."""


def _traffic(seed: int, n: int) -> list[usage_pb2.UsageRecord]:
    rng = random.Random(seed)
    now = datetime.now(UTC)
    recs = []
    for i in range(n):
        start = now - timedelta(seconds=rng.uniform(60, 3 * 3600))
        if rng.random() < 0.15:  # late: its own older buckets
            start = now - timedelta(days=rng.uniform(1, 10))
        streaming = rng.random() < 0.6
        latency = rng.lognormvariate(7, 1.2)
        rec = record(start.replace(microsecond=rng.randrange(1_000_000)), latency_ms=latency,
                     ttft_ms=latency * rng.random() if streaming else None, request_id=f"n-{seed}-{i}",
                     status_code=rng.choice([200] * 8 + [429, 500]), model=rng.choice(["a", "b", "c"]),
                     model_alias=rng.choice(["", "fast"]), user=rng.choice(["u1", "u2", "u3", "u4"]),
                     team=rng.choice(["t1", "t2"]), error_type=rng.choice(["", "", "RateLimitError"]),
                     input_tokens=rng.randint(0, 9000), output_tokens=rng.randint(0, 900),
                     output_chunks=rng.randint(0, 50), retries=rng.randint(0, 2),
                     cost=rng.random() * rng.choice([1e-6, 0.01, 3.0]))  # many digits, some tiny
        if rng.random() < 0.2:
            rec.media.audio_seconds = round(rng.random() * 30, rng.randint(0, 6))
        if rng.random() < 0.3:
            rec.mean_inter_token_latency.FromMicroseconds(rng.randint(0, 90_000))
        recs.append(rec)
    return recs


async def _queue(pool: asyncpg.Pool, recs: list[usage_pb2.UsageRecord]) -> None:
    written = await Store(pool, queue_for_rollups=True).write([to_rows(r, True)[0] for r in recs], [])
    assert written.count == len(recs)


async def _dump(conn: Any) -> dict[tuple, dict]:
    out = {}
    for r in ROLLUPS:
        for row in await conn.fetch(f"SELECT * FROM {r.table}"):
            d = dict(row)
            key = (r.table, d.pop("bucket"), d.pop("dims_mask"), *(d.pop(c) for c in DIMENSIONS))
            out[key] = d
    return out


def _same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        for col, x in a[key].items():
            y = b[key][col]
            if isinstance(x, float):
                assert math.isclose(x, y, rel_tol=1e-12, abs_tol=1e-9), (key, col)
            elif isinstance(x, Decimal):
                assert str(x) == str(y), (key, col)  # value and scale
            elif col.endswith("_hist"):
                assert sketch.decode(x) == sketch.decode(y), (key, col)
            else:
                assert x == y, (key, col)


async def test_numpy_rollups_equal_the_sql_rollups(db_pool: asyncpg.Pool) -> None:
    await _queue(db_pool, _traffic(1, 2500))
    async with db_pool.acquire() as conn:
        with pytest.raises(_Undo):
            async with conn.transaction():
                await conn.fetchrow(MATERIALIZE_SQL, 1_000_000)
                by_sql = await _dump(conn)
                raise _Undo
        assert await conn.fetchval("SELECT count(*) FROM usage_rollup_pending") == 2500
        moved = 0
        while True:  # several chunks: later ones add to the rows earlier ones wrote
            async with conn.transaction():
                n, lo, hi = await rollup_agg.add_groups(conn, await conn.fetch(TAKE_SQL, 700))
            if not n:
                break
            assert lo is not None and hi is not None and lo <= hi
            moved += n
        assert moved == 2500
        by_numpy = await _dump(conn)
    assert by_sql
    _same(by_sql, by_numpy)


async def test_numpy_compaction_writes_the_bytes_compact_sql_writes(db_pool: asyncpg.Pool) -> None:
    recs = _traffic(2, 1200)
    for i in range(0, len(recs), 200):  # six chunks appending to the same rows
        await _queue(db_pool, recs[i:i + 200])
        async with db_pool.acquire() as conn, conn.transaction():
            await rollup_agg.add_groups(conn, await conn.fetch(TAKE_SQL, 1000))
    lo, hi = datetime.now(UTC) - timedelta(days=11), datetime.now(UTC)
    results = []
    for use_sql in (True, False):
        async with db_pool.acquire() as conn:
            with pytest.raises(_Undo):
                async with conn.transaction():
                    if use_sql:
                        n = sum([int(await conn.fetchval(sql, lo, hi, 8)) for sql in COMPACT_SQL])
                    else:
                        n = await compact(conn, lo, hi, 8)
                    results.append((n, await _dump(conn)))
                    raise _Undo
    (n_sql, by_sql), (n_numpy, by_numpy) = results
    assert n_sql == n_numpy > 0
    assert by_sql == by_numpy  # histograms byte for byte


async def test_numpy_fold_is_llmmeter_hist_fold(db_pool: asyncpg.Pool) -> None:
    rng = random.Random(3)
    counts = [0, 1, 2, 77, sketch.COUNT_MAX, sketch.COUNT_MAX + 1, 3 * sketch.COUNT_MAX + 5]
    blobs = [b"", sketch.encode({5: 1})]
    for _ in range(200):
        parts = [sketch.encode({rng.randint(0, 8191): rng.choice(counts) for _ in range(rng.randint(0, 40))})
                 for _ in range(rng.randint(1, 4))]
        blobs.append(b"".join(parts))
    blobs.append(await db_pool.fetchval("SELECT llmmeter_hist_elems(12, 0) || llmmeter_hist_elems(12, 3)"))
    expected = [await db_pool.fetchval("SELECT llmmeter_hist_fold($1)", b) for b in blobs]
    assert fold(blobs) == expected


async def test_large_counts_are_split_as_the_sql_splits_them(db_pool: asyncpg.Pool) -> None:
    big = 2 * sketch.COUNT_MAX + 17
    keys = np.array([40] * big + [3, 3, 9000 % 8192], np.int64)
    owner = np.zeros(len(keys), np.int64)
    got = rollup_agg._histograms(keys, owner, np.zeros(1, np.int64), 1)
    assert got == [sketch.encode({40: big, 3: 2, 9000 % 8192: 1})]
    sql = await db_pool.fetchval(
        "SELECT llmmeter_hist_elems(3, 2) || llmmeter_hist_elems(40, $1) || llmmeter_hist_elems(808, 1)", big)
    assert got[0] == sql


async def test_histogram_keys_stay_postgresql_s_own_and_inlinable(db_pool: asyncpg.Pool) -> None:
    """Migration 0015 drops STRICT so the planner inlines the functions; the keys do not move."""
    strict = await db_pool.fetch(
        "SELECT proname, proisstrict FROM pg_proc "
        "WHERE proname IN ('llmmeter_hist_key', 'llmmeter_is_error')")
    assert {r["proname"]: r["proisstrict"] for r in strict} == {
        "llmmeter_hist_key": False, "llmmeter_is_error": False}
    values = [0, 1, 2, 3, 10, 99, 100, 101, 12345, 10**6, 3_600_000_000, 2**62]
    values += [int(math.exp(k * 0.010000083334583179)) + d for k in range(1, 2300, 37) for d in (-1, 0, 1)]
    got = await db_pool.fetch("SELECT v, llmmeter_hist_key(v) AS k FROM unnest($1::bigint[]) AS v", values)
    assert all(r["k"] == sketch.key_of(r["v"]) for r in got)
    assert await db_pool.fetchval("SELECT llmmeter_hist_key(NULL)") is None
    assert await db_pool.fetchval("SELECT llmmeter_is_error(NULL)") is None


def test_a_sum_past_bigint_is_refused_as_postgresql_refuses_it() -> None:
    cols = np.array([[2**62], [2**62], [1]], dtype=object)
    order, starts = np.arange(3), np.array([0])
    with pytest.raises(asyncpg.exceptions.NumericValueOutOfRangeError) as err:
        rollup_agg._sums("bigint", rollup_agg._int64(cols), order, starts)
    assert err.value.sqlstate == "22003"
    apart = rollup_agg._sums("bigint", rollup_agg._int64(cols), order, np.array([0, 1, 2]))
    assert apart == [[2**62, 2**62, 1]]


async def test_numeric_sums_keep_sql_s_value_and_scale(db_pool: asyncpg.Pool) -> None:
    rng = random.Random(9)
    texts = ["0", "0.000", "12", "0.5", "1.25", "0.0000000001", "99999.999999999999999999",
             "123456789012345678.12345678901234567890"]  # the last two overflow int64 once scaled
    values = [rng.choice(texts) for _ in range(400)]
    groups = np.array(sorted(rng.randrange(40) for _ in values))
    starts = np.flatnonzero(np.r_[True, np.diff(groups) != 0])
    got = rollup_agg._sums("numeric", [rollup_agg._numeric(values)], np.arange(len(values)), starts)[0]
    want = await db_pool.fetch(
        "SELECT g, sum(v::numeric)::text AS s FROM unnest($1::int[], $2::text[]) AS u(g, v) "
        "GROUP BY g ORDER BY g",
        groups.tolist(), values)
    assert got == [r["s"] for r in want]
    zeros = rollup_agg._numeric(["0"] * 5)
    assert zeros is None and rollup_agg._numeric_sums(zeros, np.arange(5), np.array([0, 2])) == ["0", "0"]
