"""Rollups equal what aggregating the raw rows gives, with late and repeated records, and
percentiles read back from them stay within the sketch's error bound."""

from __future__ import annotations

import asyncio
import math
import random
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from llmmeter.v1 import ingest_pb2
from llmmeter_common import sketch
from llmmeter_common.rollups import DIMENSIONS, ROLLUPS, Rollup, mask_of, rollup_columns, set_relation
from llmmeter_ingest.rollup_worker import CLOSE_GRACE, RollupWorker, compact
from llmmeter_query.aggregate import Aggregator, parse_group
from llmmeter_query.filters import parse_filter
from llmmeter_query.window import Window

from conftest import drain_rollups
from records import record

_WIDTH = {"1 minute": timedelta(minutes=1), "1 hour": timedelta(hours=1), "1 day": timedelta(days=1)}
_ORIGIN = datetime(2000, 1, 1, tzinfo=UTC)


def _traffic(rng: random.Random, n: int) -> list:
    now = datetime.now(UTC)
    recs = []
    for i in range(n):
        late = rng.random() < 0.2
        start = now - timedelta(seconds=rng.uniform(60, 6 * 3600))
        if late:
            start = now - timedelta(days=rng.uniform(1, 12))
        status = rng.choice([200] * 12 + [429, 500, 400, 302])
        out = 0 if status >= 400 else rng.randint(1, 800)
        latency = rng.lognormvariate(7, 0.8)  # ms
        streaming = rng.random() < 0.7
        rec = record(
            start.replace(microsecond=rng.randrange(1_000_000)), latency_ms=latency,
            ttft_ms=latency * rng.uniform(0.05, 0.5) if streaming else None,
            request_id=f"r-{i}", status_code=status,
            model=rng.choice(["gpt-4o", "claude-sonnet-4", "gemini-2.5-flash"]),
            model_alias=rng.choice(["", "smart", "fast"]), provider=rng.choice(["openai", "anthropic"]),
            user=rng.choice(["ana", "bo", "cy"]), team=rng.choice(["payments", "search"]),
            account=rng.choice(["k1", "k2"]), call_type=rng.choice(["chat", "completion"]),
            error_type="RateLimitError" if status == 429 else "",
            input_tokens=rng.randint(10, 5000), output_tokens=out, output_chunks=out // 2,
            cost=round(rng.uniform(0, 0.05), 6), retries=rng.randint(0, 2),
            cache_hit=rng.random() < 0.1,
        )
        recs.append(rec)
    return recs


def _keys(hist: bytes) -> list[int]:
    """The key of every stored element, repeats included (`sketch`'s format)."""
    n = sketch.ELEM_BYTES
    return [int.from_bytes(hist[i:i + n], "big") >> sketch.COUNT_BITS for i in range(0, len(hist), n)]


