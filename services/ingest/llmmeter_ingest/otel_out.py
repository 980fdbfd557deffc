"""Stored usage records out to OpenTelemetry: one GenAI span per record, plus the GenAI histograms.

Fed by the ingest path after each commit with exactly the rows newly stored
(duplicates are not re-announced). Ingest never waits on it: `offer` appends
to a bounded queue under a short lock and, when the queue is full, drops the
rows and counts them. One thread drains the queue, builds spans with the SDK
(exported in batches by a BatchSpanProcessor and the OTLP/gRPC exporter) and
records the histograms (exported periodically), so span building and export
never run on the event loop that serves RPCs.

Span ids come from the record's key (request id and start), so a record
exported twice (e.g. after an ingest replica restart) is the same span.
"""

from __future__ import annotations

import collections
import hashlib
import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.trace import SpanKind, Status, StatusCode

from llmmeter_common.timeutil import to_us
from llmmeter_ingest import genai
from llmmeter_ingest.rows import RECORD_COLUMNS, Row

log = logging.getLogger(__name__)

_C = {name: i for i, name in enumerate(RECORD_COLUMNS)}

#: Gateway call types (LiteLLM's among them) as GenAI operation names.
_OPERATIONS = {
    "completion": "chat", "acompletion": "chat", "chat": "chat", "chat_completion": "chat",
    "text_completion": "text_completion", "atext_completion": "text_completion",
    "embedding": "embeddings", "aembedding": "embeddings", "embeddings": "embeddings",
}


def operation_of(call_type: str) -> str:
    """The GenAI operation name of a stored call type (chat when unknown or empty)."""
    return _OPERATIONS.get(call_type, call_type or "chat")


def span_ids(request_id: str, start_us: int) -> tuple[int, int]:
    """Trace and span id of a record, derived from its key (never zero)."""
    digest = hashlib.sha256(f"{request_id}\x00{start_us}".encode()).digest()
    return int.from_bytes(digest[:16], "big") or 1, int.from_bytes(digest[16:24], "big") or 1


class _KeyIds(IdGenerator):
    """Hands the SDK the ids of the record whose span is being built (one thread builds them)."""

    def __init__(self) -> None:
        self.trace_id = 1
        self.span_id = 1

    def generate_trace_id(self) -> int:
        return self.trace_id

    def generate_span_id(self) -> int:
        return self.span_id


