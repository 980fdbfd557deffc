"""Day buckets in a caller's time zone: local midnights, DST days of 23 and 25 hours, and the
same answer from rollups and from raw rows.

"Spend per day" is the organisation's day. The buckets the service lists and the
`date_trunc('day', t, zone)` PostgreSQL groups rows by must be the same instants, also
across a DST change, or points would be lost.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import asyncpg
import grpc
import pytest

from llmmeter.v1 import query_pb2 as M
from llmmeter_query.local_days import Calendar, LocalDays, parse_time_zone
from llmmeter_query.window import Window

from cli_helpers import cli
from conftest import drain_rollups
from records import bad_request_fields, ingest, record, ts

NEW_YORK = ZoneInfo("America/New_York")


def test_local_days_across_dst_changes() -> None:
    days = LocalDays(NEW_YORK)
    window = Window(datetime(2026, 10, 31, 12, tzinfo=UTC), datetime(2026, 11, 3, tzinfo=UTC))
    starts = Calendar.of(timedelta(days=1), days).starts(window)
    assert [s.astimezone(NEW_YORK).isoformat() for s in starts] == [
        "2026-10-31T00:00:00-04:00", "2026-11-01T00:00:00-04:00", "2026-11-02T00:00:00-05:00"]
    assert [(days.after(s) - s) / timedelta(hours=1) for s in starts] == [24, 25, 24]  # clocks go back
    spring = days.floor(datetime(2027, 3, 14, 12, tzinfo=UTC))
    assert days.after(spring) - spring == timedelta(hours=23)
    assert [lv.table for lv in days.levels(window)] == ["usage_1h", "usage_1m"]
    kolkata = LocalDays(ZoneInfo("Asia/Kolkata"))  # +05:30: hours do not nest in its days
    assert [lv.table for lv in kolkata.levels(window)] == ["usage_1m"]
    assert parse_time_zone("") is None and parse_time_zone("UTC") is None


async def test_local_midnights_are_what_postgres_groups_by(db_pool: asyncpg.Pool) -> None:
    days = LocalDays(NEW_YORK)
    for t in (datetime(2026, 11, 1, 3, 30, tzinfo=UTC), datetime(2026, 11, 1, 5, 30, tzinfo=UTC),
              datetime(2026, 11, 2, 4, 59, tzinfo=UTC), datetime(2027, 3, 14, 6, 59, tzinfo=UTC),
              datetime(2027, 3, 14, 7, 1, tzinfo=UTC)):
        got = await db_pool.fetchval(f"SELECT date_trunc('day', $1::timestamptz, {days.sql})", t)
        assert got == days.floor(t), t


@pytest.mark.parametrize("filt", ["", 'metadata.k = "v"'], ids=["rollups", "raw"])
async def test_daily_series_in_new_york(ingest_stub, query_stub, db_url, filt) -> None:
    now = datetime.now(UTC)
    midnight = LocalDays(NEW_YORK).floor(now - timedelta(days=4))
    at = [midnight - timedelta(hours=1),  # 23:00 the day before
          midnight + timedelta(hours=1), midnight + timedelta(hours=23, minutes=30),
          midnight + timedelta(hours=25)]
    await ingest(ingest_stub, [record(t, metadata={"k": "v"}, cost=0.25) for t in at])
    await drain_rollups(db_url)
    window = {"start_time": ts(midnight - timedelta(days=1)), "end_time": ts(midnight + timedelta(days=2))}
    resp = await query_stub.GetTimeSeries(M.GetTimeSeriesRequest(
        granularity="1d", time_zone="America/New_York", filter=filt,
        metrics=[M.METRIC_REQUESTS, M.METRIC_REQUESTS_PER_SECOND], **window))
    requests, rps = resp.series
    local = [p.time.ToDatetime(tzinfo=UTC).astimezone(NEW_YORK) for p in requests.points]
    assert [(t.hour, t.minute) for t in local] == [(0, 0)] * 3
    assert [p.value for p in requests.points] == [1, 2, 1]
    assert rps.points[1].value == pytest.approx(2 / 86400)
    utc = await query_stub.GetTimeSeries(M.GetTimeSeriesRequest(
        granularity="1d", filter=filt, metrics=[M.METRIC_REQUESTS], **window))
    assert all(p.time.ToDatetime().hour == 0 for p in utc.series[0].points)  # UTC days, unchanged
    assert sum(p.value for p in utc.series[0].points) == 4


async def test_export_by_local_day_and_a_bad_zone(ingest_stub, query_stub) -> None:
    now = datetime.now(UTC)
    midnight = LocalDays(NEW_YORK).floor(now - timedelta(days=3))
    await ingest(ingest_stub, [record(midnight - timedelta(minutes=30), team="a"),
                               record(midnight + timedelta(minutes=30), team="a")])
    window = {"start_time": ts(midnight - timedelta(days=1)), "end_time": ts(midnight + timedelta(days=1))}
    data = b""
    async for part in query_stub.ExportAggregates(M.ExportAggregatesRequest(
            group_by=["team"], granularity="1d", time_zone="America/New_York", **window)):
        data += part.data
    lines = data.decode().splitlines()[1:]
    assert [line.split(",")[:3] for line in lines] == [
        ["a", (midnight - timedelta(days=1)).isoformat(), "1"], ["a", midnight.isoformat(), "1"]]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await query_stub.GetTimeSeries(M.GetTimeSeriesRequest(granularity="1d", time_zone="Mars/Olympus",
                                                              metrics=[M.METRIC_REQUESTS]))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_request_fields(err.value)[0][0] == "time_zone"


async def test_cli_tz(capsys, addr, ingest_stub) -> None:
    await ingest(ingest_stub, [record(datetime.now(UTC) - timedelta(hours=30))])
    code, out, err = await cli(capsys, addr, "usage", "series", "--since", "3d", "--granularity", "1d",
                               "--tz", "America/New_York", "--format", "json")
    assert (code, err) == (0, "")
    points = json.loads(out)["series"][0]["points"]
    stamps = [datetime.fromisoformat(p["time"]).astimezone(NEW_YORK) for p in points]
    assert stamps and all((t.hour, t.minute) == (0, 0) for t in stamps)
    assert sum(int(p["value"]) for p in points) == 1
    code, out, err = await cli(capsys, addr, "usage", "export", "--by", "team", "--granularity", "1d",
                               "--tz", "Nowhere/Land", "--output", "-")
    assert code == 1 and out == "" and "time_zone" in err and err.count("\n") == 1
