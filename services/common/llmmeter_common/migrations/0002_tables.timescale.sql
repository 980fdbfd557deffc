-- TimescaleDB (2.13+): hypertables instead of range partitions, and the
-- rollups usage_1m / usage_1h / usage_1d as (hierarchical) continuous
-- aggregates instead of tables the ingest service upserts. Relation and column
-- names, column order and column types match 0002_tables.postgres.sql, so the
-- query code reads either flavour the same way (tests/test_schema_flavors.py
-- checks this). The whole file runs in one transaction (see migrate.py), which
-- is why every continuous aggregate is created WITH NO DATA: the refresh
-- policies materialise them, and materialized_only = false makes queries add
-- the not yet materialised buckets from the layer below in the meantime.

-- Raw rows ------------------------------------------------------------------

CREATE TABLE usage_records (
    start_time          timestamptz NOT NULL,
    request_id          text        NOT NULL,
    end_time            timestamptz NOT NULL,
    latency_us          bigint      NOT NULL,
    ttft_us             bigint,
    itl_us              double precision,
    tpot_us             double precision,
    streaming           boolean     NOT NULL DEFAULT false,
    output_chunks       bigint      NOT NULL DEFAULT 0,
    status_code         integer     NOT NULL,
    error_type          text        NOT NULL DEFAULT '',
    error_message       text        NOT NULL DEFAULT '',
    model               text        NOT NULL,
    response_model      text        NOT NULL DEFAULT '',
    model_alias         text        NOT NULL DEFAULT '',
    provider            text        NOT NULL DEFAULT '',
    call_type           text        NOT NULL DEFAULT '',
    model_id            text        NOT NULL DEFAULT '',
    api_base            text        NOT NULL DEFAULT '',
    user_name           text        NOT NULL DEFAULT '',
    team                text        NOT NULL DEFAULT '',
    account             text        NOT NULL DEFAULT '',
    client_ip           text        NOT NULL DEFAULT '',
    input_tokens        bigint      NOT NULL DEFAULT 0,
    output_tokens       bigint      NOT NULL DEFAULT 0,
    cache_read_tokens   bigint      NOT NULL DEFAULT 0,
    cache_write_tokens  bigint      NOT NULL DEFAULT 0,
    reasoning_tokens    bigint      NOT NULL DEFAULT 0,
    images              bigint      NOT NULL DEFAULT 0,
    audio_seconds       numeric     NOT NULL DEFAULT 0,
    video_seconds       numeric     NOT NULL DEFAULT 0,
    characters          bigint      NOT NULL DEFAULT 0,
    cost                numeric     NOT NULL DEFAULT 0,
    cost_breakdown      jsonb       NOT NULL DEFAULT '{}',
    cache_hit           boolean     NOT NULL DEFAULT false,
    gateway_overhead_us bigint,
    retries             integer     NOT NULL DEFAULT 0,
    metadata            jsonb       NOT NULL DEFAULT '{}',
    has_payload         boolean     NOT NULL DEFAULT false,
    ingested_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (start_time, request_id)
);

-- UTC-day chunks, like the PostgreSQL flavour's day partitions.
SELECT create_hypertable('usage_records', by_range('start_time', INTERVAL '1 day'));

CREATE INDEX usage_records_request_id_idx ON usage_records (request_id);

CREATE TABLE usage_payloads (
    start_time  timestamptz NOT NULL,
    request_id  text        NOT NULL,
    request     jsonb,
    response    jsonb,
    PRIMARY KEY (start_time, request_id)
);

SELECT create_hypertable('usage_payloads', by_range('start_time', INTERVAL '1 day'));

-- Columnar compression of raw chunks older than 2 days. request_id is a
-- secondary orderby column because it is part of the primary key: that lets
-- inserts into compressed chunks (late records, ON CONFLICT DO NOTHING) check
-- uniqueness without decompressing whole segments, and avoids the
-- "column should be used for segmenting or ordering" warning.
ALTER TABLE usage_records SET (
    timescaledb.compress,
    timescaledb.compress_segmentby = 'model',
    timescaledb.compress_orderby = 'start_time DESC, request_id'
);
SELECT add_compression_policy('usage_records', compress_after => INTERVAL '2 days');

-- Histogram aggregates --------------------------------------------------------
--
-- They build exactly what the PostgreSQL flavour stores (see rollups.py):
-- keys = the distinct llmmeter_hist_key() values, ascending, counts aligned;
-- NULL inputs ignored; no input -> '{}'. The transition state is a dense
-- bigint[] subscripted by the key itself (keys are 0..~4400 for any bigint),
-- element = count, NULL = empty bucket, so adding a value is O(1). The keys
-- and counts aggregates share sfunc, stype and initcond, so PostgreSQL
-- computes their state once when both are used on the same input.

