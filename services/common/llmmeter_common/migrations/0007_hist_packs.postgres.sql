-- Closed rollup rows also keep their histograms packed (lat_pack, ttft_pack):
-- the same (key, count) pairs as lat_hist/ttft_hist, as one bytea of 8-byte
-- big-endian values after an 8-byte tag. PostgreSQL serialises a bigint[]
-- element by element (array_send, ~60 ns a pair); a bytea goes out as it is
-- stored. A 7-day hourly series reads about half a million pairs, so this is
-- most of its database time. The arrays stay the source of truth: upserts
-- append to them and set the packs back to NULL, and the rollup worker's
-- compaction (when a bucket closes, or an array grows long) writes both.
-- Readers take the pack when there is one and the array otherwise. Existing
-- rows get their packs at their next compaction; until then they are read
-- from the arrays, as before. Stored EXTERNAL, like the arrays (0006).

ALTER TABLE usage_1m ADD COLUMN lat_pack bytea, ADD COLUMN ttft_pack bytea;
ALTER TABLE usage_1h ADD COLUMN lat_pack bytea, ADD COLUMN ttft_pack bytea;
ALTER TABLE usage_1d ADD COLUMN lat_pack bytea, ADD COLUMN ttft_pack bytea;

ALTER TABLE usage_1m ALTER COLUMN lat_pack SET STORAGE EXTERNAL, ALTER COLUMN ttft_pack SET STORAGE EXTERNAL;
ALTER TABLE usage_1h ALTER COLUMN lat_pack SET STORAGE EXTERNAL, ALTER COLUMN ttft_pack SET STORAGE EXTERNAL;
ALTER TABLE usage_1d ALTER COLUMN lat_pack SET STORAGE EXTERNAL, ALTER COLUMN ttft_pack SET STORAGE EXTERNAL;
