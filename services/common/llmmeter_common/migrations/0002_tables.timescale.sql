-- TimescaleDB (2.13+): hypertables instead of range partitions, and the
-- rollups usage_1m / usage_1h / usage_1d as views over (hierarchical)
-- continuous aggregates instead of tables the ingest service upserts. Relation and column
-- names, column order and column types match 0002_tables.postgres.sql, so the
-- query code reads either flavour the same way (tests/test_schema_flavor_parity.py
-- checks this). The whole file runs in one transaction (see migrate.py), which
-- is why every continuous aggregate is created WITH NO DATA: the refresh
-- policies materialise them, and materialized_only = false makes queries add
-- the not yet materialised buckets from the layer below in the meantime.

-- Raw rows ------------------------------------------------------------------

CREATE TABLE usage_records (
    start_time          timestamptz NOT NULL,
    request_id          text COLLATE "C" NOT NULL,
    end_time            timestamptz NOT NULL,
    latency_us          bigint      NOT NULL,
    ttft_us             bigint,
    itl_us              double precision,
    tpot_us             double precision,
    streaming           boolean     NOT NULL DEFAULT false,
    output_chunks       bigint      NOT NULL DEFAULT 0,
    status_code         integer     NOT NULL,
    error_type          text COLLATE "C" NOT NULL DEFAULT '',
    error_message       text        NOT NULL DEFAULT '',
    model               text COLLATE "C" NOT NULL,
    response_model      text        NOT NULL DEFAULT '',
    model_alias         text COLLATE "C" NOT NULL DEFAULT '',
    provider            text COLLATE "C" NOT NULL DEFAULT '',
    call_type           text COLLATE "C" NOT NULL DEFAULT '',
    model_id            text        NOT NULL DEFAULT '',
    api_base            text        NOT NULL DEFAULT '',
    user_name           text COLLATE "C" NOT NULL DEFAULT '',
    team                text COLLATE "C" NOT NULL DEFAULT '',
    account             text COLLATE "C" NOT NULL DEFAULT '',
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
    request_id  text COLLATE "C" NOT NULL,
    request     jsonb,
    response    jsonb,
    PRIMARY KEY (start_time, request_id)
);