class UsageExporter:
    """Bounded queue of stored rows, drained by one thread into OTLP spans and histograms."""

    def __init__(self, endpoint: str, max_queued_records: int, metrics_interval: float,
                 on_drop: Callable[[int], None] = lambda n: None) -> None:
        resource = Resource.create({"service.name": "llmmeter-usage"})
        self._ids = _KeyIds()
        self.tracer_provider = TracerProvider(resource=resource, id_generator=self._ids)
        self.tracer_provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
        self._tracer = self.tracer_provider.get_tracer("llmmeter.usage")
        self.meter_provider = MeterProvider(resource=resource, metric_readers=[PeriodicExportingMetricReader(
            OTLPMetricExporter(endpoint=endpoint), export_interval_millis=metrics_interval * 1000)])
        meter = self.meter_provider.get_meter("llmmeter.usage")
        self._duration = meter.create_histogram(
            genai.OPERATION_DURATION, "s", "GenAI operation duration.",
            explicit_bucket_boundaries_advisory=genai.OPERATION_DURATION_BUCKETS)
        self._tokens = meter.create_histogram(
            genai.TOKEN_USAGE, "{token}", "Number of input and output tokens used.",
            explicit_bucket_boundaries_advisory=genai.TOKEN_USAGE_BUCKETS)
        self._ttft = meter.create_histogram(
            genai.TIME_TO_FIRST_TOKEN, "s", "Time to generate first token for successful responses.",
            explicit_bucket_boundaries_advisory=genai.TIME_TO_FIRST_TOKEN_BUCKETS)
        self._tpot = meter.create_histogram(
            genai.TIME_PER_OUTPUT_TOKEN, "s",
            "Time per output token generated after the first token for successful responses.",
            explicit_bucket_boundaries_advisory=genai.TIME_PER_OUTPUT_TOKEN_BUCKETS)
        self._max = max_queued_records
        self._queue: collections.deque[Sequence[Row]] = collections.deque()
        self._queued = 0
        self._closing = False
        self._cv = threading.Condition()
        self._on_drop = on_drop
        self._thread = threading.Thread(target=self._run, name="otel-usage-export", daemon=True)

    @property
    def queued_records(self) -> int:
        """Rows waiting to become spans."""
        return self._queued

    def offer(self, rows: Sequence[Row]) -> bool:
        """Queue newly stored rows; drops them (and counts) when the queue is full. Never blocks."""
        with self._cv:
            if self._closing or self._queued + len(rows) > self._max:
                dropped = True
            else:
                dropped = False
                self._queue.append(rows)
                self._queued += len(rows)
                self._cv.notify()
        if dropped:
            self._on_drop(len(rows))
        return not dropped

    def start(self) -> None:
        """Start the draining thread."""
        self._thread.start()

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._queue and not self._closing:
                    self._cv.wait()
                if not self._queue:
                    return
                rows = self._queue.popleft()
            for row in rows:
                try:
                    self._export(row)
                except Exception:  # one odd row must not stop the exporter
                    log.exception("could not export a usage record to OpenTelemetry")
            with self._cv:
                self._queued -= len(rows)

    def _export(self, row: Row) -> None:
        c = _C
        start_us = to_us(row[c["start_time"]])
        end_us = start_us + row[c["latency_us"]]
        model, operation = row[c["model"]], operation_of(row[c["call_type"]])
        status, error_type = row[c["status_code"]], row[c["error_type"]]
        failed = not 200 <= status <= 399
        attrs: dict[str, Any] = {
            genai.OPERATION: operation,
            genai.PROVIDER: row[c["provider"]],
            genai.REQUEST_MODEL: model,
            genai.RESPONSE_MODEL: row[c["response_model"]] or model,
        }
        if failed:
            attrs[genai.ERROR_TYPE] = error_type or str(status)
        metric_attrs = dict(attrs)
        ttft_us = row[c["ttft_us"]]
        attrs.update({
            genai.INPUT_TOKENS: row[c["input_tokens"]],
            genai.OUTPUT_TOKENS: row[c["output_tokens"]],
            genai.CACHE_READ_TOKENS: row[c["cache_read_tokens"]],
            "llmmeter.request_id": row[c["request_id"]],
            genai.HTTP_STATUS: status,
        })
        if ttft_us is not None:
            attrs[genai.TIME_TO_FIRST_CHUNK] = ttft_us / 1e6
        if row[c["user_name"]]:
            attrs[genai.USER_ID] = row[c["user_name"]]
        if row[c["api_base"]]:
            attrs[genai.SERVER_ADDRESS] = row[c["api_base"]]
        self._ids.trace_id, self._ids.span_id = span_ids(row[c["request_id"]], start_us)
        span = self._tracer.start_span(f"{operation} {model}", context=otel_context.Context(),
                                       kind=SpanKind.CLIENT, attributes=attrs, start_time=start_us * 1000)
        if ttft_us is not None:
            span.add_event(genai.FIRST_TOKEN_EVENT, timestamp=(start_us + ttft_us) * 1000)
        if failed:
            span.set_status(Status(StatusCode.ERROR, row[c["error_message"]] or None))
        span.end(end_time=end_us * 1000)
        self._record_metrics(row, metric_attrs, failed)

    def _record_metrics(self, row: Row, attrs: dict[str, Any], failed: bool) -> None:
        c = _C
        self._duration.record(row[c["latency_us"]] / 1e6, attrs)
        self._tokens.record(row[c["input_tokens"]], {**attrs, genai.TOKEN_TYPE: "input"})
        self._tokens.record(row[c["output_tokens"]], {**attrs, genai.TOKEN_TYPE: "output"})
        if failed:
            return
        if row[c["ttft_us"]] is not None:
            self._ttft.record(row[c["ttft_us"]] / 1e6, attrs)
        if row[c["tpot_us"]] is not None:
            self._tpot.record(row[c["tpot_us"]] / 1e6, attrs)

    def close(self) -> None:
        """Export what is queued, flush spans and metrics, stop (blocking: call off the event loop)."""
        with self._cv:
            self._closing = True
            self._cv.notify_all()
        if self._thread.is_alive():
            self._thread.join()
        self.tracer_provider.shutdown()
        self.meter_provider.shutdown()
