"""What the alerts service tests share: a clock moved by hand, a webhook receiver, rules and records.

The alerts service runs with a clock the test moves by hand (`evaluate=False`;
each instant is one `server.tick()`), so nothing sleeps. The clock lies in
the past of the real one (from `BASE`), so every record it describes is
acceptable to the ingest service. Used by test_alerts_service_rules.py,
test_alerts_service_delivery.py and test_alerts_service_replicas.py, whose
fixtures `receiver` and `make_alerts` are in conftest.py.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import grpc

from llmmeter.v1 import alerts_pb2, alerts_pb2_grpc, query_pb2
from llmmeter_alerts.server import AlertsServer

from keyring import keyed_channel
from records import record

A = alerts_pb2


class FakeClock:
    """A clock that moves only when told."""

    def __init__(self, start: datetime) -> None:
        self.t = start

    def now(self) -> datetime:
        return self.t

    def set(self, when: datetime) -> None:
        self.t = when


class Receiver:
    """A webhook receiver on loopback: records each request, answers with scripted status codes.

    A scripted `None` hangs (never answers) until the receiver stops.
    """

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.script: list[int | None] = []
        self.default: int | None = 200
        self._release = asyncio.Event()
        self._server: asyncio.Server | None = None
        self.url = ""

    async def start(self) -> Receiver:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}/hook"
        return self

    async def stop(self) -> None:
        self._release.set()
        if self._server is not None:
            self._server.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            pairs = (ln.partition(":") for ln in lines[1:] if ln)
            headers = {k.strip().lower(): v.strip() for k, _, v in pairs}
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            self.requests.append((headers, body))
            code = self.script.pop(0) if self.script else self.default
            if code is None:
                await self._release.wait()
                return
            writer.write(f"HTTP/1.1 {code} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode())
            await writer.drain()
        finally:
            writer.close()

    def bodies(self) -> list[dict[str, Any]]:
        return [json.loads(b) for _, b in self.requests]

    def kinds(self) -> list[tuple[str, str, str]]:
        """(kind, group, severity) of every request received."""
        return [(b["kind"], b["group"], b["severity"]) for b in self.bodies()]


Factory = Callable[..., Awaitable[AlertsServer]]


async def stop(server: AlertsServer) -> None:
    await server.stop()
    server.stopped = True  # type: ignore[attr-defined]


def stub(server: AlertsServer) -> tuple[grpc.aio.Channel, alerts_pb2_grpc.AlertsServiceStub]:
    channel = keyed_channel(f"127.0.0.1:{server.port}")
    return channel, alerts_pb2_grpc.AlertsServiceStub(channel)


def dur(text: str) -> Any:
    from google.protobuf import duration_pb2

    d = duration_pb2.Duration()
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    d.FromSeconds(int(float(text[:-1]) * units[text[-1]]))
    return d


def rule(name: str = "errors", receiver: Receiver | None = None, **kw: Any) -> alerts_pb2.Rule:
    """An error-rate rule over 5 minutes, warning > 0.1, to the receiver (signed)."""
    r = A.Rule(name=name, metric=kw.pop("metric", query_pb2.METRIC_FAILURE_RATE),
               window=dur(kw.pop("window", "5m")), every=dur(kw.pop("every", "30s")),
               warning=kw.pop("warning", A.Threshold(comparison=A.COMPARISON_GREATER, value=0.1)))
    for key in ("for_duration", "keep_firing_for", "renotify_interval"):
        if key in kw:
            getattr(r, key).CopyFrom(dur(kw.pop(key)))
    if receiver is not None:
        r.channels.add().webhook.CopyFrom(A.WebhookChannel(url=receiver.url, secret="s3cret"))
    for key, value in kw.items():
        if isinstance(value, dict):
            getattr(r, key).update(value)
        elif hasattr(value, "DESCRIPTOR"):
            getattr(r, key).CopyFrom(value)
        else:
            setattr(r, key, value)
    return r


BASE = (datetime.now(UTC) - timedelta(hours=3)).replace(second=0, microsecond=0)


@dataclass(frozen=True)
class Recs:
    """`count` records per minute over minutes [start, end), `errors` of them failing."""

    start: int
    end: int
    count: int
    errors: int = 0
    fields: dict[str, Any] = field(default_factory=dict)

    def build(self, base: datetime) -> list[Any]:
        out = []
        for m in range(self.start, self.end):
            for i in range(self.count):
                when = base + timedelta(minutes=m, seconds=i * 50 / self.count)
                out.append(record(when, status_code=500 if i < self.errors else 200, **self.fields))
        return out


@dataclass(frozen=True)
class Eval:
    """At `minute`: the expected (state, severity) per group, and the notifications received since."""

    minute: float
    states: dict[str, tuple[str, str | None]]
    sent: list[tuple[str, str, str]] = field(default_factory=list)


async def run_evals(server: AlertsServer, clock: FakeClock, receiver: Receiver, db_url: str,
                    evals: list[Eval], name: str = "errors") -> None:
    conn = await asyncpg.connect(db_url)
    try:
        for ev in evals:
            clock.set(BASE + timedelta(minutes=ev.minute))
            before = len(receiver.requests)
            await server.tick()
            rows = await conn.fetch(
                """SELECT grp, state, severity FROM alert_states s JOIN alert_rules r ON r.id = s.rule_id
                   WHERE r.name = $1""", name)
            got = {r["grp"]: (r["state"], r["severity"]) for r in rows}
            assert got == ev.states, f"at minute {ev.minute}"
            assert receiver.kinds()[before:] == ev.sent, f"at minute {ev.minute}"
    finally:
        await conn.close()
