"""Delivery of queued notifications: signed JSON webhooks, Slack-compatible webhooks, the log.

The evaluator only writes notifications to the outbox. The dispatcher sends
each due one in its own task with a timeout, so a target that hangs or fails
holds up nothing but itself; a failed attempt is retried with exponential
backoff until `max_attempts`, and every attempt is recorded in the history.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import hmac
import json
import logging
import os
import re
import ssl
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

from llmmeter.v1 import alerts_pb2
from llmmeter_alerts.clock import Clock
from llmmeter_alerts.leader import Leader
from llmmeter_alerts.store import AlertStore, OutboxItem
from llmmeter_alerts.targets import RefusedTarget, TargetPolicy, url_port

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Llmmeter-Signature"
TIMESTAMP_HEADER = "X-Llmmeter-Timestamp"


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """`sha256=<hex HMAC-SHA256 of "<timestamp>.<body>">`."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


class DeliveryError(Exception):
    """A target refused or did not answer."""


async def post(url: str, body: bytes, headers: dict[str, str], policy: TargetPolicy) -> int:
    """POST `body` over HTTP/1.1 to an address the policy allows (resolved once, every address
    checked, connected to as checked, in turn until one accepts; TLS still verifies the URL's host
    name); returns the 2xx status code, DeliveryError otherwise (no redirects followed). Only the
    status code is kept of an answer."""
    try:
        parts = urlsplit(url)
        port = url_port(parts)
    except ValueError:
        raise DeliveryError("not an http(s) URL with a valid port") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise DeliveryError("not an http(s) URL")
    secure = parts.scheme == "https"
    host = parts.hostname
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        addresses = await policy.resolve(host, port)
    except RefusedTarget as exc:
        raise DeliveryError(f"refused by the egress policy: {exc}") from None
    failure: OSError | None = None
    for address in addresses:
        try:
            reader, writer = await asyncio.open_connection(
                address, port, ssl=ssl.create_default_context() if secure else None,
                server_hostname=host if secure else None)
            break
        except OSError as exc:
            failure = exc
    else:
        raise DeliveryError(f"connection failed ({type(failure).__name__})") from None
    try:
        lines = [f"POST {path} HTTP/1.1", f"Host: {_host_header(host, parts.port)}",
                 "Content-Type: application/json",
                 f"Content-Length: {len(body)}", "Connection: close", "User-Agent: llmmeter-alerts/1",
                 *(f"{k}: {v}" for k, v in headers.items())]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        await writer.drain()
        status_line = await reader.readline()
        fields = status_line.decode("latin-1").split(" ", 2)
        if len(fields) < 2 or not fields[0].startswith("HTTP/") \
                or not re.fullmatch(r"[1-5][0-9]{2}", fields[1]):
            raise DeliveryError("not an HTTP answer")  # what it said stays out of the history
        code = int(fields[1])
        if not 200 <= code < 300:
            raise DeliveryError(f"HTTP {code}")
        return code
    finally:
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()


def _host_header(host: str, port: int | None) -> str:
    """The Host header: the URL's host and port, never its user:password part."""
    name = f"[{host}]" if ":" in host else host
    return f"{name}:{port}" if port else name


_OUTCOME = re.compile(r"(?P<reason>.*?)(?P<tail>; (?:retrying|giving up))?")
_REASON = re.compile(
    r"delivered|delivered \(HTTP [1-5][0-9]{2}\)|HTTP [1-5][0-9]{2}|not an HTTP answer"
    r"|no answer within [0-9.]+s"
    r"|connection failed \([A-Za-z]+\)|refused by the egress policy: .*|not an http\(s\) URL.*|secret_env .*"
    r"|[A-Za-z]+")


def history_message(message: str) -> str:
    """A delivery event's message as reads show it: what this version records passes; the answer
    text or socket detail an older version recorded (the first bytes of a target's answer, which
    made the history a port scanner) is withheld."""
    m = _OUTCOME.fullmatch(message)
    assert m is not None  # the pattern matches any text
    reason, tail = m["reason"], m["tail"] or ""
    if _REASON.fullmatch(reason):
        return message
    if reason.startswith("not an HTTP answer"):
        return "not an HTTP answer" + tail
    return "failed (detail withheld)" + tail


def slack_text(payload: dict[str, Any]) -> str:
    """One line for a Slack message."""
    kind = payload["kind"]
    icon = {"resolved": ":white_check_mark:", "budget": ":moneybag:"}.get(
        kind, ":rotating_light:" if payload.get("severity") == "critical" else ":warning:")
    group = f" [{payload['group']}]" if payload["group"] else ""
    sev = f" {payload['severity']}" if payload.get("severity") else ""
    text = f"{icon} *{kind.upper()}*{sev} {payload['rule']}{group}: value {payload.get('value')}"
    if payload.get("annotation"):
        text += f"\n{payload['annotation']}"
    return text