def _expected(raw: list, rollup: Rollup) -> dict[tuple, dict]:
    """Aggregate raw rows in Python into the rollup's grouping sets, independently of the SQL
    that maintains the rollups."""
    width = _WIDTH[rollup.width]
    groups: dict[tuple, dict] = defaultdict(lambda: defaultdict(int))
    hists: dict[tuple, dict] = defaultdict(lambda: {"lat": defaultdict(int), "ttft": defaultdict(int)})
    keyed = []
    for r in raw:
        bucket = _ORIGIN + ((r["start_time"] - _ORIGIN) // width) * width
        for gset in rollup.sets:
            dims = (r[d] if d in gset else (0 if d == "status_code" else "") for d in DIMENSIONS)
            keyed.append(((bucket, mask_of(gset), *dims), r))
    for key, r in keyed:
        g = groups[key]
        g["request_count"] += 1
        g["error_count"] += int(not 200 <= r["status_code"] < 400)
        g["input_tokens"] += r["input_tokens"]
        g["output_tokens"] += r["output_tokens"]
        g["cost"] += r["cost"]
        g["latency_us_sum"] += r["latency_us"]
        g["ttft_count"] += int(r["ttft_us"] is not None)
        g["retries"] += r["retries"]
        g["cache_hit_count"] += int(r["cache_hit"])
        hists[key]["lat"][sketch.key_of(r["latency_us"])] += 1
        if r["ttft_us"] is not None:
            hists[key]["ttft"][sketch.key_of(r["ttft_us"])] += 1
    for key, g in groups.items():
        g["lat"] = dict(hists[key]["lat"])
        g["ttft"] = dict(hists[key]["ttft"])
    return groups


async def test_rollups_equal_raw_aggregation(ingest_stub, db_pool, db_url) -> None:
    rng = random.Random(7)
    recs = _traffic(rng, 1500)
    batches = [recs[i:i + 100] for i in range(0, len(recs), 100)]
    # client retries: some batches again, and some records repeated inside later batches
    batches += [batches[3], batches[7][:40] + recs[:10]]

    async def chunks(bs):
        for b in bs:
            yield ingest_pb2.StreamRecordsRequest(records=b)

    half = len(batches) // 2
    results = await asyncio.gather(
        *(ingest_stub.WriteRecords(ingest_pb2.WriteRecordsRequest(records=b)) for b in batches[:half]),
        ingest_stub.StreamRecords(chunks(batches[half:])),
    )
    assert sum(r.accepted_count for r in results) == 1500
    assert sum(r.duplicate_count for r in results) == sum(len(b) for b in batches) - 1500

    await drain_rollups(db_url)
    raw = await db_pool.fetch("SELECT * FROM usage_records")
    assert len(raw) == 1500
    for rollup in ROLLUPS:
        expected = _expected(raw, rollup)
        rows = await db_pool.fetch(f"SELECT * FROM {rollup.table}")
        assert len(rows) == len(expected), rollup.table
        for row in rows:
            exp = expected[(row["bucket"], row["dims_mask"], *(row[d] for d in DIMENSIONS))]
            for col in ("request_count", "error_count", "input_tokens", "output_tokens", "cost",
                        "latency_us_sum", "ttft_count", "retries", "cache_hit_count"):
                assert row[col] == exp[col], (rollup.table, col)
            # a key may repeat until compaction (upserts append); counts add up by key
            assert sketch.decode(row["lat_hist"]) == exp["lat"]
            assert sketch.decode(row["ttft_hist"]) == exp["ttft"]
    for rollup in ROLLUPS:  # each set's own relation: its level's rows of that set, every column
        for mask in rollup.masks:
            level = await db_pool.fetch(f"SELECT * FROM {rollup.table} WHERE dims_mask = {mask}")
            own = await db_pool.fetch(f"SELECT * FROM {set_relation(rollup.table, mask)}")
            assert own and list(own[0].keys()) == rollup_columns(), (rollup.table, mask)
            assert sorted(map(tuple, own)) == sorted(map(tuple, level)), (rollup.table, mask)
    total_cost = await db_pool.fetchval("SELECT sum(cost) FROM usage_1d WHERE dims_mask = 0")
    assert total_cost == sum((r["cost"] for r in raw), Decimal(0))


async def test_percentiles_from_rollups_are_within_half_a_percent(ingest_stub, db_pool, db_url) -> None:
    rng = random.Random(11)
    recs = _traffic(rng, 3000)
    for i in range(0, len(recs), 500):
        await ingest_stub.WriteRecords(ingest_pb2.WriteRecordsRequest(records=recs[i:i + 500]))
    await drain_rollups(db_url)
    rows = await db_pool.fetch(
        "SELECT lat_hist, ttft_hist FROM usage_1d WHERE dims_mask = 511")
    lat = sketch.decode(b"".join(r["lat_hist"] for r in rows))  # concatenated: the sum
    ttft = sketch.decode(b"".join(r["ttft_hist"] for r in rows))
    for q in (0.5, 0.75, 0.9, 0.95, 0.99):
        exact_lat = await db_pool.fetchval(
            "SELECT percentile_disc($1::float8) WITHIN GROUP (ORDER BY latency_us) FROM usage_records", q)
        exact_ttft = await db_pool.fetchval(
            "SELECT percentile_disc($1::float8) WITHIN GROUP (ORDER BY ttft_us) FROM usage_records", q)
        est_lat, est_ttft = sketch.quantile(lat, q), sketch.quantile(ttft, q)
        assert est_lat is not None and est_ttft is not None
        assert math.isclose(est_lat, exact_lat, rel_tol=sketch.ALPHA), (q, est_lat, exact_lat)
        assert math.isclose(est_ttft, exact_ttft, rel_tol=sketch.ALPHA), (q, est_ttft, exact_ttft)


@pytest.mark.usefixtures("postgres_flavor_only")
async def test_compaction_folds_repeated_keys_and_keeps_every_count(ingest_stub, db_pool, db_url) -> None:
    rng = random.Random(5)
    # one minute of traffic: minute rows are never compacted when a bucket closes, so what the
    # chunks appended is still there whatever the time of day
    minute = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=10)
    recs = [record(minute + timedelta(seconds=rng.uniform(0, 59)), latency_ms=rng.lognormvariate(6, 0.5),
                   ttft_ms=None, request_id=f"c-{i}") for i in range(600)]
    for i in range(0, 600, 100):  # six chunks, each appending to the same rows
        await ingest_stub.WriteRecords(ingest_pb2.WriteRecordsRequest(records=recs[i:i + 100]))
        await drain_rollups(db_url)
    select = "SELECT * FROM usage_1m WHERE dims_mask = 0 ORDER BY bucket"
    before = await db_pool.fetch(select)
    assert len(before) == 1 and before[0]["request_count"] == 600
    keys = _keys(before[0]["lat_hist"])
    assert len(keys) > len(set(keys))  # appended, not merged
    end = minute + timedelta(seconds=59)
    async with db_pool.acquire() as conn, conn.transaction():
        assert await compact(conn, minute, end, len(keys) + 1) == 0  # short enough
        rewritten = await compact(conn, minute, end, 0)
    assert rewritten >= 3  # at least the minute's, hour's and day's totals
    after = await db_pool.fetch(select)
    for b, a in zip(before, after, strict=True):
        after_keys = _keys(a["lat_hist"])
        assert after_keys == sorted(set(after_keys))  # each key once, in key order
        assert sketch.decode(a["lat_hist"]) == sketch.decode(b["lat_hist"])
        assert a["ttft_hist"] == b""
        assert a["request_count"] == b["request_count"] and a["latency_us_sum"] == b["latency_us_sum"]
    for table in ("usage_1m", "usage_1h", "usage_1d"):
        assert await db_pool.fetchval(
            f"SELECT count(*) FROM {table} WHERE length(lat_hist) / {sketch.ELEM_BYTES} <> "
            f"(SELECT count(DISTINCT k) FROM llmmeter_hist_unnest(lat_hist))") == 0, table


