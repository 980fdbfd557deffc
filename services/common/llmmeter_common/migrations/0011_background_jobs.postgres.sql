-- 0011 fixes the TimescaleDB flavour's background jobs (a refresh failing on
-- search_path, retention policies colliding with the ingest service's loop).
-- The PostgreSQL flavour has no such jobs; the version exists in both.
SELECT 1;