@dataclass(frozen=True)
class DeliveryPolicy:
    """Timeout and retries of deliveries."""

    timeout: float = 10.0
    max_attempts: int = 5
    initial_backoff: timedelta = timedelta(seconds=5)
    max_backoff: timedelta = timedelta(minutes=5)

    def backoff(self, attempt: int) -> timedelta:
        """Wait after the `attempt`-th failed attempt."""
        wait: timedelta = min(self.initial_backoff * (2 ** (attempt - 1)), self.max_backoff)
        return wait


class Dispatcher:
    """Sends due outbox notifications, each in its own task, while this replica leads."""

    def __init__(self, store: AlertStore, clock: Clock, leader: Leader, policy: DeliveryPolicy,
                 targets: TargetPolicy | None = None) -> None:
        self._store = store
        self._targets = targets or TargetPolicy()
        self._clock = clock
        self._leader = leader
        self._policy = policy
        self._inflight: dict[int, asyncio.Task[None]] = {}
        self._wake = asyncio.Event()

    def wake(self) -> None:
        """Look at the outbox now (new notifications were queued)."""
        self._wake.set()

    async def run_due(self) -> int:
        """Start a delivery task for every due notification not already in flight; returns how many."""
        if not self._leader.is_leader:
            return 0
        items = await self._store.due_notifications(self._clock.now(), list(self._inflight))
        for item in items:
            task = asyncio.create_task(self._deliver(item))
            self._inflight[item.id] = task
            task.add_done_callback(functools.partial(self._done, item.id))
        return len(items)

    def _done(self, item_id: int, _task: asyncio.Task[None]) -> None:
        self._inflight.pop(item_id, None)

    async def drain(self) -> None:
        """Wait until every delivery in flight has finished (tests)."""
        while self._inflight:
            await asyncio.gather(*list(self._inflight.values()), return_exceptions=True)

    async def run(self, poll: float = 1.0) -> None:
        """Deliver until cancelled."""
        while True:
            self._wake.clear()
            try:
                await self.run_due()
            except Exception:
                log.exception("notification dispatch failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), poll)

    async def stop(self) -> None:
        """Cancel deliveries in flight (they stay queued and are retried by the next leader)."""
        for task in list(self._inflight.values()):
            task.cancel()
        await asyncio.gather(*list(self._inflight.values()), return_exceptions=True)

    async def _deliver(self, item: OutboxItem) -> None:
        kind = item.channel.WhichOneof("target") or "log"
        error = ""
        code: int | None = None
        try:
            code = await asyncio.wait_for(self._send(kind, item.channel, item.payload), self._policy.timeout)
        except TimeoutError:
            error = f"no answer within {self._policy.timeout:g}s"
        except DeliveryError as exc:
            error = str(exc)
        except (OSError, ValueError) as exc:  # no text of a peer's answer or of the socket in the history
            error = type(exc).__name__
        ok = not error
        now = self._clock.now()
        attempt = item.attempts + 1
        next_at = None if ok or attempt >= self._policy.max_attempts else now + self._policy.backoff(attempt)
        if not ok:
            log.warning("notification %d of %s to %s failed (attempt %d): %s",
                        item.id, item.rule_name, kind, attempt, error)
        await self._store.record_attempt(item, now, ok, error, next_at, kind,
                                         f"HTTP {code}" if code else "")

    async def _send(self, kind: str, channel: alerts_pb2.NotificationChannel,
                    payload: dict[str, Any]) -> int | None:
        """Send one notification; the HTTP status code of the answer (None for the log)."""
        if kind == "log":
            log.warning("ALERT %s", json.dumps(payload, sort_keys=True))
            return None
        if kind == "slack":
            return await post(channel.slack.url, json.dumps({"text": slack_text(payload)}).encode(), {},
                              self._targets)
        hook = channel.webhook
        body = json.dumps(payload, sort_keys=True).encode()
        if hook.secret_env and not self._targets.secret_env_allowed(hook.secret_env):
            raise DeliveryError(f"secret_env {self._targets.secret_env_rule()}")
        secret = hook.secret or (os.environ.get(hook.secret_env, "") if hook.secret_env else "")
        headers = {}
        if secret:
            stamp = str(int(time.time()))
            headers = {TIMESTAMP_HEADER: stamp, SIGNATURE_HEADER: sign(secret, stamp, body)}
        return await post(hook.url, body, headers, self._targets)
