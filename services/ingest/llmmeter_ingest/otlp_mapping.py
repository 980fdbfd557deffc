"""Which span attributes become which usage-record fields: the OTLP receiver's one table.

Kept apart from the conversion (`otlp_in`) because it is data that users read: the README's
mapping table is `markdown_table()` of it (a test checks they agree). It covers the GenAI
semantic conventions (current and deprecated names) and the dialects of the libraries that send
GenAI spans: OpenLLMetry / `opentelemetry-instrumentation-openai`,
`opentelemetry-instrumentation-openai-v2`, LiteLLM's `otel` callback.
"""

from __future__ import annotations

from dataclasses import dataclass

from llmmeter_ingest import genai

ASSOCIATION_PREFIX = "traceloop.association.properties."
"""OpenLLMetry's (traceloop-sdk) association properties: the ones `MAPPING` names become fields,
the others metadata under their own name."""


@dataclass(frozen=True)
class Source:
    """Where one record field comes from: attribute names in order of preference."""

    field: str
    """A `UsageRecord` field, or `metadata.<key>`."""
    attributes: tuple[str, ...]
    note: str = ""


#: The mapping table: for each record field, the span attributes read, first present wins.
#: Values are taken as sent: numbers and booleans may also arrive as strings (LiteLLM sends
#: `"True"`, `"42"`); empty strings count as absent.
MAPPING: tuple[Source, ...] = (
    Source("model", (genai.REQUEST_MODEL, genai.RESPONSE_MODEL, "llm.request.model"),
           "required: a span without a model is not an LLM call"),
    Source("response_model", (genai.RESPONSE_MODEL, "llm.response.model")),
    Source("provider", (genai.PROVIDER, genai.SYSTEM, "llm.vendor")),
    Source("call_type", (genai.OPERATION, "llm.request.type"),
           "normalised by `OPERATIONS` (`embeddings` → embedding, LiteLLM's `acompletion` → chat)"),
    Source("api_base", ("server.address", "gen_ai.openai.api_base", "hidden_params.api_base"),
           "`server.address:server.port`; `hidden_params` is LiteLLM's JSON string"),
    Source("user", (genai.USER_ID, genai.ENDUSER_ID, "gen_ai.user", "llm.user",
                    ASSOCIATION_PREFIX + "user_id", "metadata.user_api_key_end_user_id",
                    "metadata.user_api_key_user_id")),
    Source("team", (ASSOCIATION_PREFIX + "team", ASSOCIATION_PREFIX + "team_id",
                    "metadata.user_api_key_team_alias", "metadata.user_api_key_team_id"),
           "a team-bound API key pins it"),
    Source("account", (ASSOCIATION_PREFIX + "account", "metadata.user_api_key_alias"),
           "LiteLLM's virtual key alias"),
    Source("input_tokens", (genai.INPUT_TOKENS, genai.PROMPT_TOKENS, "llm.usage.prompt_tokens")),
    Source("output_tokens", (genai.OUTPUT_TOKENS, genai.COMPLETION_TOKENS, "llm.usage.completion_tokens")),
    Source("cache_read_tokens", (genai.CACHE_READ_TOKENS, "gen_ai.usage.cache_read_input_tokens")),
    Source("cache_write_tokens", (genai.CACHE_WRITE_TOKENS, "gen_ai.usage.cache_creation_input_tokens")),
    Source("reasoning_tokens", (genai.REASONING_TOKENS, "gen_ai.usage.reasoning_tokens",
                                "llm.usage.reasoning_tokens")),
    Source("cost", ("gen_ai.usage.cost", "gen_ai.cost.total_cost"), "USD"),
    Source("streaming", (genai.REQUEST_STREAM, "gen_ai.is_streaming", "llm.is_streaming"),
           "else true when a time to first token is known"),
    Source("time_to_first_token", (genai.TIME_TO_FIRST_CHUNK, "gen_ai.server.time_to_first_token"),
           "seconds; else the first chunk event (`CHUNK_EVENTS`) minus the span start"),
    Source("status_code", (genai.HTTP_STATUS, "error.code"),
           "else the status in the error message (`Error code: 429`), else `ERROR_STATUS` of the "
           "error class, else 500 for an error span, 200 otherwise"),
    Source("error_type", (genai.ERROR_TYPE, "exception.type"),
           "the class name only (`<class 'openai.RateLimitError'>` → RateLimitError); `exception.type` "
           "of the span's `exception` event"),
    Source("error_message", ("error.message", "exception.message"),
           "after the span status message; `exception.message` of the `exception` event"),
    Source("metadata.gen_ai.response.id", (genai.RESPONSE_ID,)),
    Source("metadata.gen_ai.response.finish_reasons", (genai.RESPONSE_FINISH_REASONS,),
           "comma-separated"),
    Source("metadata.team_id", ("metadata.user_api_key_team_id",), "LiteLLM"),
    Source("metadata.org_id", ("metadata.user_api_key_org_id", ASSOCIATION_PREFIX + "org_id"), "LiteLLM"),
    Source("metadata.service.name", ("service.name",), "of the resource"),
)

