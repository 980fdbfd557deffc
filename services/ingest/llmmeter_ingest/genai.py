"""The OpenTelemetry GenAI semantic conventions we read and write, in one place.

Attribute names, the deprecated names still sent by older instrumentations,
and the histogram bucket boundaries the conventions prescribe, so the OTLP
receiver and the exporter cannot drift apart.
"""

from __future__ import annotations

OPERATION = "gen_ai.operation.name"
PROVIDER = "gen_ai.provider.name"
SYSTEM = "gen_ai.system"
"""Deprecated name of `gen_ai.provider.name`."""
REQUEST_MODEL = "gen_ai.request.model"
RESPONSE_MODEL = "gen_ai.response.model"
RESPONSE_ID = "gen_ai.response.id"
INPUT_TOKENS = "gen_ai.usage.input_tokens"
OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
PROMPT_TOKENS = "gen_ai.usage.prompt_tokens"
"""Deprecated name of `gen_ai.usage.input_tokens`."""
COMPLETION_TOKENS = "gen_ai.usage.completion_tokens"
"""Deprecated name of `gen_ai.usage.output_tokens`."""
CACHE_READ_TOKENS = "gen_ai.usage.cache_read.input_tokens"
CACHE_WRITE_TOKENS = "gen_ai.usage.cache_creation.input_tokens"
REASONING_TOKENS = "gen_ai.usage.reasoning.output_tokens"
TIME_TO_FIRST_CHUNK = "gen_ai.response.time_to_first_chunk"
"""Seconds from the request to the first chunk of a streamed response."""
REQUEST_STREAM = "gen_ai.request.stream"
TOKEN_TYPE = "gen_ai.token.type"
ERROR_TYPE = "error.type"
SERVER_ADDRESS = "server.address"
SERVER_PORT = "server.port"
HTTP_STATUS = "http.response.status_code"
USER_ID = "user.id"
ENDUSER_ID = "enduser.id"
"""Deprecated name of `user.id`."""
RESPONSE_FINISH_REASONS = "gen_ai.response.finish_reasons"
ERROR_MESSAGE = "error.message"
EXCEPTION_EVENT = "exception"
EXCEPTION_TYPE = "exception.type"
EXCEPTION_MESSAGE = "exception.message"

FIRST_TOKEN_EVENT = "gen_ai.first_token"
"""The span event we put at the first token (the conventions name none)."""

#: Histogram names and the ExplicitBucketBoundaries the GenAI metric conventions prescribe.
OPERATION_DURATION = "gen_ai.client.operation.duration"
OPERATION_DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48,
                              40.96, 81.92)
TOKEN_USAGE = "gen_ai.client.token.usage"
TOKEN_USAGE_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216,
                       67108864)
TIME_TO_FIRST_TOKEN = "gen_ai.server.time_to_first_token"
TIME_TO_FIRST_TOKEN_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5,
                               5.0, 7.5, 10.0)
TIME_PER_OUTPUT_TOKEN = "gen_ai.server.time_per_output_token"
TIME_PER_OUTPUT_TOKEN_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)
