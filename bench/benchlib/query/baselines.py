"""The plain-SQL answers the query service is checked and timed against.

What an application without llmmeter's rollups would run over usage_records: exact
percentile_disc, GROUP BY over every raw row, OFFSET paging. They give the exact answers the
service's counts, costs and percentiles must match, and the times its speedups are measured by.
"""

from __future__ import annotations

ORIGIN_SQL = "TIMESTAMPTZ '2000-01-01 00:00:00+00'"  # the buckets' origin, as the service bins them
LOG_FILTER_MODEL = "gpt-4o"  # the request log's filter: a common model, so deep pages exist

SUMMARY_SQL = """
SELECT count(*) AS request_count,
       count(*) FILTER (WHERE status_code >= 200 AND status_code < 400) AS success_count,
       sum(input_tokens) AS input_tokens, sum(output_tokens) AS output_tokens,
       sum(cache_read_tokens) AS cache_read_tokens, sum(cache_write_tokens) AS cache_write_tokens,
       sum(reasoning_tokens) AS reasoning_tokens, sum(cost) AS cost, sum(images) AS images,
       avg(latency_us) AS latency_avg, avg(ttft_us) AS ttft_avg,
       percentile_disc(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (ORDER BY latency_us) AS lat,
       percentile_disc(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (ORDER BY ttft_us) AS ttft
FROM usage_records WHERE start_time >= $1 AND start_time < $2
"""

SERIES_SQL = f"""
SELECT model, date_bin('1 hour', start_time, {ORIGIN_SQL}) AS hour,
       percentile_disc(0.95) WITHIN GROUP (ORDER BY latency_us) AS p95
FROM usage_records WHERE start_time >= $1 AND start_time < $2
GROUP BY 1, 2 ORDER BY 1, 2
"""

SERIES_CHECK_SQL = f"""
SELECT model, date_bin('1 hour', start_time, {ORIGIN_SQL}) AS hour, count(*) AS n,
       percentile_disc(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (ORDER BY latency_us) AS lat,
       percentile_disc(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (ORDER BY ttft_us) AS ttft
FROM usage_records WHERE start_time >= $1 AND start_time < $2
GROUP BY 1, 2
"""

BREAKDOWN_SQL = """
SELECT user_name, count(*) AS request_count,
       count(*) FILTER (WHERE status_code >= 200 AND status_code < 400) AS success_count,
       sum(input_tokens) AS input_tokens, sum(output_tokens) AS output_tokens, sum(cost) AS cost,
       avg(latency_us) AS latency_avg,
       percentile_disc(ARRAY[0.5, 0.9, 0.95, 0.99]) WITHIN GROUP (ORDER BY latency_us) AS lat,
       avg(ttft_us) AS ttft_avg,
       percentile_disc(ARRAY[0.5, 0.95]) WITHIN GROUP (ORDER BY ttft_us) AS ttft,
       sum(cache_read_tokens) AS cache_read_tokens
FROM usage_records WHERE start_time >= $1 AND start_time < $2
GROUP BY user_name ORDER BY request_count DESC, user_name LIMIT 10
"""

LOG_COLS = ("request_id, start_time, status_code, model, provider, user_name, team, input_tokens, "
            "output_tokens, latency_us, ttft_us, cost, error_type")
LOG_OFFSET_SQL = f"""
SELECT {LOG_COLS} FROM usage_records
WHERE start_time >= $1 AND start_time < $2 AND model = $3
ORDER BY start_time DESC, request_id DESC LIMIT $4 OFFSET $5
"""
LOG_KEYSET_SQL = f"""
SELECT {LOG_COLS} FROM usage_records
WHERE start_time >= $1 AND start_time < $2 AND model = $3 AND (start_time, request_id) < ($4, $5)
ORDER BY start_time DESC, request_id DESC LIMIT $6
"""
DETAIL_SQL = "SELECT * FROM usage_records WHERE request_id = $1"
