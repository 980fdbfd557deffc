-- Rollups that cost less than what they summarise (issue 14), TimescaleDB
-- flavour: the same shape as 0014_rollup_sets.postgres.sql, from continuous
-- aggregates.
--
-- Before: 33 continuous aggregates usage_{1m,1h,1d}_s<mask>, every level
-- keeping all 11 grouping sets (0002), each histogram as integer[] keys and
-- bigint[] counts, read through union views (usage_1m_arrays, ...) and views
-- converting them to 0005's pairs plus 0007's NULL packs. Now:
--
-- * Grouping sets per level (rollups.ROLLUPS): the minute level keeps none,
--   model and error_type; the hour level none, each dimension alone and all
--   but the user (dims_mask 479); the day level none, each alone and all
--   (511). One continuous aggregate per level and set, 25 in all (3 + 11 + 11).
-- * Histograms stored as they are read, in 0013's format (bytea of 4-byte
--   elements key << 19 | count, each key once, in key order), built by two
--   aggregates: llmmeter_hist_agg(bigint) from raw microsecond values,
--   llmmeter_hist_merge_agg(bytea) from stored histograms.
-- * An aggregate is hierarchical where the level below keeps the same set
--   (usage_1h_s256 reads usage_1m_s256, usage_1d_s256 reads usage_1h_s256);
--   otherwise it reads usage_records (usage_1h_s128, usage_1h_s479,
--   usage_1d_s511, ...: the level below has no such set).
-- * usage_1m / usage_1h / usage_1d: UNION ALL views of their level's
--   aggregates (dims_mask and the dimensions a set drops as constants, so a
--   `WHERE dims_mask = <constant>` reads one aggregate only) and of the
--   level's history table (below), with exactly rollups.rollup_columns(),
--   typed as the PostgreSQL flavour's tables (lat_hist, ttft_hist bytea).
-- * Refresh policies as before (each level looks back over the window of the
--   level below, plus one of its own buckets), but on fixed schedules with
--   staggered initial_start (each job at its own second, the hour and day
--   jobs spread over their interval), so the 25 jobs do not all start at
--   the same second and compete for background workers.
-- * Retention per level: llmmeter_apply_retention(raw_keep, payload_keep,
--   minute_keep, rollup_keep), as on the PostgreSQL flavour.
--
-- Existing rollup history. Continuous aggregates cannot change their query,
-- so the new ones are materialised by their refresh policies from the raw
-- rows still kept, and the old ones are dropped. What the old aggregates
-- hold from before the raw rows is carried over: each level gets a
-- hypertable usage_1m_history (_1h_, _1d_), same columns as the views, into
-- which this migration copies the old buckets older than a cutoff, converted
-- to 0013's format, for the sets the level now keeps (the hour level's
-- all-but-user set summed from its old all-dimensions rows). The new
-- aggregates count only raw rows from the cutoff on (a constant WHERE in
-- their definition), so no record is counted twice. The cutoff is a UTC
-- midnight: the day of the oldest raw row (every raw row from there on is
-- still stored: retention drops whole day chunks, oldest first), but no
-- earlier than 13 days ago (so the first refresh of every level covers all
-- of it); today's midnight when no raw row is left. A record arriving after
-- the migration with a start time before the cutoff (at most 14 days late)
-- is stored raw but not counted in the rollups. When the old aggregates
-- hold nothing before the cutoff (a new database), nothing is copied and
-- the new aggregates have no such WHERE. The history tables are then empty;
-- retention empties them in time in any case.
--
-- Retention and the hierarchy. A late raw record makes its minute bucket
-- refresh (within the minute policies' 14 days), which makes the hour
-- bucket above it refresh from ALL its minutes, then the day bucket from all
-- its hours (within the hour policies' 15 days for the hour aggregates that
-- read raw rows). Were a minute or hour chunk gone by then, the hour or day
-- would be rewritten without it. So llmmeter_apply_retention keeps the
-- minute level at least least(raw_keep, 14 days) + 1 day and the hour level
-- at least least(raw_keep, 15 days) + 2 days, whatever minute_keep and
-- rollup_keep ask for (on this flavour only; the defaults, 16 and 400 days,
-- ask for more). Each level's chunks span what the PostgreSQL flavour's
-- partitions span (a day for minutes, 30 days for hours and days; TimescaleDB
-- would make them 10 days), so retention drops them as closely.

-- Background jobs run with search_path = pg_catalog (0011): every function a
-- refresh reaches here calls only pg_catalog functions and operators.

-- Histogram aggregates -----------------------------------------------------
--
-- From raw values: the transition state is 0002's, a dense bigint[]
-- subscripted by the key (0..~4400), element = count, NULL = empty bucket
-- (llmmeter_hist_state_add_value, as 0011 left it, and
-- llmmeter_hist_state_combine stay). The final function writes each
-- non-empty key once, in key order, a count above 524287 over several
-- elements (llmmeter_hist_elems of 0013, spelt out: it runs under the
-- background jobs' search_path), walking the array once; no input gives ''.
-- (PostgreSQL copies a PL/pgSQL aggregate's array state on every row, so a
-- row costs in proportion to the span of keys in its group: about 7 us for
-- latencies spread over 1 us to 1 s, 1 us for a narrow spread. This is what
-- the aggregates before 0014 cost per row too.)
--
-- From stored histograms: concatenation is their sum (0013), so the state is
-- the histograms concatenated (byteacat, in C) and the final function is
-- llmmeter_hist_fold (0013, pg_catalog only): about three times faster than
-- adding element by element in PL/pgSQL. A hierarchical aggregate's group is
-- the 60 minutes of an hour or the 24 hours of a day of one set value.

CREATE FUNCTION llmmeter_hist_state_elems(state bigint[]) RETURNS bytea
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT coalesce(string_agg(substring(int8send(((l.lo + u.o - 1) << 19) | least(u.c - i * 524287, 524287))
                                         FROM 5 FOR 4), ''::bytea ORDER BY u.o, i), ''::bytea)
    FROM (SELECT array_lower(state, 1)::bigint AS lo) AS l,
         unnest(state) WITH ORDINALITY AS u(c, o),
         generate_series(0::bigint, (u.c - 1) / 524287) AS i
    WHERE u.c > 0
$$;

-- From raw values (microseconds; NULLs ignored).
CREATE AGGREGATE llmmeter_hist_agg(bigint) (
    SFUNC = llmmeter_hist_state_add_value, STYPE = bigint[], INITCOND = '{}',
    COMBINEFUNC = llmmeter_hist_state_combine, FINALFUNC = llmmeter_hist_state_elems,
    PARALLEL = SAFE
);

-- From stored histograms: their sum (NULLs ignored).
CREATE AGGREGATE llmmeter_hist_merge_agg(bytea) (
    SFUNC = byteacat, STYPE = bytea, INITCOND = '',
    COMBINEFUNC = byteacat, FINALFUNC = llmmeter_hist_fold,
    PARALLEL = SAFE
);

-- The old aggregates' (keys, counts) arrays in 0013's format, for the copy
-- of their history (dropped at the end).
CREATE FUNCTION llmmeter_hist_from_arrays(keys integer[], counts bigint[]) RETURNS bytea
LANGUAGE sql IMMUTABLE AS $$
    SELECT coalesce(string_agg(llmmeter_hist_elems(k, c), ''::bytea ORDER BY k), ''::bytea)
    FROM unnest(keys, counts) AS u(k, c) WHERE k IS NOT NULL AND c > 0
$$;

-- The statements ------------------------------------------------------------
--
-- llmmeter_rollup_ddl('history', cutoff) creates the history tables and, with
-- a cutoff, copies the old aggregates' buckets before it; ('rollups', cutoff)
-- creates the continuous aggregates (counting raw rows from the cutoff on,
-- when there is one), their policies and the views, level by level.
-- tests/test_schema_timescale_rollups.py checks both against rollups.py.
CREATE FUNCTION llmmeter_rollup_ddl(phase text, cutoff timestamptz) RETURNS SETOF text
LANGUAGE plpgsql AS $$
DECLARE
    -- rollups.DIMENSIONS, in order; dimension i (1-based) is dims_mask bit 9 - i
    dims constant text[] := ARRAY['model', 'model_alias', 'provider', 'user_name', 'team', 'account',
                                  'status_code', 'error_type', 'call_type'];
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
    -- the sets every level of 0002 kept: all dimensions, each alone, none
    old_masks constant integer[] := ARRAY[511, 256, 128, 64, 32, 16, 8, 4, 2, 1, 0];
    origin constant timestamptz := TIMESTAMPTZ '2000-01-01 00:00:00+00';
    lv record;
    below_masks integer[] := '{}';
    mask integer;
    n_jobs integer := 0;  -- hour and day jobs so far: each starts at its own second
    agg text;
    src text;
    bucket text;
    kept text;       -- ', ' before each dimension the set keeps
    dim_cols text;   -- dims_mask and the dimensions, as the views and tables have them
    outs text;       -- the aggregate's measures and histograms
    names text;      -- their names
    mnames text;     -- the measures' names alone
    cols text;       -- every column of the level, in rollups.rollup_columns() order
    defs text;       -- their definitions (history tables)
    sums text;
    branches text[];
    first_run timestamptz;
BEGIN
    names := '';
    mnames := '';
    defs := 'bucket timestamptz NOT NULL, dims_mask smallint NOT NULL';
    FOR i IN 1 .. cardinality(dims) LOOP
        defs := defs || format(', %I %s NOT NULL', dims[i],
                               CASE dims[i] WHEN 'status_code' THEN 'integer' ELSE 'text COLLATE "C"' END);
    END LOOP;
    FOR i IN 1 .. array_length(measures, 1) LOOP
        names := names || format(', %I', measures[i][1]);
        mnames := mnames || format(', %I', measures[i][1]);
        defs := defs || format(', %I %s NOT NULL', measures[i][1], measures[i][3]);
    END LOOP;
    FOR i IN 1 .. array_length(hists, 1) LOOP
        names := names || format(', %I', hists[i][1] || '_hist');
        defs := defs || format(', %I bytea NOT NULL', hists[i][1] || '_hist');
    END LOOP;
    cols := 'bucket, dims_mask, ' || array_to_string(dims, ', ') || names;

    -- levels: n, rollup, bucket width, the level below, the grouping sets kept (dims_mask, in
    -- rollups.ROLLUPS order), refresh window start and end offsets, refresh interval, chunk interval
    FOR lv IN SELECT * FROM (VALUES
        (1, 'usage_1m', '1 minute', NULL, ARRAY[0, 256, 2],
         '14 days', '1 minute', '1 minute', '1 day'),
        (2, 'usage_1h', '1 hour', 'usage_1m', ARRAY[0, 256, 128, 64, 32, 16, 8, 4, 2, 1, 479],
         '15 days', '1 hour', '5 minutes', '30 days'),
        (3, 'usage_1d', '1 day', 'usage_1h', ARRAY[0, 256, 128, 64, 32, 16, 8, 4, 2, 1, 511],
         '16 days', '1 day', '1 hour', '30 days')
    ) AS l(n, rollup, width, below, masks, refresh_start, refresh_end, refresh_every, chunk)
    ORDER BY n
    LOOP
        IF phase = 'history' THEN
            RETURN NEXT format('CREATE TABLE %I (%s, PRIMARY KEY (dims_mask, bucket, %s))',
                               lv.rollup || '_history', defs, array_to_string(dims, ', '));
            RETURN NEXT format('SELECT create_hypertable(%L, by_range(%L, INTERVAL %L))',
                               lv.rollup || '_history', 'bucket', lv.chunk);
            CONTINUE WHEN cutoff IS NULL;
            -- the sets 0002 kept as they are
            RETURN NEXT format(
                'INSERT INTO %I (%s) SELECT bucket, dims_mask, %s%s, '
                'llmmeter_hist_from_arrays(lat_keys, lat_counts), llmmeter_hist_from_arrays(ttft_keys, ttft_counts) '
                'FROM %I WHERE dims_mask = ANY(%L::smallint[]) AND bucket < %L',
                lv.rollup || '_history', cols, array_to_string(dims, ', '), mnames, lv.rollup || '_arrays',
                (SELECT array_agg(m) FROM unnest(lv.masks) AS m WHERE m = ANY(old_masks)), cutoff);
            -- the others summed from the all-dimensions rows
            FOREACH mask IN ARRAY lv.masks LOOP
                CONTINUE WHEN mask = ANY(old_masks);
                kept := '';
                dim_cols := mask || '::smallint';
                FOR i IN 1 .. cardinality(dims) LOOP
                    IF mask & (1 << (cardinality(dims) - i)) <> 0 THEN
                        kept := kept || ', ' || quote_ident(dims[i]);
                        dim_cols := dim_cols || ', ' || quote_ident(dims[i]);
                    ELSE
                        dim_cols := dim_cols || CASE dims[i] WHEN 'status_code' THEN ', 0' ELSE ', ''''' END;
                    END IF;
                END LOOP;
                sums := '';
                FOR i IN 1 .. array_length(measures, 1) LOOP
                    sums := sums || format(', sum(%I)::%s', measures[i][1], measures[i][3]);
                END LOOP;
                RETURN NEXT format(
                    'INSERT INTO %I (%s) SELECT bucket, %s%s, '
                    'llmmeter_hist_fold(string_agg(llmmeter_hist_from_arrays(lat_keys, lat_counts), ''''::bytea)), '
                    'llmmeter_hist_fold(string_agg(llmmeter_hist_from_arrays(ttft_keys, ttft_counts), ''''::bytea)) '
                    'FROM %I WHERE dims_mask = %s AND bucket < %L GROUP BY bucket%s',
                    lv.rollup || '_history', cols, dim_cols, sums, lv.rollup || '_arrays',
                    (1 << cardinality(dims)) - 1, cutoff, kept);
            END LOOP;
            CONTINUE;
        END IF;

        branches := '{}';
        FOR j IN 1 .. cardinality(lv.masks) LOOP
            mask := lv.masks[j];
            agg := lv.rollup || '_s' || mask;
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
            outs := '';
            IF mask = ANY(below_masks) THEN  -- hierarchical: the same set one level down
                src := quote_ident(lv.below || '_s' || mask);
                bucket := format('time_bucket(INTERVAL %L, bucket)', lv.width);
                FOR i IN 1 .. array_length(measures, 1) LOOP
                    outs := outs || format(', sum(%I)::%s AS %I', measures[i][1], measures[i][3], measures[i][1]);
                END LOOP;
                FOR i IN 1 .. array_length(hists, 1) LOOP
                    outs := outs || format(', llmmeter_hist_merge_agg(%I) AS %I',
                                           hists[i][1] || '_hist', hists[i][1] || '_hist');
                END LOOP;
            ELSE
                src := 'usage_records' || CASE WHEN cutoff IS NULL THEN ''
                                               ELSE format(' WHERE start_time >= %L::timestamptz', cutoff) END;
                bucket := format('time_bucket(INTERVAL %L, start_time)', lv.width);
                FOR i IN 1 .. array_length(measures, 1) LOOP
                    outs := outs || format(', sum(%s)::%s AS %I', measures[i][2], measures[i][3], measures[i][1]);
                END LOOP;
                FOR i IN 1 .. array_length(hists, 1) LOOP
                    outs := outs || format(', llmmeter_hist_agg(%I) AS %I', hists[i][2], hists[i][1] || '_hist');
                END LOOP;
            END IF;
            RETURN NEXT format('CREATE MATERIALIZED VIEW %I WITH (timescaledb.continuous, '
                               'timescaledb.materialized_only = false) AS SELECT %s AS bucket%s%s '
                               'FROM %s GROUP BY %s%s WITH NO DATA',
                               agg, bucket, kept, outs, src, bucket, kept);
            RETURN NEXT format('SELECT set_chunk_time_interval((SELECT format(%L, materialization_hypertable_schema, '
                               'materialization_hypertable_name) FROM timescaledb_information.continuous_aggregates '
                               'WHERE view_schema = current_schema AND view_name = %L)::regclass, INTERVAL %L)',
                               '%I.%I', agg, lv.chunk);
            -- Staggered fixed schedules: the minute jobs spread over the minute, the others over
            -- their interval (whole minutes), each at a second of its own.
            first_run := date_bin(lv.refresh_every::interval, now(), origin) + lv.refresh_every::interval;
            IF lv.n = 1 THEN
                first_run := first_run + (j - 1) * (60 / cardinality(lv.masks)) * INTERVAL '1 second';
            ELSE
                first_run := first_run
                    + ((j - 1) * (extract(epoch FROM lv.refresh_every::interval)::integer / 60)
                       / cardinality(lv.masks)) * INTERVAL '1 minute'
                    + (3 + 2 * n_jobs) * INTERVAL '1 second';
                n_jobs := n_jobs + 1;
            END IF;
            RETURN NEXT format('SELECT add_continuous_aggregate_policy(%L, start_offset => INTERVAL %L, '
                               'end_offset => INTERVAL %L, schedule_interval => INTERVAL %L, '
                               'initial_start => %L::timestamptz)',
                               agg, lv.refresh_start, lv.refresh_end, lv.refresh_every, first_run);
            branches := branches || format('SELECT bucket, %s%s FROM %I', dim_cols, names, agg);
        END LOOP;
        branches := branches || format('SELECT %s FROM %I', cols, lv.rollup || '_history');
        RETURN NEXT format('CREATE VIEW %I AS %s', lv.rollup, array_to_string(branches, ' UNION ALL '));
        below_masks := lv.masks;
    END LOOP;
END
$$;

-- The migration ---------------------------------------------------------------

DO $$
DECLARE
    origin constant timestamptz := TIMESTAMPTZ '2000-01-01 00:00:00+00';
    oldest timestamptz := (SELECT min(start_time) FROM usage_records);
    cutoff timestamptz;
    stmt text;
    r text;
    m integer;
BEGIN
    cutoff := CASE WHEN oldest IS NULL THEN date_bin('1 day', now(), origin)
                   ELSE greatest(date_bin('1 day', oldest, origin),
                                 date_bin('1 day', now(), origin) - INTERVAL '13 days') END;
    IF NOT EXISTS (SELECT 1 FROM usage_1m_arrays WHERE dims_mask = 0 AND bucket < cutoff)
       AND NOT EXISTS (SELECT 1 FROM usage_1h_arrays WHERE dims_mask = 0 AND bucket < cutoff)
       AND NOT EXISTS (SELECT 1 FROM usage_1d_arrays WHERE dims_mask = 0 AND bucket < cutoff) THEN
        cutoff := NULL;  -- nothing to carry over
    END IF;
    RAISE NOTICE 'rollup history carried over from before %', coalesce(cutoff::text, '(nothing)');

    FOR stmt IN SELECT llmmeter_rollup_ddl('history', cutoff) LOOP
        EXECUTE stmt;
    END LOOP;

    -- the old views and aggregates, each level before the one it reads
    DROP VIEW usage_1m, usage_1h, usage_1d;
    DROP VIEW usage_1m_arrays, usage_1h_arrays, usage_1d_arrays;
    FOREACH r IN ARRAY ARRAY['usage_1d', 'usage_1h', 'usage_1m'] LOOP
        FOREACH m IN ARRAY ARRAY[511, 256, 128, 64, 32, 16, 8, 4, 2, 1, 0] LOOP
            EXECUTE format('DROP MATERIALIZED VIEW %I', r || '_s' || m);
        END LOOP;
    END LOOP;

    FOR stmt IN SELECT llmmeter_rollup_ddl('rollups', cutoff) LOOP
        EXECUTE stmt;
    END LOOP;
END
$$;

DROP FUNCTION llmmeter_rollup_ddl(text, timestamptz);
DROP FUNCTION llmmeter_hist_from_arrays(integer[], bigint[]);

-- What only the old aggregates and views used.
DROP AGGREGATE llmmeter_hist_keys_agg(bigint);
DROP AGGREGATE llmmeter_hist_counts_agg(bigint);
DROP AGGREGATE llmmeter_hist_merge_keys_agg(integer[], bigint[]);
DROP AGGREGATE llmmeter_hist_merge_counts_agg(integer[], bigint[]);
DROP FUNCTION llmmeter_hist_state_add_pairs(bigint[], integer[], bigint[]);
DROP FUNCTION llmmeter_hist_state_keys(bigint[]);
DROP FUNCTION llmmeter_hist_state_counts(bigint[]);
DROP FUNCTION llmmeter_hist_pairs(integer[], bigint[]);
DROP FUNCTION llmmeter_apply_retention(interval, interval, interval);
DROP FUNCTION llmmeter_rollup_masks();
DROP FUNCTION llmmeter_rollup_dims();

-- Retention per level, with 0011's lock: drops the chunks wholly older than
-- each horizon (raw rows, payloads, then each level's aggregates and history
-- table) and returns their names. The minute and hour levels are kept as
-- long as the hierarchy above them needs (see the top).
CREATE FUNCTION llmmeter_apply_retention(raw_keep interval, payload_keep interval,
                                         minute_keep interval, rollup_keep interval)
RETURNS SETOF text LANGUAGE plpgsql AS $$
DECLARE
    rel text;
    keep interval;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('llmmeter_partitions'));
    RETURN QUERY SELECT drop_chunks('usage_records', older_than => raw_keep);
    RETURN QUERY SELECT drop_chunks('usage_payloads', older_than => payload_keep);
    FOREACH rel IN ARRAY ARRAY[
        'usage_1m_s0', 'usage_1m_s256', 'usage_1m_s2', 'usage_1m_history',
        'usage_1h_s0', 'usage_1h_s256', 'usage_1h_s128', 'usage_1h_s64', 'usage_1h_s32', 'usage_1h_s16',
        'usage_1h_s8', 'usage_1h_s4', 'usage_1h_s2', 'usage_1h_s1', 'usage_1h_s479', 'usage_1h_history',
        'usage_1d_s0', 'usage_1d_s256', 'usage_1d_s128', 'usage_1d_s64', 'usage_1d_s32', 'usage_1d_s16',
        'usage_1d_s8', 'usage_1d_s4', 'usage_1d_s2', 'usage_1d_s1', 'usage_1d_s511', 'usage_1d_history']
    LOOP
        keep := CASE left(rel, 8)
                    WHEN 'usage_1m' THEN greatest(minute_keep, least(raw_keep, INTERVAL '14 days') + INTERVAL '1 day')
                    WHEN 'usage_1h' THEN greatest(rollup_keep, least(raw_keep, INTERVAL '15 days') + INTERVAL '2 days')
                                  ELSE rollup_keep END;
        RETURN QUERY SELECT drop_chunks(rel::regclass, older_than => keep);
    END LOOP;
END
$$;
