-- One relation per rollup level and grouping set (issue 14: TimescaleDB's
-- planning time), under the same names on both flavours:
-- usage_1m_set<mask>, usage_1h_set<mask>, usage_1d_set<mask>
-- (rollups.set_relation), each holding exactly the rows of its level with
-- that dims_mask, in rollups.rollup_columns(). Queries name the one set they
-- read instead of `usage_1h WHERE dims_mask = <mask>`.
--
-- On TimescaleDB the level views union eleven continuous aggregates, and
-- planning a query over one of them cost 10-40 ms at 10M records even when
-- the constant dims_mask pruned all but one branch; naming the set's own
-- relation plans in about a tenth of that (see the .timescale file). Here a
-- set's relation is a plain view of the level's table with the mask, which
-- PostgreSQL inlines into the query: the same plan as before.

DO $$
DECLARE
    lv record;
    m integer;
BEGIN
    -- rollups.ROLLUPS: each level's sets (dims_mask)
    FOR lv IN SELECT * FROM (VALUES
        ('usage_1m', ARRAY[0, 256, 2]),
        ('usage_1h', ARRAY[0, 256, 128, 64, 32, 16, 8, 4, 2, 1, 479]),
        ('usage_1d', ARRAY[0, 256, 128, 64, 32, 16, 8, 4, 2, 1, 511])
    ) AS l(rollup, masks)
    LOOP
        FOREACH m IN ARRAY lv.masks LOOP
            EXECUTE format('CREATE VIEW %I AS SELECT * FROM %I WHERE dims_mask = %s',
                           lv.rollup || '_set' || m, lv.rollup, m);
        END LOOP;
    END LOOP;
END
$$;