CREATE OR REPLACE FUNCTION llmmeter_hist_state_add_value(state bigint[], us bigint)
RETURNS bigint[] LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
DECLARE
    k integer := llmmeter_hist_key(us);
BEGIN
    state[k] := coalesce(state[k], 0) + 1;
    RETURN state;
END
$$;

-- Adds a stored (keys, counts) histogram into the state (hierarchical rollups).
CREATE OR REPLACE FUNCTION llmmeter_hist_state_add_pairs(state bigint[], keys integer[], counts bigint[])
RETURNS bigint[] LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
DECLARE
    k integer;
    c bigint;
BEGIN
    FOR k, c IN SELECT * FROM unnest(keys, counts) LOOP
        IF k IS NOT NULL AND c IS NOT NULL THEN
            state[k] := coalesce(state[k], 0) + c;
        END IF;
    END LOOP;
    RETURN state;
END
$$;

-- Combines two partial states (parallel and chunk-wise partial aggregation).
CREATE OR REPLACE FUNCTION llmmeter_hist_state_combine(a bigint[], b bigint[])
RETURNS bigint[] LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
BEGIN
    IF cardinality(b) > 0 THEN
        FOR k IN array_lower(b, 1) .. array_upper(b, 1) LOOP
            IF b[k] IS NOT NULL THEN
                a[k] := coalesce(a[k], 0) + b[k];
            END IF;
        END LOOP;
    END IF;
    RETURN a;
END
$$;

CREATE OR REPLACE FUNCTION llmmeter_hist_state_keys(state bigint[]) RETURNS integer[]
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT coalesce(array_agg(k ORDER BY k), '{}')
    FROM generate_subscripts(state, 1) AS k WHERE state[k] IS NOT NULL
$$;

CREATE OR REPLACE FUNCTION llmmeter_hist_state_counts(state bigint[]) RETURNS bigint[]
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT coalesce(array_agg(state[k] ORDER BY k), '{}')
    FROM generate_subscripts(state, 1) AS k WHERE state[k] IS NOT NULL
$$;

-- From raw values (microseconds).
CREATE OR REPLACE AGGREGATE llmmeter_hist_keys_agg(bigint) (
    SFUNC = llmmeter_hist_state_add_value, STYPE = bigint[], INITCOND = '{}',
    COMBINEFUNC = llmmeter_hist_state_combine, FINALFUNC = llmmeter_hist_state_keys,
    PARALLEL = SAFE
);
CREATE OR REPLACE AGGREGATE llmmeter_hist_counts_agg(bigint) (
    SFUNC = llmmeter_hist_state_add_value, STYPE = bigint[], INITCOND = '{}',
    COMBINEFUNC = llmmeter_hist_state_combine, FINALFUNC = llmmeter_hist_state_counts,
    PARALLEL = SAFE
);

-- From stored (keys, counts) histograms: the sum of the histograms.
CREATE OR REPLACE AGGREGATE llmmeter_hist_merge_keys_agg(integer[], bigint[]) (
    SFUNC = llmmeter_hist_state_add_pairs, STYPE = bigint[], INITCOND = '{}',
    COMBINEFUNC = llmmeter_hist_state_combine, FINALFUNC = llmmeter_hist_state_keys,
    PARALLEL = SAFE
);
CREATE OR REPLACE AGGREGATE llmmeter_hist_merge_counts_agg(integer[], bigint[]) (
    SFUNC = llmmeter_hist_state_add_pairs, STYPE = bigint[], INITCOND = '{}',
    COMBINEFUNC = llmmeter_hist_state_combine, FINALFUNC = llmmeter_hist_state_counts,
    PARALLEL = SAFE
);

-- Rollups -------------------------------------------------------------------
--
-- Measures are rollups.MEASURES: SUM(raw_expr) in usage_1m, SUM(column) of the
-- level below in usage_1h and usage_1d, each cast to the PostgreSQL rollup
-- column's type (sum(bigint) is numeric). time_bucket's default origin
-- (2000-01-03 UTC) is 2 days after the PostgreSQL flavour's date_bin origin
-- (2000-01-01 UTC), so minute, hour and day buckets are the same UTC-aligned
-- buckets. GROUP BY repeats the time_bucket expression: in usage_1h and
-- usage_1d a bare "GROUP BY bucket" would mean the INPUT column bucket.

