-- When each queued row was queued, so that a stalled rollup worker shows as
-- the age of the oldest queued row (the ingest service's storage health; the
-- rows' start_time says nothing about it: late records are queued too). Both
-- flavours: the queue stays empty on TimescaleDB. now() is stable, so adding
-- the column rewrites nothing (rows already queued get the migration's time).
ALTER TABLE usage_rollup_pending ADD COLUMN queued_at timestamptz NOT NULL DEFAULT now();
ALTER TABLE usage_rollup_quarantine ADD COLUMN queued_at timestamptz;
