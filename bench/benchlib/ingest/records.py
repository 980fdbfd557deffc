"""The ingest workload, prepared before any clock starts.

Generating, serialising and converting records costs far more than sending them, so all of it
happens up front: the end-to-end run sends ready bytes, the references write ready rows.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any


def generate(n: int, seed: int, now: datetime, window_s: float) -> list[Any]:
    """N realistic records from the demo generator (seeded), starting in the `window_s` before `now`."""
    from llmmeter.demo import generate_records

    return list(generate_records(n, seed=seed, now=now, days=window_s / 86_400))


def serialize_chunks(records: list[Any], chunk: int, form: str) -> list[bytes]:
    """StreamRecords messages of `chunk` records each, already serialised, as the client sends them:
    the records as `UsageColumns` (form "columns") or as `UsageRecord` messages ("records")."""
    from llmmeter.columns import to_columns
    from llmmeter.v1 import ingest_pb2

    parts = [records[i:i + chunk] for i in range(0, len(records), chunk)]
    if form == "columns":
        return [ingest_pb2.StreamRecordsRequest(columns=to_columns(p)).SerializeToString() for p in parts]
    return [ingest_pb2.StreamRecordsRequest(records=p).SerializeToString() for p in parts]


def convert_rows(records: list[Any]) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """Rows (and payload rows) exactly as the service would build them."""
    from llmmeter_ingest.rows import to_rows

    rows, payloads = [], []
    for rec in records:
        row, payload = to_rows(rec, True)
        rows.append(row)
        if payload is not None:
            payloads.append(payload)
    return rows, payloads
