-- Functions shared by the PostgreSQL and the TimescaleDB schema.
--
-- Latency and TTFT distributions are kept as sparse log-bucketed histograms
-- (the DDSketch mapping): bucket k holds values in (gamma^(k-1), gamma^k]
-- microseconds with gamma = (1 + a) / (1 - a), a = 0.005, so any quantile read
-- back as 2 * gamma^k / (gamma + 1) is within 0.5% of the exact value. Two
-- histograms merge by adding counts key by key, which makes them exact to roll
-- up from minutes to hours to days.

CREATE OR REPLACE FUNCTION llmmeter_hist_key(us bigint) RETURNS integer
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT CASE WHEN us <= 1 THEN 0
                ELSE ceil(ln(us::double precision) / 0.010000083334583179)::integer END
$$;

-- Adds two sparse histograms given as (keys, counts) pairs; the result has each key once, sorted.
CREATE OR REPLACE FUNCTION llmmeter_hist_merge(
    a_keys integer[], a_counts bigint[], b_keys integer[], b_counts bigint[],
    OUT keys integer[], OUT counts bigint[])
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT coalesce(array_agg(k ORDER BY k), '{}'), coalesce(array_agg(c ORDER BY k), '{}')
    FROM (SELECT k, sum(c)::bigint AS c
          FROM (SELECT * FROM unnest(a_keys, a_counts)
                UNION ALL
                SELECT * FROM unnest(b_keys, b_counts)) AS u(k, c)
          WHERE k IS NOT NULL
          GROUP BY k) AS s
$$;

-- Success as the product pages define it: 200 <= status < 400.
CREATE OR REPLACE FUNCTION llmmeter_is_error(status_code integer) RETURNS boolean
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT NOT (status_code >= 200 AND status_code < 400)
$$;
