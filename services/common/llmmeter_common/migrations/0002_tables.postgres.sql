-- Stock PostgreSQL: native range partitioning instead of hypertables, and
-- rollup tables that the ingest service keeps exactly equal to aggregating the
-- raw rows (it upserts each batch's newly stored rows into them in the same
-- transaction, so duplicates never count and late records land in their own
-- buckets). Relation and column names match 0002_tables.timescale.sql.
--
-- Each rollup holds several grouping sets of the same data, told apart by
-- `dims_mask` (bit 8 - i set when dimension i of rollups.DIMENSIONS is kept;
-- the others hold '' or 0): all dimensions, each dimension alone, and none.
-- Sums could come from the all-dimensions rows alone, but merging latency
-- histograms over thousands of such rows is too slow for long windows; the
-- narrow sets answer "p95 by model" or "p95 overall" from a few rows.

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
) PARTITION BY RANGE (start_time);

CREATE INDEX usage_records_request_id_idx ON usage_records (request_id);

CREATE TABLE usage_payloads (
    start_time  timestamptz NOT NULL,
    request_id  text COLLATE "C" NOT NULL,
    request     jsonb,
    response    jsonb,
    PRIMARY KEY (start_time, request_id)
) PARTITION BY RANGE (start_time);

-- Rows stored but not yet added to the rollups (see rollups.py). Queries read
-- it beside the rollups, so totals stay exact while the rollup worker catches up.
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

CREATE TABLE usage_1m (
    bucket             timestamptz NOT NULL,
    dims_mask          smallint NOT NULL,
    model              text COLLATE "C" NOT NULL,
    model_alias        text COLLATE "C" NOT NULL,
    provider           text COLLATE "C" NOT NULL,
    user_name          text COLLATE "C" NOT NULL,
    team               text COLLATE "C" NOT NULL,
    account            text COLLATE "C" NOT NULL,
    status_code        integer NOT NULL,
    error_type         text COLLATE "C" NOT NULL,
    call_type          text COLLATE "C" NOT NULL,
    request_count      bigint  NOT NULL,
    error_count        bigint  NOT NULL,
    streaming_count    bigint  NOT NULL,
    cache_hit_count    bigint  NOT NULL,
    retries            bigint  NOT NULL,
    input_tokens       bigint  NOT NULL,
    output_tokens      bigint  NOT NULL,
    cache_read_tokens  bigint  NOT NULL,
    cache_write_tokens bigint  NOT NULL,
    reasoning_tokens   bigint  NOT NULL,
    images             bigint  NOT NULL,
    audio_seconds      numeric NOT NULL,
    video_seconds      numeric NOT NULL,
    characters         bigint  NOT NULL,
    cost               numeric NOT NULL,
    latency_us_sum     bigint  NOT NULL,
    ttft_us_sum        bigint  NOT NULL,
    ttft_count         bigint  NOT NULL,
    itl_us_sum         double precision NOT NULL,
    itl_count          bigint  NOT NULL,
    tpot_us_sum        double precision NOT NULL,
    tpot_count         bigint  NOT NULL,
    lat_keys           integer[] NOT NULL,
    lat_counts         bigint[]  NOT NULL,
    ttft_keys          integer[] NOT NULL,
    ttft_counts        bigint[]  NOT NULL,
    -- dims_mask first: a query reads one grouping set over a range of buckets.
    PRIMARY KEY (dims_mask, bucket, model, model_alias, provider, user_name, team, account,
                 status_code, error_type, call_type)
) PARTITION BY RANGE (bucket);

CREATE TABLE usage_1h (LIKE usage_1m INCLUDING ALL) PARTITION BY RANGE (bucket);
CREATE TABLE usage_1d (LIKE usage_1m INCLUDING ALL) PARTITION BY RANGE (bucket);

-- Partitions: raw tables by UTC day, rollups by UTC month. Created ahead of
-- the data by the ingest service; an advisory lock makes concurrent callers
-- (several ingest replicas) safe.
CREATE OR REPLACE FUNCTION llmmeter_ensure_partitions(from_ts timestamptz, to_ts timestamptz)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    spec record;
    lo timestamptz;
    hi timestamptz;
    part text;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('llmmeter_partitions'));
    FOR spec IN SELECT * FROM (VALUES
        ('usage_records', 'day'), ('usage_payloads', 'day'),
        ('usage_1m', 'month'), ('usage_1h', 'month'), ('usage_1d', 'month')) AS s(parent, step)
    LOOP
        lo := date_trunc(spec.step, from_ts, 'UTC');
        WHILE lo <= to_ts LOOP
            hi := (lo AT TIME ZONE 'UTC' + ('1 ' || spec.step)::interval) AT TIME ZONE 'UTC';
            part := spec.parent || '_p' || to_char(lo AT TIME ZONE 'UTC',
                        CASE spec.step WHEN 'day' THEN 'YYYYMMDD' ELSE 'YYYYMM' END);
            IF to_regclass(part) IS NULL THEN
                EXECUTE format('CREATE TABLE %I PARTITION OF %I FOR VALUES FROM (%L) TO (%L)',
                               part, spec.parent, lo, hi);
            END IF;
            lo := hi;
        END LOOP;
    END LOOP;
END
$$;

-- Retention: whole partitions whose upper bound is older than the horizon are
-- dropped (never DELETE). Returns the names dropped.
CREATE OR REPLACE FUNCTION llmmeter_apply_retention(raw_keep interval, payload_keep interval,
                                                    rollup_keep interval)
RETURNS SETOF text LANGUAGE plpgsql AS $$
DECLARE
    p record;
    keep interval;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('llmmeter_partitions'));
    FOR p IN
        SELECT c.relname AS child, par.relname AS parent,
               (regexp_match(pg_get_expr(c.relpartbound, c.oid), 'TO \(''([^'']+)''\)'))[1]::timestamptz AS upper
        FROM pg_inherits i
        JOIN pg_class c ON c.oid = i.inhrelid
        JOIN pg_class par ON par.oid = i.inhparent
        WHERE par.relname IN ('usage_records', 'usage_payloads', 'usage_1m', 'usage_1h', 'usage_1d')
    LOOP
        keep := CASE p.parent WHEN 'usage_records' THEN raw_keep
                              WHEN 'usage_payloads' THEN payload_keep
                              ELSE rollup_keep END;
        IF p.upper <= now() - keep THEN
            EXECUTE format('DROP TABLE %I', p.child);
            RETURN NEXT p.child;
        END IF;
    END LOOP;
END
$$;
