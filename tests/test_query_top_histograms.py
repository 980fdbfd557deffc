"""Percentiles when only the shown groups' histograms are read: top N, "other", and the array codec.

The expectations are computed independently in Python: each record's
histogram key (`sketch.key_of`), merged per group and bucket with dicts,
read back with `sketch.quantile`. The service's numpy path must give the
very same values, whether the rows are still queued or already rolled up.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest

from llmmeter.v1 import query_pb2
from llmmeter_common import sketch
from llmmeter_query import histograms
from llmmeter_query.histograms import Collector

from conftest import drain_rollups
from records import alike, ingest, record, ts

M = query_pb2
MODELS = ("m1", "m2", "m3", "m4", "m5")
USERS = ("ana", "bo", "cy", "di", "ed", "flo")


def _month(n: int, seed: int) -> tuple[list[Any], list[dict[str, Any]], datetime]:
    rng = random.Random(seed)
    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    recs, plain = [], []
    for i in range(n):
        start = now - timedelta(minutes=rng.uniform(5, 3 * 24 * 60))
        model = rng.choices(MODELS, weights=(8, 5, 3, 2, 1))[0]
        user = rng.choice(USERS)
        lat = rng.lognormvariate(6.0 + MODELS.index(model) * 0.2, 0.7)
        lat_us = round(lat * 1000)
        cost = round(rng.uniform(0, 0.05) * (1 + USERS.index(user)), 6)
        recs.append(record(start, latency_ms=lat_us / 1000, ttft_ms=None, model=model, user=user, cost=cost,
                           request_id=f"top-{seed}-{i}"))
        plain.append({"start": start, "model": model, "user": user, "lat_us": lat_us, "cost": cost})
    return recs, plain, now


def _hist_p95(values: list[int]) -> float | None:
    hist: dict[int, int] = defaultdict(int)
    for v in values:
        hist[sketch.key_of(v)] += 1
    q = sketch.quantile(hist, 0.95)
    return None if q is None else q / 1000


@pytest.mark.usefixtures("postgres_flavor_only")
# "other" as the total minus the 2 kept models (3 folded), or as the 2 folded models' own (3 kept)
@pytest.mark.parametrize("top_n", [2, 3])
async def test_series_top_n_and_other_percentiles_from_histograms(ingest_server, ingest_stub, query_stub,
                                                                  db_url, db_pool, top_n) -> None:
    recs, plain, now = _month(2500, 11)
    await ingest_server.rollups.stop()  # the "queued" phase reads every record from the queue
    await ingest(ingest_stub, recs)
    assert await db_pool.fetchval("SELECT count(*) FROM usage_rollup_pending") == len(recs)
    start, end = now - timedelta(days=3), now
    hours = [start + timedelta(hours=i) for i in range(72)]
    lat: dict[tuple[str, datetime], list[int]] = defaultdict(list)
    counts: dict[str, int] = defaultdict(int)
    for r in plain:
        hour = r["start"].replace(minute=0, second=0, microsecond=0)
        counts[r["model"]] += 1
        lat[(r["model"], hour)].append(r["lat_us"])
    top = sorted(counts, key=lambda m: (-counts[m], m))[:top_n]
    for (m, hour), values in list(lat.items()):
        if m not in top:
            lat[("other", hour)] += values
    req = M.GetTimeSeriesRequest(start_time=ts(start), end_time=ts(end), granularity="1h", group_by="model",
                                 top_n=top_n, metrics=[M.METRIC_LATENCY_P95, M.METRIC_REQUESTS])
    for phase in ("queued", "rolled up"):
        resp = await query_stub.GetTimeSeries(req)
        assert resp.percentile_method == M.PERCENTILE_METHOD_ESTIMATED
        assert [s.group for s in resp.series] == [*top, "other", *top, "other"]
        for s in resp.series:
            if s.metric != M.METRIC_LATENCY_P95:
                continue
            got = [p.value if p.present else None for p in s.points]
            want = [_hist_p95(lat.get((s.group, h), [])) for h in hours]
            assert len(got) == len(want)
            for g, w in zip(got, want, strict=True):
                assert (g is None) == (w is None), (phase, s.group)
                assert g is None or math.isclose(g, w, rel_tol=1e-9), (phase, s.group, g, w)
        await drain_rollups(db_url)


async def test_breakdown_top_n_reads_only_shown_groups_yet_matches_the_full_table(ingest_stub, query_stub,
                                                                               db_url) -> None:
    recs, plain, now = _month(1500, 12)
    await ingest(ingest_stub, recs)
    await drain_rollups(db_url)
    window = {"start_time": ts(now - timedelta(days=3)), "end_time": ts(now)}
    for order in ("cost desc", "latency_p95_ms desc", "request_count", "group desc"):
        full = await query_stub.GetBreakdown(M.GetBreakdownRequest(group_by="user", order_by=order, **window))
        cut = await query_stub.GetBreakdown(M.GetBreakdownRequest(group_by="user", order_by=order, top_n=2,
                                                                  **window))
        assert len(full.rows) == len(USERS) and full.omitted_groups == 0
        assert len(cut.rows) == 2 and cut.omitted_groups == len(USERS) - 2, order
        assert all(alike(c, f) for c, f in zip(cut.rows, full.rows[:2], strict=True)), order
        assert cut.percentile_method == M.PERCENTILE_METHOD_ESTIMATED
    by_user: dict[str, list[int]] = defaultdict(list)
    for r in plain:
        by_user[r["user"]].append(r["lat_us"])
    for row in full.rows:
        assert math.isclose(row.latency_p95_ms, _hist_p95(by_user[row.group]), rel_tol=1e-9)


@pytest.mark.parametrize("dense_cells", [4_000_000, 0], ids=["dense", "sorted"])
async def test_stored_format_codec_and_merge_against_postgres(db_pool, monkeypatch, dense_cells) -> None:
    monkeypatch.setattr(histograms, "DENSE_CELLS", dense_cells)
    rows = await db_pool.fetch(
        "SELECT g, (SELECT coalesce(string_agg(llmmeter_hist_elems(x.k, x.c), ''::bytea), ''::bytea) "
        "FROM unnest(k::integer[], c::bigint[]) AS x(k, c)) AS h FROM (VALUES "
        "('a', '{10,20,30}', '{1,1,8}'), ('a', '{10}', '{1}'), ('b', '{}', '{}'), ('b', '{3}', '{4}'), "
        "('c', '{40,7}', '{9000000000,1}'), ('d', '{5}', '{2}')) AS v(g, k, c)")
    coll = Collector()
    coll.add_sent([r["g"] for r in rows], [r["h"] for r in rows])
    # subtract d's histogram, and b's only key once more than it has: b ends empty, d too
    coll.add_sent(["d", "b"], [rows[5]["h"], rows[3]["h"]], sign=-1)
    coll.add(("e",), np.array([10, 20]), np.array([3, 3]))
    coll.add(("e",), np.array([10, 20]), np.array([3, 2]), sign=-1)  # leaves one count at key 20
    got = coll.quantiles((0.1, 0.5, 1.0))
    v = sketch.value_of
    assert got["a"] == [v(10), v(30), v(30)]  # keys 10 (1 + 1), 20 (1), 30 (8)
    assert got["c"] == [v(40), v(40), v(40)]  # 9e9 at key 40 outweighs key 7's one
    assert got["b"] == got["d"] == [None, None, None]
    assert got[("e",)] == [v(20)] * 3


async def test_histograms_read_alone_in_key_order_give_the_merged_answer(db_pool, monkeypatch) -> None:
    """A compacted histogram read alone (keys ascending) is taken as its group's histogram
    without the merge; pieces that are not (several for one group, unordered, subtracted) are
    merged. Both give what merging every piece in Python gives, piece for piece."""
    rng = random.Random(4)
    groups = [f"g{i}" for i in range(60)]
    pieces: list[tuple[str, dict[int, int], int]] = []
    for i, g in enumerate(groups):
        n_pieces = 1 if i % 3 else rng.randint(2, 4)
        for _ in range(n_pieces):
            keys = rng.sample(range(50, 900), rng.randint(1, 40))
            pieces.append((g, {k: rng.randint(1, 5000) for k in keys}, 1))
    pieces.append(("g0", dict(pieces[0][1]), -1))  # "other"-style subtraction of a whole piece
    groups.append("tie")  # the median's rank lands exactly on the first key's running count
    pieces.append(("tie", {10: 5, 20: 5}, 1))
    walked: list[int] = []
    real_walked = histograms._walked

    def counting(lens, *args):  # type: ignore[no-untyped-def]
        walked.append(len(lens))
        return real_walked(lens, *args)

    monkeypatch.setattr(histograms, "_walked", counting)
    alone = [p for p in pieces if sum(q[0] == p[0] for q in pieces) == 1]
    one_key = sum(1 for p in alone if len(p[1]) == 1)  # in key order however they are listed
    for ordered in (True, False):
        walked.clear()
        blobs = []
        for _, hist, _ in pieces:
            items = sorted(hist.items(), reverse=not ordered)
            keys, counts = [k for k, _ in items], [c for _, c in items]
            blobs.append(await db_pool.fetchval(
                "SELECT string_agg(llmmeter_hist_elems(k, c), ''::bytea ORDER BY o) FROM "
                "unnest($1::integer[], $2::bigint[]) WITH ORDINALITY AS u(k, c, o)", keys, counts))
        coll = Collector()
        for sign in (1, -1):
            chosen = [i for i, p in enumerate(pieces) if p[2] == sign]
            coll.add_sent([pieces[i][0] for i in chosen], [blobs[i] for i in chosen], sign=sign)
        got = coll.quantiles((0.5, 0.95, 0.99))
        assert walked == ([len(alone)] if ordered else [one_key] if one_key else [])
        assert got["tie"][0] == sketch.value_of(10)
        for g in groups:
            merged: dict[int, int] = defaultdict(int)
            for name, hist, sign in pieces:
                if name == g:
                    for k, c in hist.items():
                        merged[k] += sign * c
            want = [sketch.quantile({k: c for k, c in merged.items() if c > 0}, q) for q in (0.5, 0.95, 0.99)]
            assert got[g] == want, (g, ordered)
