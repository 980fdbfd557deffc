-- Histograms as one bigint[] of (key, count) pairs, for both flavours.
--
-- Rollup rows used to keep a histogram as two arrays (integer keys, bigint
-- counts). Reading the histograms of a 7-day series (~500k pairs) spent most
-- of its time in array_send, once per element of both arrays. One element per
-- pair halves that: an element is key << 40 | count (keys are 0..~4400,
-- counts below 2^40, i.e. 1.1e12 calls in one 0.5%-wide latency bucket of
-- one rollup row). A key may appear more than once in an array; readers add
-- up the counts of equal keys.

CREATE OR REPLACE FUNCTION llmmeter_hist_pairs(keys integer[], counts bigint[]) RETURNS bigint[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT coalesce(array_agg((k::bigint << 40) | c), '{}')
    FROM unnest(keys, counts) AS u(k, c) WHERE k IS NOT NULL AND c IS NOT NULL
$$;