CREATE MATERIALIZED VIEW usage_1m
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT time_bucket(INTERVAL '1 minute', start_time) AS bucket,
       model, model_alias, provider, user_name, team, account, status_code, error_type, call_type,
       sum(1)::bigint                                                         AS request_count,
       sum(CASE WHEN llmmeter_is_error(status_code) THEN 1 ELSE 0 END)::bigint AS error_count,
       sum(CASE WHEN streaming THEN 1 ELSE 0 END)::bigint                     AS streaming_count,
       sum(CASE WHEN cache_hit THEN 1 ELSE 0 END)::bigint                     AS cache_hit_count,
       sum(retries)::bigint                                                   AS retries,
       sum(input_tokens)::bigint                                              AS input_tokens,
       sum(output_tokens)::bigint                                             AS output_tokens,
       sum(cache_read_tokens)::bigint                                         AS cache_read_tokens,
       sum(cache_write_tokens)::bigint                                        AS cache_write_tokens,
       sum(reasoning_tokens)::bigint                                          AS reasoning_tokens,
       sum(images)::bigint                                                    AS images,
       sum(audio_seconds)::numeric                                            AS audio_seconds,
       sum(video_seconds)::numeric                                            AS video_seconds,
       sum(characters)::bigint                                                AS characters,
       sum(cost)::numeric                                                     AS cost,
       sum(latency_us)::bigint                                                AS latency_us_sum,
       sum(coalesce(ttft_us, 0))::bigint                                      AS ttft_us_sum,
       sum(CASE WHEN ttft_us IS NULL THEN 0 ELSE 1 END)::bigint               AS ttft_count,
       sum(coalesce(itl_us, 0))::double precision                             AS itl_us_sum,
       sum(CASE WHEN itl_us IS NULL THEN 0 ELSE 1 END)::bigint                AS itl_count,
       sum(coalesce(tpot_us, 0))::double precision                            AS tpot_us_sum,
       sum(CASE WHEN tpot_us IS NULL THEN 0 ELSE 1 END)::bigint               AS tpot_count,
       llmmeter_hist_keys_agg(latency_us)                                     AS lat_keys,
       llmmeter_hist_counts_agg(latency_us)                                   AS lat_counts,
       llmmeter_hist_keys_agg(ttft_us)                                        AS ttft_keys,
       llmmeter_hist_counts_agg(ttft_us)                                      AS ttft_counts
FROM usage_records
GROUP BY time_bucket(INTERVAL '1 minute', start_time),
         model, model_alias, provider, user_name, team, account, status_code, error_type, call_type
WITH NO DATA;

CREATE MATERIALIZED VIEW usage_1h
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT time_bucket(INTERVAL '1 hour', bucket) AS bucket,
       model, model_alias, provider, user_name, team, account, status_code, error_type, call_type,
       sum(request_count)::bigint                           AS request_count,
       sum(error_count)::bigint                             AS error_count,
       sum(streaming_count)::bigint                         AS streaming_count,
       sum(cache_hit_count)::bigint                         AS cache_hit_count,
       sum(retries)::bigint                                 AS retries,
       sum(input_tokens)::bigint                            AS input_tokens,
       sum(output_tokens)::bigint                           AS output_tokens,
       sum(cache_read_tokens)::bigint                       AS cache_read_tokens,
       sum(cache_write_tokens)::bigint                      AS cache_write_tokens,
       sum(reasoning_tokens)::bigint                        AS reasoning_tokens,
       sum(images)::bigint                                  AS images,
       sum(audio_seconds)::numeric                          AS audio_seconds,
       sum(video_seconds)::numeric                          AS video_seconds,
       sum(characters)::bigint                              AS characters,
       sum(cost)::numeric                                   AS cost,
       sum(latency_us_sum)::bigint                          AS latency_us_sum,
       sum(ttft_us_sum)::bigint                             AS ttft_us_sum,
       sum(ttft_count)::bigint                              AS ttft_count,
       sum(itl_us_sum)::double precision                    AS itl_us_sum,
       sum(itl_count)::bigint                               AS itl_count,
       sum(tpot_us_sum)::double precision                   AS tpot_us_sum,
       sum(tpot_count)::bigint                              AS tpot_count,
       llmmeter_hist_merge_keys_agg(lat_keys, lat_counts)   AS lat_keys,
       llmmeter_hist_merge_counts_agg(lat_keys, lat_counts) AS lat_counts,
       llmmeter_hist_merge_keys_agg(ttft_keys, ttft_counts)   AS ttft_keys,
       llmmeter_hist_merge_counts_agg(ttft_keys, ttft_counts) AS ttft_counts
FROM usage_1m
GROUP BY time_bucket(INTERVAL '1 hour', bucket),
         model, model_alias, provider, user_name, team, account, status_code, error_type, call_type
WITH NO DATA;

