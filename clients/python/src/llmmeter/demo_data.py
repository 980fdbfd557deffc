"""The static catalog behind `llmmeter demo`: models, prices, people and canned texts.

Kept apart from the generator in :mod:`llmmeter.demo` so the numbers that make
the traffic look real (list prices, speeds, who uses what) can be reviewed and
updated without reading the sampling code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal


@dataclass(frozen=True)
class ModelProfile:
    """One model as the demo uses it: identity, list prices and how it behaves."""

    model: str
    """The name callers ask for."""
    provider: str
    """Who serves it."""
    response_model: str
    """The dated name the provider answers with."""
    aliases: tuple[str, ...]
    """Gateway routing aliases that resolve to this model."""
    call_type: str
    """`chat`, `embedding` or `image_generation`."""
    weight: float
    """Relative share of all calls."""
    input_price: Decimal = Decimal(0)
    """USD per million uncached input tokens."""
    output_price: Decimal = Decimal(0)
    """USD per million output tokens (reasoning included)."""
    cache_read_price: Decimal = Decimal(0)
    """USD per million input tokens read from the prompt cache; 0 = no prompt caching."""
    cache_write_price: Decimal = Decimal(0)
    """USD per million input tokens written to the prompt cache; 0 = writes not billed apart."""
    image_price: Decimal = Decimal(0)
    """USD per generated image."""
    latency_s: float = 0.5
    """Median seconds to the first token (chat) or to the whole response (others)."""
    tokens_per_s: float = 100.0
    """Median output speed of chat models."""
    reasoning_share: float = 0.0
    """Fraction of calls that spend reasoning tokens."""
    input_median: int = 800
    """Median input tokens."""
    output_median: int = 250
    """Median output tokens of chat calls."""


def _d(text: str) -> Decimal:
    """Parses a price exactly (a float literal would carry binary noise into the cost)."""
    return Decimal(text)


MODELS: tuple[ModelProfile, ...] = (
    ModelProfile("gpt-4o", "openai", "gpt-4o-2024-08-06", ("default", "smart"), "chat", 18,
                 _d("2.50"), _d("10.00"), _d("1.25"), latency_s=0.45, tokens_per_s=90,
                 input_median=1200, output_median=350),
    ModelProfile("gpt-4o-mini", "openai", "gpt-4o-mini-2024-07-18", ("fast", "cheap"), "chat", 30,
                 _d("0.15"), _d("0.60"), _d("0.075"), latency_s=0.35, tokens_per_s=130),
    ModelProfile("claude-sonnet-4", "anthropic", "claude-sonnet-4-20250514", ("smart", "coding"), "chat", 14,
                 _d("3.00"), _d("15.00"), _d("0.30"), _d("3.75"), latency_s=0.9, tokens_per_s=65,
                 reasoning_share=0.3, input_median=2500, output_median=500),
    ModelProfile("claude-haiku", "anthropic", "claude-3-5-haiku-20241022", ("fast",), "chat", 10,
                 _d("0.80"), _d("4.00"), _d("0.08"), _d("1.00"), latency_s=0.5, tokens_per_s=110,
                 input_median=900),
    ModelProfile("gemini-2.5-flash", "google", "gemini-2.5-flash", ("cheap", "long-context"), "chat", 10,
                 _d("0.30"), _d("2.50"), _d("0.075"), latency_s=0.6, tokens_per_s=180,
                 reasoning_share=0.6, input_median=3000, output_median=300),
    ModelProfile("llama-3.1-70b", "groq", "llama-3.1-70b-versatile", ("open-weights",), "chat", 6,
                 _d("0.59"), _d("0.79"), latency_s=0.2, tokens_per_s=250, input_median=700),
    ModelProfile("o4-mini", "openai", "o4-mini-2025-04-16", ("reasoning",), "chat", 4,
                 _d("1.10"), _d("4.40"), _d("0.275"), latency_s=1.5, tokens_per_s=110,
                 reasoning_share=1.0, input_median=1500, output_median=400),
    ModelProfile("text-embedding-3-small", "openai", "text-embedding-3-small", ("embed",), "embedding", 12,
                 _d("0.02"), latency_s=0.12, input_median=400, output_median=0),
    ModelProfile("dall-e-3", "openai", "dall-e-3", ("images",), "image_generation", 2,
                 image_price=_d("0.040"), latency_s=11.0, input_median=0, output_median=0),
)  # fmt: skip

API_BASES = {
    "openai": "https://api.openai.com/v1",
    "anthropic": "https://api.anthropic.com/v1",
    "google": "https://generativelanguage.googleapis.com/v1beta",
    "groq": "https://api.groq.com/openai/v1",
}

REQUEST_ID_PREFIXES = {
    "chat": {"openai": "chatcmpl-", "anthropic": "msg_", "google": "gen-", "groq": "chatcmpl-"},
    "embedding": {"openai": "embd-"},
    "image_generation": {"openai": "img-"},
}


@dataclass(frozen=True)
class Team:
    """A team: its API accounts, the features it builds and the models it leans on."""

    name: str
    accounts: tuple[str, ...]
    features: tuple[str, ...]
    model_boost: dict[str, float] = field(default_factory=dict)
    """Multipliers of the global model weights for this team."""


TEAMS: tuple[Team, ...] = (
    Team("search", ("acct-search-prod", "acct-search-dev"), ("rag-search", "query-rewrite"),
         {"text-embedding-3-small": 2.5}),
    Team("support", ("acct-support",), ("support-bot", "ticket-summary"), {"claude-haiku": 2.0}),
    Team("data-science", ("acct-ds-research", "acct-ds-batch"), ("classification", "embeddings-backfill"),
         {"text-embedding-3-small": 3.0, "o4-mini": 2.0}),
    Team("platform", ("acct-platform",), ("code-review", "incident-summary"), {"claude-sonnet-4": 2.5}),
    Team("growth", ("acct-growth-web", "acct-growth-email"), ("copywriting", "ad-images"),
         {"dall-e-3": 5.0}),
    Team("legal", ("acct-legal", "acct-shared-sandbox"), ("contract-review", "redaction"),
         {"claude-sonnet-4": 2.0, "gemini-2.5-flash": 1.5}),
)  # fmt: skip

FIRST_NAMES = (
    "ada", "alan", "barbara", "claude", "dennis", "donald", "edsger", "frances", "grace", "guido",
    "hedy", "ivan", "james", "jean", "john", "ken", "leslie", "linus", "lynn", "margaret",
    "marvin", "niklaus", "radia", "richard", "robin", "shafi", "sophie", "tim", "tony", "vint",
    "whitfield", "yukihiro", "adele", "bjarne", "carol", "dana", "erna", "fran", "gordon", "hal",
)  # fmt: skip

TENANTS = ("acme", "globex", "initech", "umbrella", "hooli", "wayne-enterprises", "stark-industries", "wonka")

USER_PROMPTS = (
    "Summarize this support ticket in two sentences.",
    "Rewrite the query 'cheap flights paris may' for a search engine.",
    "Classify the sentiment of: 'The checkout keeps failing on mobile.'",
    "Review this diff for bugs: `if (x = 0) return;`",
    "Draft a friendly reminder email about the unpaid invoice #4821.",
    "Which clauses of this contract limit our liability?",
    "Explain the incident timeline from these logs in bullet points.",
)

ANSWERS = (
    "The customer cannot finish checkout on mobile; they already cleared the cache.",
    "cheap flights to Paris in May",
    "negative",
    "The condition assigns instead of comparing; use `x == 0`.",
    "Hi Sam, a quick reminder that invoice #4821 is now due. Thanks!",
    "Clauses 9.2 and 14.1 cap liability at the fees paid in the last 12 months.",
    "- 09:12 deploy\n- 09:15 error rate up\n- 09:31 rollback",
)

ERRORS = {
    429: ("RateLimitError", "Rate limit reached for {model} on tokens per min (TPM): Limit 2000000, "
                            "Used 1998211, Requested {tokens}. Please try again in 120ms."),
    500: ("InternalServerError", "The server had an error while processing your request. Sorry about that!"),
    503: ("ServiceUnavailableError", "{provider} is overloaded: {model} is temporarily unavailable."),
    400: ("BadRequestError", "This model's maximum context length is 128000 tokens. However, your "
                             "messages resulted in {tokens} tokens. Please shorten the messages."),
    408: ("Timeout", "Request to {provider} timed out after {seconds:.1f} seconds."),
}  # fmt: skip
"""Error class and message template per HTTP status."""
