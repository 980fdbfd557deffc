-- The rollup views gain the packed-histogram columns of the PostgreSQL
-- flavour (0007 there), always NULL: continuous aggregates are never
-- compacted, so readers take the pairs arrays, as before. Columns are only
-- added at the end, which CREATE OR REPLACE VIEW allows.

CREATE OR REPLACE VIEW usage_1m AS
SELECT
       bucket, dims_mask, model, model_alias, provider, user_name, team, account, status_code,
       error_type, call_type, request_count, error_count, streaming_count, cache_hit_count,
       retries, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens,
       reasoning_tokens, images, audio_seconds, video_seconds, characters, cost, latency_us_sum,
       ttft_us_sum, ttft_count, itl_us_sum, itl_count, tpot_us_sum, tpot_count,
       llmmeter_hist_pairs(lat_keys, lat_counts) AS lat_hist,
       llmmeter_hist_pairs(ttft_keys, ttft_counts) AS ttft_hist,
       NULL::bytea AS lat_pack, NULL::bytea AS ttft_pack
FROM usage_1m_arrays;

CREATE OR REPLACE VIEW usage_1h AS
SELECT
       bucket, dims_mask, model, model_alias, provider, user_name, team, account, status_code,
       error_type, call_type, request_count, error_count, streaming_count, cache_hit_count,
       retries, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens,
       reasoning_tokens, images, audio_seconds, video_seconds, characters, cost, latency_us_sum,
       ttft_us_sum, ttft_count, itl_us_sum, itl_count, tpot_us_sum, tpot_count,
       llmmeter_hist_pairs(lat_keys, lat_counts) AS lat_hist,
       llmmeter_hist_pairs(ttft_keys, ttft_counts) AS ttft_hist,
       NULL::bytea AS lat_pack, NULL::bytea AS ttft_pack
FROM usage_1h_arrays;

CREATE OR REPLACE VIEW usage_1d AS
SELECT
       bucket, dims_mask, model, model_alias, provider, user_name, team, account, status_code,
       error_type, call_type, request_count, error_count, streaming_count, cache_hit_count,
       retries, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens,
       reasoning_tokens, images, audio_seconds, video_seconds, characters, cost, latency_us_sum,
       ttft_us_sum, ttft_count, itl_us_sum, itl_count, tpot_us_sum, tpot_count,
       llmmeter_hist_pairs(lat_keys, lat_counts) AS lat_hist,
       llmmeter_hist_pairs(ttft_keys, ttft_counts) AS ttft_hist,
       NULL::bytea AS lat_pack, NULL::bytea AS ttft_pack
FROM usage_1d_arrays;
