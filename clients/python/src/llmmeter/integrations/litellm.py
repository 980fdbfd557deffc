"""A LiteLLM callback that records every call in llmmeter.

In the SDK::

    import litellm
    from llmmeter.integrations.litellm import LlmmeterLogger

    meter = LlmmeterLogger()              # LLMMETER_INGEST_ADDR, LLMMETER_API_KEY, ... from the environment
    litellm.callbacks = [meter]
    ...
    meter.close()                          # at shutdown (also done at interpreter exit)

In the LiteLLM proxy's `config.yaml`::

    litellm_settings:
      callbacks: ["llmmeter.integrations.litellm.proxy_handler_instance"]

`proxy_handler_instance` is created on first use from the environment
(`LLMMETER_*` client variables, plus `LLMMETER_LITELLM_LOG_PAYLOADS`,
`LLMMETER_LITELLM_MAX_QUEUE`, `LLMMETER_LITELLM_BATCH_SIZE`,
`LLMMETER_LITELLM_RETRY_SECONDS`).

Success and failure hooks, sync and async, map LiteLLM's StandardLoggingPayload
to a `UsageRecord` (:mod:`llmmeter.integrations.litellm_records`) and hand it to
a :class:`~llmmeter.integrations.shipper.RecordShipper`: a bounded queue in
memory and a background thread that sends batches through the IngestClient.
A hook never raises and never waits for the network.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Mapping
from typing import Any

from litellm.integrations.custom_logger import CustomLogger

from llmmeter.config import ClientConfig
from llmmeter.integrations.litellm_records import usage_record
from llmmeter.integrations.shipper import RecordShipper, ShipperSettings

__all__ = ["LlmmeterLogger", "ShipperSettings", "proxy_handler_instance"]

proxy_handler_instance: LlmmeterLogger
"""The LiteLLM proxy's callback (see the module docstring); made from the environment on first use."""

log = logging.getLogger("llmmeter.integrations.litellm")

ENV_LOG_PAYLOADS = "LLMMETER_LITELLM_LOG_PAYLOADS"
ENV_MAX_QUEUE = "LLMMETER_LITELLM_MAX_QUEUE"
ENV_BATCH_SIZE = "LLMMETER_LITELLM_BATCH_SIZE"
ENV_RETRY_SECONDS = "LLMMETER_LITELLM_RETRY_SECONDS"


class LlmmeterLogger(CustomLogger):
    """LiteLLM `CustomLogger` sending one llmmeter usage record per call, success or failure.

    `config` says where the ingest service is and which API key to send
    (default: :meth:`ClientConfig.from_env`); `settings` bounds the queue and
    the retries. `log_payloads` attaches the messages and the response to each
    record (off by default: prompts are often sensitive). `metadata` is added
    to every record's metadata (e.g. `{"environment": "prod"}`).
    """

    def __init__(self, config: ClientConfig | None = None, *, settings: ShipperSettings | None = None,
                 log_payloads: bool = False, metadata: Mapping[str, str] | None = None,
                 **custom_logger_kwargs: Any) -> None:
        super().__init__(**custom_logger_kwargs)
        self.shipper = RecordShipper(config, settings, name="llmmeter-litellm")
        """The queue and sending thread; its counters say what became of the records."""
        self.log_payloads = log_payloads
        self.metadata = dict(metadata or {})
        self.mapping_errors = 0
        """Calls whose record could not be built (logged; the call itself is unaffected)."""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> LlmmeterLogger:
        """A logger configured from `LLMMETER_*` variables, as the proxy's `proxy_handler_instance` is."""
        source = os.environ if env is None else env
        defaults = ShipperSettings()

        def number(name: str, default: float) -> float:
            text = source.get(name, "").strip()
            return float(text) if text else default

        settings = ShipperSettings(
            max_queue=int(number(ENV_MAX_QUEUE, defaults.max_queue)),
            batch_size=int(number(ENV_BATCH_SIZE, defaults.batch_size)),
            retry_for=number(ENV_RETRY_SECONDS, defaults.retry_for),
        )
        log_payloads = source.get(ENV_LOG_PAYLOADS, "").strip().lower() in ("1", "true", "yes")
        return cls(ClientConfig.from_env(source), settings=settings, log_payloads=log_payloads)

    # --- counters ---------------------------------------------------------------------------------------

    @property
    def dropped(self) -> int:
        """Records given up (queue full, retries exhausted, key refused); each drop is also logged."""
        return self.shipper.dropped

    @property
    def accepted(self) -> int:
        """Records stored by the ingest service."""
        return self.shipper.accepted

    # --- LiteLLM's hooks ----------------------------------------------------------------------------------

    def log_success_event(self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any) -> None:
        """Sync calls (`litellm.completion`): records a successful call."""
        self._record(kwargs, start_time, end_time, failed=False)

    def log_failure_event(self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any) -> None:
        """Sync calls: records a failed call."""
        self._record(kwargs, start_time, end_time, failed=True)

    async def async_log_success_event(self, kwargs: Any, response_obj: Any, start_time: Any,
                                      end_time: Any) -> None:
        """Async calls (`litellm.acompletion`, the proxy): records a successful call."""
        self._record(kwargs, start_time, end_time, failed=False)

    async def async_log_failure_event(self, kwargs: Any, response_obj: Any, start_time: Any,
                                      end_time: Any) -> None:
        """Async calls and the proxy: records a failed call."""
        self._record(kwargs, start_time, end_time, failed=True)

    def _record(self, kwargs: Any, start_time: Any, end_time: Any, *, failed: bool) -> None:
        try:
            kwargs = kwargs if isinstance(kwargs, Mapping) else {}
            payload = kwargs.get("standard_logging_object")
            record = usage_record(payload, kwargs, start_time=start_time, end_time=end_time, failed=failed,
                                  log_payloads=self.log_payloads, extra_metadata=self.metadata)
        except Exception:
            self.mapping_errors += 1
            log.exception("llmmeter: could not build the usage record of a LiteLLM call")
            return
        self.shipper.submit(record)

    # --- shutdown ---------------------------------------------------------------------------------------

    def flush(self, timeout: float | None = None) -> bool:
        """Waits until every record so far is stored or dropped; False on timeout. Blocks this thread."""
        return self.shipper.flush(timeout)

    async def aflush(self, wait_seconds: float | None = None) -> bool:
        """:meth:`flush` for async code: waits in a worker thread, not on the event loop."""
        return await asyncio.to_thread(self.shipper.flush, wait_seconds)

    def close(self, timeout: float | None = 30.0) -> bool:
        """Flushes (at most `timeout` seconds) and stops the sending thread."""
        return self.shipper.close(timeout)

    async def aclose(self, wait_seconds: float | None = 30.0) -> bool:
        """:meth:`close` for async code."""
        return await asyncio.to_thread(self.shipper.close, wait_seconds)


_proxy_instance: LlmmeterLogger | None = None
_proxy_lock = threading.Lock()


def __getattr__(name: str) -> Any:
    """`proxy_handler_instance`: one logger per process, configured from the environment on first use
    (so importing this module reads no settings and starts no thread)."""
    global _proxy_instance
    if name != "proxy_handler_instance":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    with _proxy_lock:
        if _proxy_instance is None:
            _proxy_instance = LlmmeterLogger.from_env()
        return _proxy_instance
