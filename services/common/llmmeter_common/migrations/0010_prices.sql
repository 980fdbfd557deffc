-- Costs computed at ingest (both flavours).
--
-- cost_source: where a record's cost comes from (llmmeter.v1.CostSource): 0 unspecified (rows
-- stored before this migration), 1 reported with the record, 2 computed from a price, 3 unpriced
-- (sent without a cost, no price known: stored as 0). A constant default, so adding the column
-- rewrites nothing. The rollups do not keep it: unpriced counts are read from raw rows through
-- the partial index below, which holds only unpriced rows (few, as long as prices are known).
ALTER TABLE usage_records ADD COLUMN cost_source smallint NOT NULL DEFAULT 0;
CREATE INDEX usage_records_unpriced_idx ON usage_records (start_time) WHERE cost_source = 3;

-- The operator's per-model price overrides (llmmeter.v1.PricesService), USD. A record without a
-- cost takes the row of its model with the latest effective_from not after its start_time.
-- NULL cache rates mean the input rate, a NULL reasoning rate the output rate, NULL unit prices 0.
CREATE TABLE llmmeter_model_prices (
    model                text        NOT NULL,
    effective_from       timestamptz NOT NULL,
    input_per_mtok       numeric     NOT NULL,
    output_per_mtok      numeric     NOT NULL,
    cache_read_per_mtok  numeric,
    cache_write_per_mtok numeric,
    reasoning_per_mtok   numeric,
    per_image            numeric,
    per_audio_second     numeric,
    updated_at           timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (model, effective_from)
);