@pytest.mark.usefixtures("postgres_flavor_only")
async def test_closed_hours_are_compacted_once_open_days_only_past_the_threshold(ingest_stub, db_pool,
                                                                               db_url) -> None:
    rng = random.Random(8)
    # a day that no drain below closes on its own, whatever the time of day: each drain's fresh
    # worker closes only the last closed hour and day (yesterday, or the day before until 00:05)
    day = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=3)
    hour = day + timedelta(hours=10)
    recs = [record(hour + timedelta(seconds=rng.uniform(0, 3599)), latency_ms=rng.lognormvariate(6, 0.6),
                   ttft_ms=None, request_id=f"h-{i}") for i in range(800)]
    for i in range(0, 800, 200):  # four chunks appending to the same rows
        await ingest_stub.WriteRecords(ingest_pb2.WriteRecordsRequest(records=recs[i:i + 200]))
        await drain_rollups(db_url)

    def repeated(table: str) -> str:
        return (f"SELECT count(*) FROM {table} WHERE dims_mask = 0 AND length(lat_hist) / "
                f"{sketch.ELEM_BYTES} > (SELECT count(DISTINCT k) FROM llmmeter_hist_unnest(lat_hist))")

    assert await db_pool.fetchval(repeated("usage_1h")) == 1
    assert await db_pool.fetchval(repeated("usage_1d")) == 1

    async def close_at(now: datetime) -> None:
        worker = RollupWorker(db_pool, 1000, 1.0)  # fresh: closes the last closed hour and day
        async with db_pool.acquire() as conn, conn.transaction():
            await worker._close_buckets(conn, now)

    await close_at(hour + timedelta(hours=1) + CLOSE_GRACE + timedelta(minutes=5))  # the hour closed
    assert await db_pool.fetchval(repeated("usage_1h")) == 0
    assert await db_pool.fetchval(repeated("usage_1d")) == 1  # its day is still open
    await close_at(day + timedelta(days=1) + CLOSE_GRACE - timedelta(seconds=1))  # not quite closed
    assert await db_pool.fetchval(repeated("usage_1d")) == 1
    await close_at(day + timedelta(days=1) + CLOSE_GRACE + timedelta(seconds=1))
    assert await db_pool.fetchval(repeated("usage_1d")) == 0
    assert await db_pool.fetchval("SELECT sum(request_count) FROM usage_1h WHERE dims_mask = 0") == 800


