-- The rollup tables keep each histogram as one pairs array (0005): lat_hist
-- and ttft_hist replace lat_keys/lat_counts and ttft_keys/ttft_counts. The
-- UPDATE rewrites every rollup row once (about 12 minutes for the 20 million
-- rollup rows of 10 million records on a 2-core machine, see bench/README.md).
-- Pairs read back without being held apart from the rest of the row: no
-- compression (EXTERNAL), which costs about twice the bytes of a compressed
-- array but no decompression on every read.

ALTER TABLE usage_1m ADD COLUMN lat_hist bigint[] NOT NULL DEFAULT '{}',
                     ADD COLUMN ttft_hist bigint[] NOT NULL DEFAULT '{}';
ALTER TABLE usage_1h ADD COLUMN lat_hist bigint[] NOT NULL DEFAULT '{}',
                     ADD COLUMN ttft_hist bigint[] NOT NULL DEFAULT '{}';
ALTER TABLE usage_1d ADD COLUMN lat_hist bigint[] NOT NULL DEFAULT '{}',
                     ADD COLUMN ttft_hist bigint[] NOT NULL DEFAULT '{}';

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

ALTER TABLE usage_1m ALTER COLUMN lat_hist SET STORAGE EXTERNAL, ALTER COLUMN ttft_hist SET STORAGE EXTERNAL;
ALTER TABLE usage_1h ALTER COLUMN lat_hist SET STORAGE EXTERNAL, ALTER COLUMN ttft_hist SET STORAGE EXTERNAL;
ALTER TABLE usage_1d ALTER COLUMN lat_hist SET STORAGE EXTERNAL, ALTER COLUMN ttft_hist SET STORAGE EXTERNAL;
