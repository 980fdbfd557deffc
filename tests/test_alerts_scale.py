"""1,000 rules are evaluated within one evaluation interval (the issue's bound on evaluation lag)."""

from __future__ import annotations

import asyncio
import time
import urllib.request
from datetime import UTC, datetime, timedelta

from google.protobuf import duration_pb2

from llmmeter.v1 import alerts_pb2, query_pb2
from llmmeter_alerts.server import AlertsServer
from llmmeter_alerts.settings import AlertsSettings
from llmmeter_common.pgcluster import free_port
from llmmeter_query.server import QueryServer

from keyring import ADMIN
from records import ingest, record


class Clock:
    def __init__(self, t: datetime) -> None:
        self.t = t

    def now(self) -> datetime:
        return self.t


async def test_thousand_rules_within_one_interval(db_url: str, query_server: QueryServer,
                                                  ingest_stub: object) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    await ingest(ingest_stub, [record(now - timedelta(minutes=2), model=f"m{i % 5}",
                                      status_code=500 if i % 7 == 0 else 200) for i in range(200)])
    clock = Clock(now)
    metrics_port = free_port()
    server = AlertsServer(AlertsSettings(
        database_url=db_url, host="127.0.0.1", port=0, query_addr=f"127.0.0.1:{query_server.port}",
        query_api_key=ADMIN.token,
        evaluate=False, shutdown_grace_seconds=1.0, metrics_port=metrics_port,
        query_timeout_seconds=60.0), clock)  # a slow machine must not turn the count into a timing test
    await server.start()
    try:
        every = duration_pb2.Duration(seconds=30)
        for i in range(1000):
            r = alerts_pb2.Rule(name=f"r{i:04d}", metric=query_pb2.METRIC_FAILURE_RATE, every=every,
                                window=duration_pb2.Duration(seconds=300), filter=f'model = "m{i % 5}"',
                                group_by="team" if i % 2 else "",
                                warning=alerts_pb2.Threshold(comparison=alerts_pb2.COMPARISON_GREATER,
                                                             value=0.1))
            await server.store.create_rule(r, now)
        started = time.monotonic()
        assert await server.evaluator.tick() == 1000
        elapsed = time.monotonic() - started
        print(f"tick of 1000 rules: {elapsed:.1f} s (interval {every.seconds} s)")  # a figure, not a gate
        states = await server.store.pool.fetchval("SELECT count(*) FROM alert_states WHERE state = 'firing'")
        assert states == 1000
        clock.t = now + timedelta(seconds=30)
        assert await server.evaluator.tick() == 1000  # all due again one interval later
        scraped = await asyncio.to_thread(
            lambda: urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read())
        assert "llmmeter_alert_evaluations_total 2000.0" in scraped.decode()
    finally:
        await server.stop()
