-- TimescaleDB's background jobs, as found running the test suite on a real
-- TimescaleDB (2.17, 2.22 on PostgreSQL 15).
--
-- 1. Continuous aggregate refreshes failed: jobs run with search_path set to
-- pg_catalog only, and the histogram aggregates' transition function called
-- llmmeter_hist_key() unqualified ("function llmmeter_hist_key(bigint) does
-- not exist"), so the first-level aggregates were never materialised. The
-- function now computes the key itself (the same expression as
-- llmmeter_hist_key() in 0001; one function call less per row, too). Every
-- other function a refresh reaches calls only pg_catalog functions.
CREATE OR REPLACE FUNCTION llmmeter_hist_state_add_value(state bigint[], us bigint)
RETURNS bigint[] LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
DECLARE
    k integer := CASE WHEN us <= 1 THEN 0
                      ELSE ceil(ln(us::double precision) / 0.010000083334583179)::integer END;
BEGIN
    state[k] := coalesce(state[k], 0) + 1;
    RETURN state;
END
$$;

-- 2. One retention mechanism per database: the ingest service's retention loop
-- (llmmeter_apply_retention with LLMMETER_INGEST_RAW_RETENTION_DAYS,
-- _PAYLOAD_ and _ROLLUP_), as on the PostgreSQL flavour. 0002 had also added
-- fixed retention policies (raw 14 days, aggregates 400 days, every job at
-- the same second), which overrode longer configured horizons and collided
-- with the loop's drop_chunks ("tuple concurrently updated"). They are removed
-- here; compression and continuous-aggregate refresh policies stay.
DO $$
DECLARE
    rel text;
BEGIN
    FOR rel IN SELECT unnest(ARRAY['usage_records', 'usage_payloads'])
               UNION ALL
               SELECT r || '_s' || m
               FROM unnest(ARRAY['usage_1m', 'usage_1h', 'usage_1d']) AS r, llmmeter_rollup_masks() AS m
    LOOP
        PERFORM remove_retention_policy(rel::regclass, if_exists => true);
    END LOOP;
END
$$;

-- As in 0002, plus the lock the PostgreSQL flavour's function takes: several
-- ingest replicas run the loop, and two drop_chunks on one hypertable at once
-- fail with "tuple concurrently updated".
CREATE OR REPLACE FUNCTION llmmeter_apply_retention(raw_keep interval, payload_keep interval,
                                                    rollup_keep interval)
RETURNS SETOF text LANGUAGE plpgsql AS $$
DECLARE
    agg text;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('llmmeter_partitions'));
    RETURN QUERY SELECT drop_chunks('usage_records', older_than => raw_keep);
    RETURN QUERY SELECT drop_chunks('usage_payloads', older_than => payload_keep);
    FOR agg IN SELECT r || '_s' || m
               FROM unnest(ARRAY['usage_1m', 'usage_1h', 'usage_1d']) AS r, llmmeter_rollup_masks() AS m
    LOOP
        RETURN QUERY SELECT drop_chunks(agg::regclass, older_than => rollup_keep);
    END LOOP;
END
$$;