#: For each record field, the attributes read, in order of preference.
BY_FIELD = {s.field: s.attributes for s in MAPPING}

#: `gen_ai.operation.name` (or `llm.request.type`) of model calls, and the call_type each is
#: stored as. Any other operation (agent, tool, workflow spans) is not a model call: those
#: wrap model calls reported on their own, so counting them too would count tokens twice.
OPERATIONS: dict[str, str] = {
    "chat": "chat", "generate_content": "chat", "text_completion": "text_completion",
    "embeddings": "embedding", "embedding": "embedding",
    # LiteLLM's call types, as its otel callback sends them
    "completion": "chat", "acompletion": "chat", "atext_completion": "text_completion",
    "aembedding": "embedding", "image_generation": "image_generation",
    "aimage_generation": "image_generation", "transcription": "asr", "atranscription": "asr",
    "speech": "tts", "aspeech": "tts", "moderation": "moderation", "amoderation": "moderation",
    "rerank": "rerank", "arerank": "rerank", "responses": "responses", "aresponses": "responses",
}

#: The operations that are model calls (the keys of `OPERATIONS`).
MODEL_CALLS = frozenset(OPERATIONS)

#: Span events whose earliest time is the first chunk of a streamed response.
CHUNK_EVENTS = frozenset({genai.FIRST_TOKEN_EVENT, "gen_ai.content.completion.chunk",
                          "llm.content.completion.chunk"})

#: The status of a failed call that carries only its error class (`error.type`, the exception
#: type), compared without case, module path or punctuation.
ERROR_STATUS: dict[str, int] = {
    "ratelimiterror": 429, "ratelimitexceeded": 429, "toomanyrequests": 429, "resourceexhausted": 429,
    "authenticationerror": 401, "unauthorized": 401, "invalidapikey": 401,
    "permissiondeniederror": 403, "permissiondenied": 403, "forbidden": 403,
    "notfounderror": 404, "notfound": 404,
    "badrequesterror": 400, "badrequest": 400, "invalidrequesterror": 400,
    "contextwindowexceedederror": 400, "contentpolicyviolationerror": 400,
    "unprocessableentityerror": 422, "conflicterror": 409,
    "requesttimeout": 408, "apitimeouterror": 504, "timeout": 504, "timeouterror": 504,
    "readtimeout": 504, "gatewaytimeout": 504,
    "apiconnectionerror": 502, "connecterror": 502, "connectionerror": 502, "badgatewayerror": 502,
    "serviceunavailableerror": 503, "serviceunavailable": 503, "overloadederror": 529,
    "internalservererror": 500, "apierror": 500,
}


def markdown_table() -> str:
    """`MAPPING` as the Markdown table the README shows."""
    lines = ["| record field | span attributes, first present wins | notes |", "|---|---|---|"]
    for s in MAPPING:
        names = ", ".join(f"`{n}`" for n in s.attributes)
        lines.append(f"| `{s.field}` | {names} | {s.note} |")
    return "\n".join(lines)
