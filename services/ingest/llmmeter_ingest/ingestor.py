"""The ingest domain: validate a batch, drop in-batch repeats, store, and count the outcome.

No gRPC here: the servicer hands in protobuf records and gets back plain
outcomes, so the rules (what is rejected, what counts as a duplicate) are
testable and reusable by other front doors such as an OTLP receiver.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from llmmeter.columns import ColumnsError, record_count, to_records
from llmmeter.v1 import usage_pb2
from llmmeter_common.auth.context import team_scope
from llmmeter_common.errors import FieldViolation, InvalidArgument
from llmmeter_ingest import bulk_batch, bulk_rows
from llmmeter_ingest.pricing import BUILTIN_ONLY, Pricer
from llmmeter_ingest.rows import Row, to_rows
from llmmeter_ingest.settings import IngestSettings
from llmmeter_ingest.validation import Limits, Rejected, validate
from llmmeter_ingest.writer import AllKeys, BatchWriter, Job


@dataclass(frozen=True)
class Rejection:
    """One invalid record: its position, id, field and reason."""

    index: int
    request_id: str
    field: str
    reason: str


@dataclass
class Outcome:
    """Counts of a call or a stream: stored, already stored, and refused."""

    accepted: int = 0
    duplicates: int = 0
    rejections: list[Rejection] = field(default_factory=list)

    def add(self, other: Outcome) -> None:
        """Fold another part of the same stream into this one."""
        self.accepted += other.accepted
        self.duplicates += other.duplicates
        self.rejections.extend(other.rejections)


def _pin_team(rec: usage_pb2.UsageRecord, team: str) -> None:
    """A team-bound key writes its own team's records only: an empty team becomes the key's, another
    team rejects the record."""
    if not rec.team:
        rec.team = team
    elif rec.team != team:
        raise Rejected("team", f"this API key writes only team {team!r}")


@dataclass
class Prepared:
    """A batch after validation: unique rows to store plus what was already decided."""

    rows: list[Row]
    payloads: list[Row]
    outcome: Outcome


class Ingestor:
    """Turns batches of records into committed rows and outcomes.

    `on_outcome` sees the outcome of every finished batch (for counters);
    `on_stored` the rows each commit newly stored (for exporters), called only
    after the commit, so observers never see a row that might still roll back.
    """

    def __init__(self, settings: IngestSettings, writer: BatchWriter,
                 on_outcome: Callable[[Outcome], None] | None = None,
                 on_stored: Callable[[list[Row]], object] | None = None,
                 pricer: Pricer = BUILTIN_ONLY) -> None:
        self._settings = settings
        self._pricer = pricer
        self._writer = writer
        self._on_outcome = on_outcome
        self._on_stored = on_stored

    def _limits(self) -> Limits:
        now_us = int(time.time() * 1_000_000)
        return Limits(
            oldest_start_us=now_us - self._settings.raw_retention_days * 86_400_000_000,
            latest_end_us=now_us + int(self._settings.max_future_seconds * 1_000_000),
            max_payload_bytes=self._settings.max_payload_bytes,
        )

    def prepare(self, records: Sequence[usage_pb2.UsageRecord], offset: int = 0) -> Prepared:
        """Validate and convert; repeats of a key inside the batch count as duplicates."""
        batch = bulk_batch.from_records(records) if records else None
        return self._prepare(batch, lambda: records, offset)

    def prepare_columns(self, columns: usage_pb2.UsageColumns, offset: int = 0) -> Prepared:
        """`prepare` for records sent as columns; raises InvalidArgument naming the column when
        the lists' lengths do not fit together."""
        try:
            n = record_count(columns)
        except ColumnsError as e:
            raise InvalidArgument(str(e), [FieldViolation(e.field, e.reason)]) from None
        batch = bulk_batch.from_columns(columns, n) if n else None
        return self._prepare(batch, lambda: to_records(columns), offset)

    def _prepare(self, batch: bulk_batch.Batch | None,
                 records: Callable[[], Sequence[usage_pb2.UsageRecord]], offset: int) -> Prepared:
        """A batch of valid records with unique keys, the usual case, is converted column by column
        (`bulk_rows`); any other is taken record by record, which says what is wrong with each."""
        limits = self._limits()
        redact = self._settings.redact_client_ip
        team = team_scope()
        whole = None if batch is None else bulk_rows.convert(batch, limits, redact, self._pricer, team)
        if whole is not None:
            return Prepared(whole[0], whole[1], Outcome())
        prepared = Prepared([], [], Outcome())
        seen: set[tuple[str, object]] = set()
        for i, rec in enumerate(records()):
            try:
                if team is not None:
                    _pin_team(rec, team)
                validate(rec, limits)
                row, payload = to_rows(rec, redact, self._pricer)
            except Rejected as r:
                prepared.outcome.rejections.append(Rejection(offset + i, rec.request_id, r.field, r.reason))
                continue
            key = (row[1], row[0])
            if key in seen:
                prepared.outcome.duplicates += 1
                continue
            seen.add(key)
            prepared.rows.append(row)
            if payload is not None:
                prepared.payloads.append(payload)
        return prepared

    async def submit(self, prepared: Prepared, wait: float | None) -> Job | None:
        """Queue the rows: refuse at once when full (`wait` None) or wait for space."""
        if not prepared.rows:
            return None
        if wait is None:
            return self._writer.submit_nowait(prepared.rows, prepared.payloads)
        return await self._writer.submit(prepared.rows, prepared.payloads, wait)

    async def finish(self, prepared: Prepared, job: Job | None) -> Outcome:
        """Wait for the commit and count stored versus already-stored rows."""
        if job is not None:
            keys = await job.done
            prepared.outcome.accepted += len(keys)
            prepared.outcome.duplicates += len(prepared.rows) - len(keys)
            if self._on_stored is not None and keys:
                stored = prepared.rows if isinstance(keys, AllKeys) else [
                    r for r in prepared.rows if (r[1], r[0]) in keys]
                self._on_stored(stored)
        if self._on_outcome is not None:
            self._on_outcome(prepared.outcome)
        return prepared.outcome

    async def ingest(self, records: Sequence[usage_pb2.UsageRecord]) -> Outcome:
        """One batch, end to end (refused at once when the queue is full)."""
        return await self.store(self.prepare(records))

    async def store(self, prepared: Prepared) -> Outcome:
        """A prepared batch, end to end (refused at once when the queue is full)."""
        return await self.finish(prepared, await self.submit(prepared, None))
