-- The rollup views expose each histogram as one pairs array (0005), as the
-- PostgreSQL flavour's tables now store it. The continuous aggregates keep
-- their (keys, counts) columns: they cannot change their columns without
-- being rebuilt from raw rows, which retention has already dropped for all but
-- the last 14 days. So the union views of 0002 are renamed to usage_1m_arrays
-- (and _1h, _1d) and usage_1m becomes a view converting their arrays; a
-- constant dims_mask still reaches only one continuous aggregate (checked in
-- tests/test_schema_timescale_rollups.py). The conversion costs this flavour about
-- 0.35 µs per pair on every read.

ALTER VIEW usage_1m RENAME TO usage_1m_arrays;
CREATE VIEW usage_1m AS
SELECT
       bucket, dims_mask, model, model_alias, provider, user_name, team, account, status_code,
       error_type, call_type, request_count, error_count, streaming_count, cache_hit_count,
       retries, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens,
       reasoning_tokens, images, audio_seconds, video_seconds, characters, cost, latency_us_sum,
       ttft_us_sum, ttft_count, itl_us_sum, itl_count, tpot_us_sum, tpot_count,
       llmmeter_hist_pairs(lat_keys, lat_counts) AS lat_hist,
       llmmeter_hist_pairs(ttft_keys, ttft_counts) AS ttft_hist
FROM usage_1m_arrays;

ALTER VIEW usage_1h RENAME TO usage_1h_arrays;
CREATE VIEW usage_1h AS
SELECT
       bucket, dims_mask, model, model_alias, provider, user_name, team, account, status_code,
       error_type, call_type, request_count, error_count, streaming_count, cache_hit_count,
       retries, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens,
       reasoning_tokens, images, audio_seconds, video_seconds, characters, cost, latency_us_sum,
       ttft_us_sum, ttft_count, itl_us_sum, itl_count, tpot_us_sum, tpot_count,
       llmmeter_hist_pairs(lat_keys, lat_counts) AS lat_hist,
       llmmeter_hist_pairs(ttft_keys, ttft_counts) AS ttft_hist
FROM usage_1h_arrays;

ALTER VIEW usage_1d RENAME TO usage_1d_arrays;
CREATE VIEW usage_1d AS
SELECT
       bucket, dims_mask, model, model_alias, provider, user_name, team, account, status_code,
       error_type, call_type, request_count, error_count, streaming_count, cache_hit_count,
       retries, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens,
       reasoning_tokens, images, audio_seconds, video_seconds, characters, cost, latency_us_sum,
       ttft_us_sum, ttft_count, itl_us_sum, itl_count, tpot_us_sum, tpot_count,
       llmmeter_hist_pairs(lat_keys, lat_counts) AS lat_hist,
       llmmeter_hist_pairs(ttft_keys, ttft_counts) AS ttft_hist
FROM usage_1d_arrays;