-- The PostgreSQL flavour's queue of rows not yet in the rollups. Continuous
-- aggregates need none, so here it stays empty; it exists so that queries read
-- the same relations on both flavours.
CREATE TABLE usage_rollup_pending (
    start_time          timestamptz NOT NULL,
    model               text COLLATE "C" NOT NULL,
    model_alias         text COLLATE "C" NOT NULL,
    provider            text COLLATE "C" NOT NULL,
    user_name           text COLLATE "C" NOT NULL,
    team                text COLLATE "C" NOT NULL,
    account             text COLLATE "C" NOT NULL,
    status_code         integer     NOT NULL,
    error_type          text COLLATE "C" NOT NULL,
    call_type           text COLLATE "C" NOT NULL,
    streaming           boolean     NOT NULL,
    cache_hit           boolean     NOT NULL,
    retries             integer     NOT NULL,
    input_tokens        bigint      NOT NULL,
    output_tokens       bigint      NOT NULL,
    cache_read_tokens   bigint      NOT NULL,
    cache_write_tokens  bigint      NOT NULL,
    reasoning_tokens    bigint      NOT NULL,
    images              bigint      NOT NULL,
    audio_seconds       numeric     NOT NULL,
    video_seconds       numeric     NOT NULL,
    characters          bigint      NOT NULL,
    cost                numeric     NOT NULL,
    latency_us          bigint      NOT NULL,
    ttft_us             bigint,
    itl_us              double precision,
    tpot_us             double precision
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
-- Each rollup holds the grouping sets of rollups.GROUPING_SETS (all
-- dimensions, each alone, none), told apart by dims_mask (see
-- 0002_tables.postgres.sql). Continuous aggregates cannot GROUP BY GROUPING
-- SETS (timescale/timescaledb#2679), so each set has its own continuous
-- aggregate per level, grouped by the bucket and the dimensions the set keeps
-- only, hierarchical per set: usage_1m_s<mask> reads usage_records,
-- usage_1h_s<mask> reads usage_1m_s<mask>, usage_1d_s<mask> reads
-- usage_1h_s<mask>. usage_1m, usage_1h and usage_1d are plain views: the
-- UNION ALL of their level's aggregates, adding dims_mask and the dropped
-- dimensions ('' or 0) as constants in rollup_columns() order. Being
-- constants, a `WHERE dims_mask = <constant>` lets the planner skip every
-- other aggregate.
--
-- Measures are rollups.MEASURES: SUM(raw_expr) in usage_1m_s*, SUM(column) of
-- the level below in usage_1h_s* and usage_1d_s*, each cast to the PostgreSQL
-- rollup column's type (sum(bigint) is numeric). time_bucket's default origin
-- (2000-01-03 UTC) is 2 days after the PostgreSQL flavour's date_bin origin
-- (2000-01-01 UTC), so minute, hour and day buckets are the same UTC-aligned
-- buckets. GROUP BY repeats the time_bucket expression: above the first
-- level a bare "GROUP BY bucket" would mean the INPUT column bucket.
--
-- Refresh: usage_1m_s* re-materialise the last 14 days (the raw retention),
-- so late records still stored raw reach them. A refresh window only covers
-- whole buckets inside it, so each level above looks back one of its own
-- buckets further plus a margin, to cover every bucket a late record can
-- change below.
--
-- llmmeter_rollup_ddl() writes all these statements, policies included; the
-- DO block below runs them. tests/test_schema_timescale_rollups.py checks the functions
-- against rollups.py and runs the generated queries on plain PostgreSQL.

-- rollups.DIMENSIONS, in order.
CREATE OR REPLACE FUNCTION llmmeter_rollup_dims() RETURNS text[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT ARRAY['model', 'model_alias', 'provider', 'user_name', 'team', 'account',
                 'status_code', 'error_type', 'call_type']
$$;

-- The dims_mask of each stored grouping set, in rollups.GROUPING_SETS order:
-- all dimensions, each alone, none. Dimension i (1-based) of n is bit n - i.
CREATE OR REPLACE FUNCTION llmmeter_rollup_masks() RETURNS SETOF integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT m FROM (
        SELECT 0 AS o, (1 << n) - 1 AS m FROM cardinality(llmmeter_rollup_dims()) AS n
        UNION ALL
        SELECT i, 1 << (n - i) FROM cardinality(llmmeter_rollup_dims()) AS n, generate_series(1, n) AS i
        UNION ALL
        SELECT n + 1, 0 FROM cardinality(llmmeter_rollup_dims()) AS n
    ) AS s ORDER BY o
$$;

-- The continuous aggregates, their policies and the union views, in the order
-- they must run (each level reads the one below).
CREATE FUNCTION llmmeter_rollup_ddl() RETURNS SETOF text LANGUAGE plpgsql AS $$
DECLARE
    dims constant text[] := llmmeter_rollup_dims();
    -- rollups.MEASURES: column, expression over a raw row, PostgreSQL rollup column type
    measures constant text[] := ARRAY[
        ['request_count',      '1',                                                          'bigint'],
        ['error_count',        'CASE WHEN llmmeter_is_error(status_code) THEN 1 ELSE 0 END', 'bigint'],
        ['streaming_count',    'CASE WHEN streaming THEN 1 ELSE 0 END',                      'bigint'],
        ['cache_hit_count',    'CASE WHEN cache_hit THEN 1 ELSE 0 END',                      'bigint'],
        ['retries',            'retries',                                                    'bigint'],
        ['input_tokens',       'input_tokens',                                               'bigint'],
        ['output_tokens',      'output_tokens',                                              'bigint'],
        ['cache_read_tokens',  'cache_read_tokens',                                          'bigint'],
        ['cache_write_tokens', 'cache_write_tokens',                                         'bigint'],
        ['reasoning_tokens',   'reasoning_tokens',                                           'bigint'],
        ['images',             'images',                                                     'bigint'],
        ['audio_seconds',      'audio_seconds',                                              'numeric'],
        ['video_seconds',      'video_seconds',                                              'numeric'],
        ['characters',         'characters',                                                 'bigint'],
        ['cost',               'cost',                                                       'numeric'],
        ['latency_us_sum',     'latency_us',                                                 'bigint'],
        ['ttft_us_sum',        'coalesce(ttft_us, 0)',                                       'bigint'],
        ['ttft_count',         'CASE WHEN ttft_us IS NULL THEN 0 ELSE 1 END',                'bigint'],
        ['itl_us_sum',         'coalesce(itl_us, 0)',                                        'double precision'],
        ['itl_count',          'CASE WHEN itl_us IS NULL THEN 0 ELSE 1 END',                 'bigint'],
        ['tpot_us_sum',        'coalesce(tpot_us, 0)',                                       'double precision'],
        ['tpot_count',         'CASE WHEN tpot_us IS NULL THEN 0 ELSE 1 END',                'bigint']];
    -- rollups.HISTOGRAMS: column prefix, raw column
    hists constant text[] := ARRAY[['lat', 'latency_us'], ['ttft', 'ttft_us']];
    -- levels: n, rollup, bucket width, the rollup it reads per set (NULL: usage_records),
    -- its time column, refresh window start and end offsets, refresh interval
    lv record;
    mask integer;
    agg text;        -- name of one continuous aggregate
    bucket text;     -- its time_bucket expression
    part text;
    kept text;       -- ', ' before each dimension the set keeps
    outs text;       -- select list of measures and histograms
    names text;      -- their column names, for the union view
    dim_cols text;   -- the union view's dims_mask and dimensions
    branches text[];
BEGIN
    FOR lv IN SELECT * FROM (VALUES
        (1, 'usage_1m', '1 minute', NULL,       'start_time', '14 days', '1 minute', '1 minute'),
        (2, 'usage_1h', '1 hour',   'usage_1m', 'bucket',     '15 days', '1 hour',   '5 minutes'),
        (3, 'usage_1d', '1 day',    'usage_1h', 'bucket',     '16 days', '1 day',    '1 hour')
    ) AS l(n, rollup, width, below, time_col, refresh_start, refresh_end, refresh_every) ORDER BY n
    LOOP
        outs := '';
        names := '';
        FOR i IN 1 .. array_length(measures, 1) LOOP
            outs := outs || format(', sum(%s)::%s AS %I',
                CASE lv.n WHEN 1 THEN measures[i][2] ELSE quote_ident(measures[i][1]) END,
                measures[i][3], measures[i][1]);
            names := names || ', ' || quote_ident(measures[i][1]);
        END LOOP;
        FOR i IN 1 .. array_length(hists, 1) LOOP
            FOREACH part IN ARRAY ARRAY['keys', 'counts'] LOOP
                outs := outs || CASE lv.n
                    WHEN 1 THEN format(', llmmeter_hist_%s_agg(%I)', part, hists[i][2])
                    ELSE format(', llmmeter_hist_merge_%s_agg(%I, %I)', part,
                                hists[i][1] || '_keys', hists[i][1] || '_counts')
                    END || format(' AS %I', hists[i][1] || '_' || part);
                names := names || format(', %I', hists[i][1] || '_' || part);
            END LOOP;
        END LOOP;
        branches := '{}';
        FOR mask IN SELECT llmmeter_rollup_masks() LOOP
            agg := lv.rollup || '_s' || mask;
            bucket := format('time_bucket(INTERVAL %L, %I)', lv.width, lv.time_col);
            kept := '';
            dim_cols := mask || '::smallint AS dims_mask';
            FOR i IN 1 .. cardinality(dims) LOOP
                IF mask & (1 << (cardinality(dims) - i)) <> 0 THEN
                    kept := kept || ', ' || quote_ident(dims[i]);
                    dim_cols := dim_cols || ', ' || quote_ident(dims[i]);
                ELSE
                    dim_cols := dim_cols || format(', %s AS %I',
                        CASE dims[i] WHEN 'status_code' THEN '0' ELSE '''''::text' END, dims[i]);
                END IF;
            END LOOP;
            RETURN NEXT format('CREATE MATERIALIZED VIEW %I WITH (timescaledb.continuous, '
                               'timescaledb.materialized_only = false) AS SELECT %s AS bucket%s%s '
                               'FROM %I GROUP BY %s%s WITH NO DATA',
                               agg, bucket, kept, outs,
                               coalesce(lv.below || '_s' || mask, 'usage_records'),
                               bucket, kept);
            RETURN NEXT format('SELECT add_continuous_aggregate_policy(%L, start_offset => INTERVAL %L, '
                               'end_offset => INTERVAL %L, schedule_interval => INTERVAL %L)',
                               agg, lv.refresh_start, lv.refresh_end, lv.refresh_every);
            RETURN NEXT format('SELECT add_retention_policy(%L, drop_after => INTERVAL %L)', agg, '400 days');
            branches := branches || format('SELECT bucket, %s%s FROM %I', dim_cols, names, agg);
        END LOOP;
        RETURN NEXT format('CREATE VIEW %I AS %s', lv.rollup, array_to_string(branches, ' UNION ALL '));
    END LOOP;
END
$$;

DO $$
DECLARE
    stmt text;
BEGIN
    FOR stmt IN SELECT llmmeter_rollup_ddl() LOOP
        EXECUTE stmt;
    END LOOP;
END
$$;

DROP FUNCTION llmmeter_rollup_ddl();

-- Retention: whole chunks past the horizon are dropped by background jobs.
-- The defaults equal the ingest service's (raw and payloads 14 days, rollups
-- 400 days, each continuous aggregate's policy comes from
-- llmmeter_rollup_ddl() above); llmmeter_apply_retention below applies its
-- configured horizons.
SELECT add_retention_policy('usage_records', drop_after => INTERVAL '14 days');
SELECT add_retention_policy('usage_payloads', drop_after => INTERVAL '14 days');

-- Same signatures as the PostgreSQL flavour (the ingest service calls both) --

-- Hypertables create their chunks on insert: nothing to prepare.
CREATE OR REPLACE FUNCTION llmmeter_ensure_partitions(from_ts timestamptz, to_ts timestamptz)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    NULL;
END
$$;

-- Drops the chunks wholly older than each horizon, in the raw hypertables and
-- every continuous aggregate of every rollup; returns their names.
CREATE OR REPLACE FUNCTION llmmeter_apply_retention(raw_keep interval, payload_keep interval,
                                                    rollup_keep interval)
RETURNS SETOF text LANGUAGE plpgsql AS $$
DECLARE
    agg text;
BEGIN
    RETURN QUERY SELECT drop_chunks('usage_records', older_than => raw_keep);
    RETURN QUERY SELECT drop_chunks('usage_payloads', older_than => payload_keep);
    FOR agg IN SELECT r || '_s' || m
               FROM unnest(ARRAY['usage_1m', 'usage_1h', 'usage_1d']) AS r, llmmeter_rollup_masks() AS m
    LOOP
        RETURN QUERY SELECT drop_chunks(agg::regclass, older_than => rollup_keep);
    END LOOP;
END
$$;
