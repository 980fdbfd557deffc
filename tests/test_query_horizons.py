"""A window starting before the minute rollup's horizon says from when it counts.

The minute rollup is kept about as long as raw rows (rollups.ROLLUPS), hours and days far
longer; a month-long window's first partial hour is answered from minutes. Once retention has
dropped those minutes, the answer must not silently lose that hour's records: it counts from
the next hour and says so (`counted_from`), while a window whose start the retained data still
covers says nothing.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from llmmeter.v1 import query_pb2

from conftest import drain_rollups
from records import ingest, record, ts


async def _summary(stub, start: datetime, end: datetime, by: str = "") -> query_pb2.GetSummaryResponse:
    return await stub.GetSummary(query_pb2.GetSummaryRequest(start_time=ts(start), end_time=ts(end),
                                                             filter=by))


# TimescaleDB keeps the minute level at least as long as its hour aggregates are refreshed from
# it (migration 0014: 15 days with 14-day raw rows), so 5 days there drop nothing; its chunks are
# named _hyper_*, too. test_schema_timescale_rollups.py checks that retention.
@pytest.mark.usefixtures("postgres_flavor_only")
async def test_a_start_before_the_minute_horizon_counts_from_the_next_hour(ingest_stub, query_stub,
                                                                           db_pool, db_url) -> None:
    now = datetime.now(UTC)
    start = (now - timedelta(days=10)).replace(minute=5, second=0, microsecond=0)
    hour = start.replace(minute=0) + timedelta(hours=1)
    await ingest(ingest_stub, [record(start + timedelta(minutes=10), request_id="edge"),
                               record(start + timedelta(hours=3), request_id="middle"),
                               record(now - timedelta(minutes=5), request_id="now")])
    await drain_rollups(db_url)
    whole = await _summary(query_stub, start, now)
    assert whole.summary.request_count == 3 and not whole.HasField("counted_from")
    # raw rows and hours kept, minutes kept 5 days: the edge minute's rows are gone
    dropped = await db_pool.fetch(
        "SELECT * FROM llmmeter_apply_retention('400 days', '400 days', '5 days', '400 days')")
    assert any(r[0].startswith("usage_1m") for r in dropped)
    cut = await _summary(query_stub, start, now)
    assert cut.summary.request_count == 2
    assert cut.counted_from.ToDatetime(tzinfo=UTC) == hour
    by_model = await _summary(query_stub, start, now, 'model = "gpt-4o"')
    assert by_model.counted_from == cut.counted_from
    # a window starting on the hour needs no minutes there: whole again
    on_hour = await _summary(query_stub, hour - timedelta(hours=1), now)
    assert on_hour.summary.request_count == 3 and not on_hour.HasField("counted_from")
    # grouped by the user, minutes are never read (raw rows answer the edge): whole
    by_user = await query_stub.GetBreakdown(query_pb2.GetBreakdownRequest(
        start_time=ts(start), end_time=ts(now), group_by="user"))
    assert sum(r.request_count for r in by_user.rows) == 3 and not by_user.HasField("counted_from")


async def test_a_window_ending_before_later_records_never_counts_them(ingest_stub, db_pool, db_url) -> None:
    """An "up to now" window reads its last rollup bucket whole (nothing is stored past its end);
    a window that ends before stored records must still stop at its end, whichever the bucket."""
    from llmmeter_query.aggregate import Aggregator, parse_group
    from llmmeter_query.filters import parse_filter
    from llmmeter_query.window import Window

    now = datetime.now(UTC)
    times = [now - timedelta(days=2, minutes=7), now - timedelta(hours=5, seconds=13),
             now - timedelta(minutes=41, seconds=5), now - timedelta(minutes=40, seconds=55),
             now - timedelta(seconds=30)]
    await ingest(ingest_stub, [record(t, request_id=f"t{i}", user=f"u{i % 2}") for i, t in enumerate(times)])
    await drain_rollups(db_url)
    agg = Aggregator(db_pool, timedelta(minutes=1), lanes=1)
    start = now - timedelta(days=3)
    for end in [*(t + timedelta(seconds=1) for t in times), *(t - timedelta(seconds=1) for t in times),
                now + timedelta(seconds=1)]:
        want = sum(t < end for t in times)
        for group in ("", "user"):
            got = await agg.run(Window(start, end), parse_filter(""), parse_group(group), None)
            assert sum(s.get("request_count") for s in got.groups.values()) == want, (end, group)


def test_an_up_to_now_window_reads_its_last_hour_whole_but_never_an_open_day() -> None:
    """Today's day bucket is still open: TimescaleDB would fold it in real time for every group at
    query time, so the open end is read from the hour level, rounded up to the hour only."""
    from llmmeter_query.aggregate import Aggregator, parse_group
    from llmmeter_query.filters import parse_filter
    from llmmeter_query.window import Window

    agg = Aggregator(None, timedelta(minutes=1))  # planning only: no statement runs
    end = datetime(2026, 12, 4, 9, 14, 19, tzinfo=UTC)
    for group in ("", "user"):
        q = agg._query(Window(end - timedelta(days=30), end), parse_filter(""), parse_group(group), None,
                       open_end=True)
        last = q.stretches[-1]
        assert last.level is not None and last.level.table == "usage_1h", group
        assert last.end == datetime(2026, 12, 4, 10, tzinfo=UTC), group
        days = [s for s in q.stretches if s.level is not None and s.level.table == "usage_1d"]
        assert days and days[-1].end == datetime(2026, 12, 4, tzinfo=UTC), group