@pytest.mark.usefixtures("postgres_flavor_only")
async def test_compaction_orders_the_keys_and_an_append_reads_the_same(ingest_stub, db_pool, db_url) -> None:
    rng = random.Random(9)
    minute = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=20)
    recs = [record(minute + timedelta(seconds=rng.uniform(0, 59)), latency_ms=rng.lognormvariate(6, 0.5),
                   ttft_ms=None, model=rng.choice(["a", "b"]), request_id=f"p-{i}") for i in range(400)]
    for i in range(0, 400, 100):  # appends to the same rows
        await ingest_stub.WriteRecords(ingest_pb2.WriteRecordsRequest(records=recs[i:i + 100]))
        await drain_rollups(db_url)
    window = Window(minute - timedelta(hours=2), minute + timedelta(hours=2))
    agg = Aggregator(db_pool, timedelta(minutes=1), lanes=1)

    async def percentiles() -> dict:
        got = await agg.run(window, parse_filter(""), parse_group("model"), timedelta(minutes=1))
        assert not got.exact
        return {k: (s.get("request_count"), s.quantiles) for k, s in got.groups.items()}

    before = await percentiles()
    end = minute + timedelta(seconds=59)
    async with db_pool.acquire() as conn, conn.transaction():
        rewritten = await compact(conn, minute, end, 0)
        assert rewritten > 0
    rows = await db_pool.fetch("SELECT * FROM usage_1m UNION ALL SELECT * FROM usage_1h "
                               "UNION ALL SELECT * FROM usage_1d")
    for r in rows:  # one element per key, in key order
        assert _keys(r["lat_hist"]) == sorted(set(_keys(r["lat_hist"])))
        assert r["ttft_hist"] == b""
    assert await percentiles() == before  # read without merging now

    select = "SELECT dims_mask, model, lat_hist FROM usage_1m WHERE bucket = $1"
    folded = {(r["dims_mask"], r["model"]): len(r["lat_hist"]) for r in await db_pool.fetch(select, minute)}
    late = record(minute + timedelta(seconds=30), model="a", ttft_ms=None, request_id="p-late")
    await ingest_stub.WriteRecords(ingest_pb2.WriteRecordsRequest(records=[late]))
    await drain_rollups(db_url)
    grown = {(r["dims_mask"], r["model"]) for r in await db_pool.fetch(select, minute)
             if len(r["lat_hist"]) > folded[(r["dims_mask"], r["model"])]}
    # one element appended to the late record's rows only: the minute's, its model's, its error type's
    assert grown == {(0, ""), (mask_of(["model"]), "a"), (mask_of(["error_type"]), "")}
    after = await percentiles()
    assert sum(n for n, _ in after.values()) == 401


def test_the_stored_format_splits_large_counts_and_adds_up_when_concatenated() -> None:
    big = {3: 1, 4400: sketch.COUNT_MAX + 5, 17: 2}
    blob = sketch.encode(big)
    assert len(blob) == 4 * sketch.ELEM_BYTES and _keys(blob) == [3, 17, 4400, 4400]
    assert sketch.decode(blob) == big
    assert sketch.decode(blob + sketch.encode({3: 2})) == {**big, 3: 3}


async def test_sql_writes_and_folds_the_format_python_reads(db_pool) -> None:
    blob = await db_pool.fetchval(
        "SELECT llmmeter_hist_elems(4400, $1) || llmmeter_hist_elems(3, 1) || llmmeter_hist_elems(3, 2)",
        sketch.COUNT_MAX + 5)
    assert sketch.decode(blob) == {4400: sketch.COUNT_MAX + 5, 3: 3}
    folded = await db_pool.fetchval("SELECT llmmeter_hist_fold($1)", blob)
    assert folded == sketch.encode({3: 3, 4400: sketch.COUNT_MAX + 5})
    assert await db_pool.fetchval("SELECT llmmeter_hist_fold(''::bytea)") == b""


async def test_one_record_element_inline_equals_the_function(db_pool) -> None:
    from llmmeter_common.rollups import one_elem_sql

    for us in (0, 1, 2, 999, 10**6, 2**62):
        inline, called = await db_pool.fetchrow(
            f"SELECT {one_elem_sql('llmmeter_hist_key($1::bigint)')}, "
            "llmmeter_hist_elems(llmmeter_hist_key($1::bigint), 1)", us)
        assert inline == called == sketch.encode({sketch.key_of(us): 1}), us
