-- The rollup tables keep each histogram as one pairs array (0005): lat_hist
-- and ttft_hist replace lat_keys/lat_counts and ttft_keys/ttft_counts. The
-- UPDATE rewrites every rollup row once: 19 minutes for the 20.5 million
-- rollup rows of the 10-million-record benchmark on 2 cores, doubling the
-- tables until VACUUM (bench/README.md). The new columns are stored without
-- compression (EXTERNAL, set before the UPDATE so converted rows get it too):
-- about twice the bytes of a compressed array, but long windows read
-- thousands of histograms and no longer decompress each one.

ALTER TABLE usage_1m ADD COLUMN lat_hist bigint[] NOT NULL DEFAULT '{}',
                     ADD COLUMN ttft_hist bigint[] NOT NULL DEFAULT '{}';
ALTER TABLE usage_1h ADD COLUMN lat_hist bigint[] NOT NULL DEFAULT '{}',
                     ADD COLUMN ttft_hist bigint[] NOT NULL DEFAULT '{}';
ALTER TABLE usage_1d ADD COLUMN lat_hist bigint[] NOT NULL DEFAULT '{}',
                     ADD COLUMN ttft_hist bigint[] NOT NULL DEFAULT '{}';

ALTER TABLE usage_1m ALTER COLUMN lat_hist SET STORAGE EXTERNAL, ALTER COLUMN ttft_hist SET STORAGE EXTERNAL;
ALTER TABLE usage_1h ALTER COLUMN lat_hist SET STORAGE EXTERNAL, ALTER COLUMN ttft_hist SET STORAGE EXTERNAL;
ALTER TABLE usage_1d ALTER COLUMN lat_hist SET STORAGE EXTERNAL, ALTER COLUMN ttft_hist SET STORAGE EXTERNAL;

UPDATE usage_1m SET lat_hist = llmmeter_hist_pairs(lat_keys, lat_counts),
                    ttft_hist = llmmeter_hist_pairs(ttft_keys, ttft_counts)
WHERE cardinality(lat_keys) > 0 OR cardinality(ttft_keys) > 0;
UPDATE usage_1h SET lat_hist = llmmeter_hist_pairs(lat_keys, lat_counts),
                    ttft_hist = llmmeter_hist_pairs(ttft_keys, ttft_counts)
WHERE cardinality(lat_keys) > 0 OR cardinality(ttft_keys) > 0;
UPDATE usage_1d SET lat_hist = llmmeter_hist_pairs(lat_keys, lat_counts),
                    ttft_hist = llmmeter_hist_pairs(ttft_keys, ttft_counts)
WHERE cardinality(lat_keys) > 0 OR cardinality(ttft_keys) > 0;

ALTER TABLE usage_1m DROP COLUMN lat_keys, DROP COLUMN lat_counts, DROP COLUMN ttft_keys, DROP COLUMN ttft_counts;
ALTER TABLE usage_1h DROP COLUMN lat_keys, DROP COLUMN lat_counts, DROP COLUMN ttft_keys, DROP COLUMN ttft_counts;
ALTER TABLE usage_1d DROP COLUMN lat_keys, DROP COLUMN lat_counts, DROP COLUMN ttft_keys, DROP COLUMN ttft_counts;
