"""The query benchmark's synthetic month: who calls which model how, as one SQL statement.

Ten million rows cannot go through the write path in reasonable time, so they are generated in
the database with generate_series. The catalog (llmmeter.demo's models plus one, 200 users in 8
teams and 20 accounts, tenants) and the distributions live in one INSERT .. SELECT per 24-hour
slice; `plan_slices` spreads the records over the days with a weekly pattern.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

# (model, provider, response_model, aliases, call_type, weight, input $/M, output $/M,
#  cache-read $/M, cache-write $/M, image $, median latency s, tokens/s, reasoning share,
#  input median, output median, request-id prefix)
EXTRA_MODEL = ("mistral-large", "mistral", "mistral-large-2411", ("eu",), "chat", 4, "2.00", "6.00", "0", "0",
               "0", 0.55, 80.0, 0.0, 1100, 300, "cmpl-")


def catalog() -> dict[str, Any]:
    """Models (llmmeter.demo's catalog plus one), users, teams, accounts, tenants."""
    from llmmeter.demo_data import FIRST_NAMES, MODELS, REQUEST_ID_PREFIXES, TENANTS

    models = []
    for m in MODELS:
        prefix = REQUEST_ID_PREFIXES.get(m.call_type, {}).get(m.provider, "req-")
        models.append((m.model, m.provider, m.response_model, m.aliases, m.call_type, m.weight,
                       str(m.input_price), str(m.output_price), str(m.cache_read_price),
                       str(m.cache_write_price), str(m.image_price), m.latency_s, m.tokens_per_s,
                       m.reasoning_share, m.input_median, m.output_median, prefix))
    models.append(EXTRA_MODEL)
    teams = {
        "search": 3, "support": 2, "data-science": 3, "platform": 2,
        "growth": 3, "legal": 2, "finance": 2, "security": 3,
    }  # 8 teams, 20 accounts
    team_names = list(teams)
    users, uteam, uacct = [], [], []
    for i in range(200):
        team = team_names[i % len(team_names)]
        users.append(f"{FIRST_NAMES[i % len(FIRST_NAMES)]}.{i // len(FIRST_NAMES) + 1}")
        uteam.append(team)
        uacct.append(f"acct-{team}-{(i // len(team_names)) % teams[team] + 1}")
    return {"models": models, "users": users, "uteam": uteam, "uacct": uacct, "tenants": list(TENANTS)[:8]}


def _arr(values: list[Any], typ: str) -> str:
    """A SQL array literal of safe values (the catalog has no quotes)."""
    out = []
    for v in values:
        if isinstance(v, str):
            if "'" in v:
                raise ValueError(v)
            out.append(f"'{v}'")
        else:
            out.append(repr(float(v)) if isinstance(v, float) else str(v))
    return f"(ARRAY[{', '.join(out)}]::{typ}[])"


def generate_sql(cat: dict[str, Any]) -> str:
    """INSERT .. SELECT of one slice: $1 slice start, $2 slice seconds, $3 UTC day fraction of $1,
    $4 first row number, $5 rows. Fenced (OFFSET 0) levels keep each random draw evaluated once."""
    from llmmeter_ingest.rows import RECORD_COLUMNS

    models = cat["models"]
    total_w = sum(m[5] for m in models)
    cum, acc = [0.0], 0.0
    for m in models[:-1]:
        acc += m[5] / total_w
        cum.append(acc)
    alias_flat: list[str] = []
    alias_off, alias_n = [], []
    for m in models:
        alias_off.append(len(alias_flat) + 1)
        alias_n.append(len(m[3]))
        alias_flat += list(m[3])
    api = {"openai": "https://api.openai.com/v1", "anthropic": "https://api.anthropic.com/v1",
           "google": "https://generativelanguage.googleapis.com/v1beta",
           "groq": "https://api.groq.com/openai/v1", "mistral": "https://api.mistral.ai/v1"}
    col = {name: i for i, name in enumerate(
        ("model", "provider", "response_model", "aliases", "call_type", "weight", "inp", "outp", "crp", "cwp",
         "imgp", "lat", "tps", "rshare", "inmed", "outmed", "prefix"))}

    def a(name: str, typ: str) -> str:
        return _arr([m[col[name]] for m in models], typ)

    n_users = len(cat["users"])
    # every generated record carries its cost: cost_source keeps the column's default (reported)
    cols = ", ".join(c for c in RECORD_COLUMNS if c != "cost_source") + ", ingested_at"
    return f"""
INSERT INTO usage_records ({cols})
SELECT start_time, request_id, start_time + latency_us * INTERVAL '1 microsecond', latency_us, ttft_us,
       CASE WHEN ttft_us IS NOT NULL AND output_chunks > 1
            THEN (latency_us - ttft_us)::float8 / (output_chunks - 1) END,
       CASE WHEN ttft_us IS NOT NULL AND output_tokens > 1
                 THEN (latency_us - ttft_us)::float8 / (output_tokens - 1)
            WHEN ttft_us IS NULL AND output_tokens > 0 THEN latency_us::float8 / output_tokens END,
       streaming, output_chunks, status_code, error_type,
       CASE status_code WHEN 429 THEN 'Rate limit reached for ' || model || ' on tokens per min (TPM)'
                        WHEN 500 THEN 'The server had an error while processing your request.'
                        WHEN 503 THEN provider || ' is overloaded: ' || model
                                      || ' is temporarily unavailable.'
                        WHEN 400 THEN 'This model''s maximum context length is 128000 tokens.'
                        WHEN 408 THEN 'Request to ' || provider || ' timed out.' ELSE '' END,
       model, response_model, model_alias, provider, call_type, '', api_base,
       user_name, team, account, client_ip,
       input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, reasoning_tokens,
       images, 0, 0, 0, cost, '{{}}', cache_hit, gateway_overhead_us, retries, metadata, false,
       start_time + latency_us * INTERVAL '1 microsecond' + INTERVAL '1.5 seconds'
FROM (
  SELECT e.*,
         CASE WHEN NOT ok THEN (CASE status_code WHEN 429 THEN 0.08 WHEN 500 THEN 1.2 WHEN 503 THEN 0.3
                                  WHEN 400 THEN 0.15 ELSE 30.0 END * exp(0.5 * z3) * 1e6)::bigint
              WHEN call_type = 'chat' THEN (ttft_raw + greatest(1000, (output_tokens - reasoning_tokens)
                                             / speed * 1e6))::bigint
              WHEN call_type = 'embedding'
                   THEN ((lat_med * exp(0.4 * z3) + input_tokens / 50000.0) * 1e6)::bigint
              ELSE (lat_med * exp(0.3 * z3) * 1e6)::bigint END AS latency_us,
         CASE WHEN ok AND streaming THEN ttft_raw::bigint END AS ttft_us,
         CASE WHEN ok AND streaming THEN greatest(1, output_tokens / 3) ELSE 0 END AS output_chunks,
         CASE WHEN NOT ok THEN 0::numeric
              WHEN call_type = 'image_generation' THEN {a('imgp', 'numeric')}[m]
              ELSE round(((input_tokens - cache_read_tokens - cache_write_tokens) * {a('inp', 'numeric')}[m]
                          + cache_read_tokens * {a('crp', 'numeric')}[m]
                          + cache_write_tokens * {a('cwp', 'numeric')}[m]
                          + output_tokens * {a('outp', 'numeric')}[m]) / 1000000, 10) END AS cost
  FROM (
    SELECT d.*,
           (lat_med * exp(0.45 * z3) + reasoning_tokens / speed) * 1e6 AS ttft_raw,
           CASE WHEN ok AND call_type = 'chat' AND {a('cwp', 'numeric')}[m] > 0 AND ry >= 0.35 AND ry < 0.42
                THEN floor(input_tokens * 0.5)::bigint ELSE 0 END AS cache_write_tokens
    FROM (
      SELECT c.*,
             CASE WHEN rflag AND output_tokens > 0
                  THEN least(output_tokens, greatest(16, exp(ln(700) + 0.9 * z5)))::bigint ELSE 0
             END AS reasoning_tokens,
             CASE WHEN ok AND call_type = 'chat' AND {a('crp', 'numeric')}[m] > 0 AND ry < 0.35
                  THEN floor(input_tokens * (0.3 + 0.6 * rz))::bigint ELSE 0 END AS cache_read_tokens
      FROM (
        SELECT b.*,
               {a('model', 'text')}[m] AS model, {a('provider', 'text')}[m] AS provider,
               {a('response_model', 'text')}[m] AS response_model, {a('call_type', 'text')}[m] AS call_type,
               CASE WHEN ra2 < 0.3 THEN ''
                    ELSE {_arr(alias_flat, 'text')}[{_arr(alias_off, 'int')}[m]
                         + floor(ra2 * 1000)::int % {_arr(alias_n, 'int')}[m]] END AS model_alias,
               {_arr([api[m[1]] for m in models], 'text')}[m] AS api_base,
               {_arr(cat['users'], 'text')}[u] AS user_name, {_arr(cat['uteam'], 'text')}[u] AS team,
               {_arr(cat['uacct'], 'text')}[u] AS account,
               '10.' || (u / 250) || '.' || (u % 250) || '.0/24' AS client_ip,
               {a('lat', 'float8')}[m] AS lat_med,
               {a('tps', 'float8')}[m] * exp(0.25 * z4) AS speed,
               status_code = 200 AS ok,
               CASE status_code WHEN 429 THEN 'RateLimitError' WHEN 500 THEN 'InternalServerError'
                    WHEN 503 THEN 'ServiceUnavailableError' WHEN 400 THEN 'BadRequestError'
                    WHEN 408 THEN 'Timeout' ELSE '' END AS error_type,
               CASE WHEN {a('call_type', 'text')}[m] = 'image_generation' THEN 0
                    ELSE greatest(5, least(200000, exp(ln({a('inmed', 'float8')}[m]) + 0.9 * z1)))::bigint
               END AS input_tokens,
               CASE WHEN status_code = 200 AND {a('call_type', 'text')}[m] = 'chat'
                    THEN greatest(1, least(8192, exp(ln({a('outmed', 'float8')}[m]) + 0.8 * z2)))::bigint
                    ELSE 0 END AS output_tokens,
               CASE WHEN status_code = 200 AND {a('call_type', 'text')}[m] = 'image_generation' THEN 1
                    ELSE 0 END AS images,
               ra < {a('rshare', 'float8')}[m] AS rflag,
               {a('call_type', 'text')}[m] = 'chat' AND rx < 0.85 AS streaming,
               status_code = 200 AND rz < 0.01 AS cache_hit,
               CASE WHEN status_code IN (429, 503) THEN 1 ELSE 0 END AS retries,
               (4000 * exp(0.5 * z4))::bigint AS gateway_overhead_us,
               jsonb_build_object('tenant', {_arr(cat['tenants'], 'text')}[1 + (u * 7 + m) % 8],
                                  'environment', CASE WHEN rx < 0.9 THEN 'production' ELSE 'staging' END)
                 AS metadata,
               {a('prefix', 'text')}[m] || lpad(to_hex((i * 2654435761) % 1099511627776), 10, '0')
                 AS request_id
        FROM (
          SELECT i,
                 $1::timestamptz + least(
                     (((v - 0.6 * sin(2 * pi() * v) / (2 * pi()) + 0.625 - $3::float8) + 2)
                      - floor((v - 0.6 * sin(2 * pi() * v) / (2 * pi()) + 0.625 - $3::float8) + 2))
                     * $2::float8, $2::float8 - 0.000001) * INTERVAL '1 second' AS start_time,
                 width_bucket(rm, {_arr(cum, 'float8')}) AS m,
                 1 + least({n_users - 1}, floor({n_users} * ru * ru)::int) AS u,
                 CASE WHEN rs < 0.955 THEN 200 WHEN rs < 0.98 THEN 429 WHEN rs < 0.99 THEN 500
                      WHEN rs < 0.994 THEN 503 WHEN rs < 0.998 THEN 400 ELSE 408 END AS status_code,
                 ra, ra2, rx, ry, rz, z1, z2, z3, z4, z5
          FROM (
            SELECT i, random() AS v, random() AS rm, random() AS ru, random() AS rs, random() AS ra,
                   random() AS ra2, random() AS rx, random() AS ry, random() AS rz,
                   random_normal() AS z1, random_normal() AS z2, random_normal() AS z3,
                   random_normal() AS z4, random_normal() AS z5
            FROM generate_series($4::bigint, $4::bigint + $5::bigint - 1) AS i
            OFFSET 0) AS a
          OFFSET 0) AS b
        OFFSET 0) AS c
      OFFSET 0) AS d
    OFFSET 0) AS e
  OFFSET 0) AS f
"""


def plan_slices(n: int, end: datetime, days: int) -> list[tuple[datetime, int, int]]:
    """(slice start, first row number, rows) of `days` 24-hour slices ending at `end`;
    weekend slices get 45% of a weekday's traffic."""
    start = end - timedelta(days=days)
    starts = [start + timedelta(days=d) for d in range(days)]
    weights = [0.45 if (s + timedelta(hours=12)).weekday() >= 5 else 1.0 for s in starts]
    total = sum(weights)
    counts = [int(n * w / total) for w in weights]
    counts[-1] += n - sum(counts)
    out, i0 = [], 1
    for s, c in zip(starts, counts, strict=True):
        out.append((s, i0, c))
        i0 += c
    return out