CREATE MATERIALIZED VIEW usage_1d
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT time_bucket(INTERVAL '1 day', bucket) AS bucket,
       model, model_alias, provider, user_name, team, account, status_code, error_type, call_type,
       sum(request_count)::bigint                           AS request_count,
       sum(error_count)::bigint                             AS error_count,
       sum(streaming_count)::bigint                         AS streaming_count,
       sum(cache_hit_count)::bigint                         AS cache_hit_count,
       sum(retries)::bigint                                 AS retries,
       sum(input_tokens)::bigint                            AS input_tokens,
       sum(output_tokens)::bigint                           AS output_tokens,
       sum(cache_read_tokens)::bigint                       AS cache_read_tokens,
       sum(cache_write_tokens)::bigint                      AS cache_write_tokens,
       sum(reasoning_tokens)::bigint                        AS reasoning_tokens,
       sum(images)::bigint                                  AS images,
       sum(audio_seconds)::numeric                          AS audio_seconds,
       sum(video_seconds)::numeric                          AS video_seconds,
       sum(characters)::bigint                              AS characters,
       sum(cost)::numeric                                   AS cost,
       sum(latency_us_sum)::bigint                          AS latency_us_sum,
       sum(ttft_us_sum)::bigint                             AS ttft_us_sum,
       sum(ttft_count)::bigint                              AS ttft_count,
       sum(itl_us_sum)::double precision                    AS itl_us_sum,
       sum(itl_count)::bigint                               AS itl_count,
       sum(tpot_us_sum)::double precision                   AS tpot_us_sum,
       sum(tpot_count)::bigint                              AS tpot_count,
       llmmeter_hist_merge_keys_agg(lat_keys, lat_counts)   AS lat_keys,
       llmmeter_hist_merge_counts_agg(lat_keys, lat_counts) AS lat_counts,
       llmmeter_hist_merge_keys_agg(ttft_keys, ttft_counts)   AS ttft_keys,
       llmmeter_hist_merge_counts_agg(ttft_keys, ttft_counts) AS ttft_counts
FROM usage_1h
GROUP BY time_bucket(INTERVAL '1 day', bucket),
         model, model_alias, provider, user_name, team, account, status_code, error_type, call_type
WITH NO DATA;

-- Refresh: usage_1m re-materialises the last 14 days (the raw retention), so
-- late records still stored raw reach it. A refresh window only covers whole
-- buckets inside it, so each level above looks back one of its own buckets
-- further plus a margin, to cover every bucket a late record can change below.
SELECT add_continuous_aggregate_policy('usage_1m',
    start_offset => INTERVAL '14 days', end_offset => INTERVAL '1 minute',
    schedule_interval => INTERVAL '1 minute');
SELECT add_continuous_aggregate_policy('usage_1h',
    start_offset => INTERVAL '15 days', end_offset => INTERVAL '1 hour',
    schedule_interval => INTERVAL '5 minutes');
SELECT add_continuous_aggregate_policy('usage_1d',
    start_offset => INTERVAL '16 days', end_offset => INTERVAL '1 day',
    schedule_interval => INTERVAL '1 hour');

-- Retention: whole chunks past the horizon are dropped by background jobs.
-- The defaults equal the ingest service's (raw and payloads 14 days, rollups
-- 400 days); llmmeter_apply_retention below applies its configured horizons.
SELECT add_retention_policy('usage_records', drop_after => INTERVAL '14 days');
SELECT add_retention_policy('usage_payloads', drop_after => INTERVAL '14 days');
SELECT add_retention_policy('usage_1m', drop_after => INTERVAL '400 days');
SELECT add_retention_policy('usage_1h', drop_after => INTERVAL '400 days');
SELECT add_retention_policy('usage_1d', drop_after => INTERVAL '400 days');

-- Same signatures as the PostgreSQL flavour (the ingest service calls both) --

-- Hypertables create their chunks on insert: nothing to prepare.
CREATE OR REPLACE FUNCTION llmmeter_ensure_partitions(from_ts timestamptz, to_ts timestamptz)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    NULL;
END
$$;

-- Drops the chunks wholly older than each horizon; returns their names.
CREATE OR REPLACE FUNCTION llmmeter_apply_retention(raw_keep interval, payload_keep interval,
                                                    rollup_keep interval)
RETURNS SETOF text LANGUAGE plpgsql AS $$
BEGIN
    RETURN QUERY SELECT drop_chunks('usage_records', older_than => raw_keep);
    RETURN QUERY SELECT drop_chunks('usage_payloads', older_than => payload_keep);
    RETURN QUERY SELECT drop_chunks('usage_1m', older_than => rollup_keep);
    RETURN QUERY SELECT drop_chunks('usage_1h', older_than => rollup_keep);
    RETURN QUERY SELECT drop_chunks('usage_1d', older_than => rollup_keep);
END
$$;
