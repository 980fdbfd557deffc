-- Rollups that cost less than what they summarise (issue 14). At 10 million
-- records over 30 days the rollups took 13.1 GB against 5.4 GB of raw rows:
-- every level kept the all-dimensions set (as fine as raw at a minute) and
-- every dimension alone, and each histogram twice (0006's pairs, 0007's packs).
-- Now (rollups.ROLLUPS): the minute level keeps none, model and error_type;
-- the hour level none, each dimension alone and all but the user; the day
-- level none, each alone and all dimensions. The histograms take 0013's
-- format; the packs go. The minute level has its own retention
-- (LLMMETER_INGEST_MINUTE_RETENTION_DAYS, about the raw rows').
--
-- Existing rows are carried over exactly: sets a level no longer keeps are
-- deleted (the same records are in the sets that remain), and the hour
-- level's all-but-user rows are summed from its all-dimensions rows.

CREATE FUNCTION llmmeter_hist_from_pairs(pairs bigint[]) RETURNS bytea
LANGUAGE sql IMMUTABLE STRICT AS $$
    SELECT coalesce(string_agg(llmmeter_hist_elems((v >> 40)::integer, v & 1099511627775), ''::bytea
                               ORDER BY v), ''::bytea)
    FROM unnest(pairs) AS v
$$;

DELETE FROM usage_1m WHERE dims_mask NOT IN (0, 256, 2);

ALTER TABLE usage_1m DROP COLUMN lat_pack, DROP COLUMN ttft_pack,
    ALTER COLUMN lat_hist DROP DEFAULT, ALTER COLUMN ttft_hist DROP DEFAULT;
ALTER TABLE usage_1h DROP COLUMN lat_pack, DROP COLUMN ttft_pack,
    ALTER COLUMN lat_hist DROP DEFAULT, ALTER COLUMN ttft_hist DROP DEFAULT;
ALTER TABLE usage_1d DROP COLUMN lat_pack, DROP COLUMN ttft_pack,
    ALTER COLUMN lat_hist DROP DEFAULT, ALTER COLUMN ttft_hist DROP DEFAULT;
ALTER TABLE usage_1m ALTER COLUMN lat_hist TYPE bytea USING llmmeter_hist_from_pairs(lat_hist),
                     ALTER COLUMN ttft_hist TYPE bytea USING llmmeter_hist_from_pairs(ttft_hist);
ALTER TABLE usage_1h ALTER COLUMN lat_hist TYPE bytea USING llmmeter_hist_from_pairs(lat_hist),
                     ALTER COLUMN ttft_hist TYPE bytea USING llmmeter_hist_from_pairs(ttft_hist);
ALTER TABLE usage_1d ALTER COLUMN lat_hist TYPE bytea USING llmmeter_hist_from_pairs(lat_hist),
                     ALTER COLUMN ttft_hist TYPE bytea USING llmmeter_hist_from_pairs(ttft_hist);
ALTER TABLE usage_1m ALTER COLUMN lat_hist SET DEFAULT ''::bytea, ALTER COLUMN ttft_hist SET DEFAULT ''::bytea,
    ALTER COLUMN lat_hist SET STORAGE EXTERNAL, ALTER COLUMN ttft_hist SET STORAGE EXTERNAL;
ALTER TABLE usage_1h ALTER COLUMN lat_hist SET DEFAULT ''::bytea, ALTER COLUMN ttft_hist SET DEFAULT ''::bytea,
    ALTER COLUMN lat_hist SET STORAGE EXTERNAL, ALTER COLUMN ttft_hist SET STORAGE EXTERNAL;
ALTER TABLE usage_1d ALTER COLUMN lat_hist SET DEFAULT ''::bytea, ALTER COLUMN ttft_hist SET DEFAULT ''::bytea,
    ALTER COLUMN lat_hist SET STORAGE EXTERNAL, ALTER COLUMN ttft_hist SET STORAGE EXTERNAL;

DROP FUNCTION llmmeter_hist_from_pairs(bigint[]);
DROP FUNCTION llmmeter_hist_pairs(integer[], bigint[]);

-- The hour level's all-but-user set (dims_mask 479) from its all-dimensions rows.
INSERT INTO usage_1h
SELECT bucket, 479::smallint, model, model_alias, provider, '', team, account, status_code, error_type, call_type,
       sum(request_count)::bigint,
       sum(error_count)::bigint,
       sum(streaming_count)::bigint,
       sum(cache_hit_count)::bigint,
       sum(retries)::bigint,
       sum(input_tokens)::bigint,
       sum(output_tokens)::bigint,
       sum(cache_read_tokens)::bigint,
       sum(cache_write_tokens)::bigint,
       sum(reasoning_tokens)::bigint,
       sum(images)::bigint,
       sum(audio_seconds)::numeric,
       sum(video_seconds)::numeric,
       sum(characters)::bigint,
       sum(cost)::numeric,
       sum(latency_us_sum)::bigint,
       sum(ttft_us_sum)::bigint,
       sum(ttft_count)::bigint,
       sum(itl_us_sum)::double precision,
       sum(itl_count)::bigint,
       sum(tpot_us_sum)::double precision,
       sum(tpot_count)::bigint,
       llmmeter_hist_fold(string_agg(lat_hist, ''::bytea)), llmmeter_hist_fold(string_agg(ttft_hist, ''::bytea))
FROM usage_1h WHERE dims_mask = 511
GROUP BY bucket, model, model_alias, provider, team, account, status_code, error_type, call_type;
DELETE FROM usage_1h WHERE dims_mask = 511;

-- Retention per level: the minute level has its own horizon.
DROP FUNCTION llmmeter_apply_retention(interval, interval, interval);
CREATE FUNCTION llmmeter_apply_retention(raw_keep interval, payload_keep interval,
                                         minute_keep interval, rollup_keep interval)
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
                              WHEN 'usage_1m' THEN minute_keep
                              ELSE rollup_keep END;
        IF p.upper <= now() - keep THEN
            EXECUTE format('DROP TABLE %I', p.child);
            RETURN NEXT p.child;
        END IF;
    END LOOP;
END
$$;

-- Minute rollup partitions by UTC day from now on (like the raw tables), so
-- its retention drops a day at a time; months created before stay as they
-- are, and a day inside one of them is not created again.
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
        ('usage_records', 'day'), ('usage_payloads', 'day'), ('usage_1m', 'day'),
        ('usage_1h', 'month'), ('usage_1d', 'month')) AS s(parent, step)
    LOOP
        lo := date_trunc(spec.step, from_ts, 'UTC');
        WHILE lo <= to_ts LOOP
            hi := (lo AT TIME ZONE 'UTC' + ('1 ' || spec.step)::interval) AT TIME ZONE 'UTC';
            part := spec.parent || '_p' || to_char(lo AT TIME ZONE 'UTC',
                        CASE spec.step WHEN 'day' THEN 'YYYYMMDD' ELSE 'YYYYMM' END);
            IF to_regclass(part) IS NULL AND NOT EXISTS (
                SELECT 1 FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
                WHERE i.inhparent = spec.parent::regclass
                  AND (regexp_match(pg_get_expr(c.relpartbound, c.oid), 'FROM \(''([^'']+)''\)'))[1]::timestamptz <= lo
                  AND (regexp_match(pg_get_expr(c.relpartbound, c.oid), 'TO \(''([^'']+)''\)'))[1]::timestamptz > lo)
            THEN
                EXECUTE format('CREATE TABLE %I PARTITION OF %I FOR VALUES FROM (%L) TO (%L)',
                               part, spec.parent, lo, hi);
            END IF;
            lo := hi;
        END LOOP;
    END LOOP;
END
$$;
