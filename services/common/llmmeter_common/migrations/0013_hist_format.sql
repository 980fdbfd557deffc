-- The one histogram format of both flavours (llmmeter_common/sketch.py says
-- the same in Python): a bytea of 4-byte big-endian elements, each
-- key << 19 | count. Keys (llmmeter_hist_key, 0001) are 0..~4400, 13 bits; a
-- count above 524287 (19 bits) is split over several elements with the same
-- key. Two histograms concatenated are their sum: rollup upserts append,
-- readers add counts up by key, and llmmeter_hist_fold rewrites one with each
-- key once, in key order. It replaces three formats (0005's bigint pairs,
-- 0007's packs, the TimescaleDB flavour's key/count arrays) at half the bytes
-- of the 8-byte pairs, and is read as it is stored (no array_send).
--
-- Every function here calls only pg_catalog functions and operators, so it
-- runs under the search_path TimescaleDB's background jobs use.

-- The elements of one (key, count).
CREATE OR REPLACE FUNCTION llmmeter_hist_elems(k integer, c bigint) RETURNS bytea
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT CASE WHEN c <= 524287 THEN substring(int8send((k::bigint << 19) | c) FROM 5 FOR 4)
           ELSE (SELECT string_agg(substring(int8send((k::bigint << 19)
                                                      | least(c - i * 524287, 524287)) FROM 5 FOR 4),
                                   ''::bytea ORDER BY i)
                 FROM generate_series(0::bigint, (c - 1) / 524287) AS i)
           END
$$;

-- The (key, count) of each element of a histogram, repeated keys as stored.
CREATE OR REPLACE FUNCTION llmmeter_hist_unnest(h bytea, OUT k integer, OUT c bigint)
RETURNS SETOF record LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT (v >> 19)::integer, v & 524287
    FROM (SELECT (get_byte(h, o)::bigint << 24) | (get_byte(h, o + 1) << 16)
                 | (get_byte(h, o + 2) << 8) | get_byte(h, o + 3) AS v
          FROM generate_series(0, length(h) - 4, 4) AS o) AS e
$$;

-- The same histogram with each key once, in key order.
CREATE OR REPLACE FUNCTION llmmeter_hist_fold(h bytea) RETURNS bytea
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT coalesce(string_agg(
               CASE WHEN s.c <= 524287 THEN substring(int8send((s.k::bigint << 19) | s.c) FROM 5 FOR 4)
                    ELSE (SELECT string_agg(substring(int8send((s.k::bigint << 19)
                                                               | least(s.c - i * 524287, 524287)) FROM 5 FOR 4),
                                            ''::bytea ORDER BY i)
                          FROM generate_series(0::bigint, (s.c - 1) / 524287) AS i)
               END, ''::bytea ORDER BY s.k), ''::bytea)
    FROM (SELECT (v >> 19)::integer AS k, sum(v & 524287)::bigint AS c
          FROM (SELECT (get_byte(h, o)::bigint << 24) | (get_byte(h, o + 1) << 16)
                       | (get_byte(h, o + 2) << 8) | get_byte(h, o + 3) AS v
                FROM generate_series(0, length(h) - 4, 4) AS o) AS e
          GROUP BY 1) AS s
$$;

-- 0005's converter of two arrays to pairs goes with the TimescaleDB views
-- that used it (0014); the pairwise merge of 0001 was never used.
DROP FUNCTION llmmeter_hist_merge(integer[], bigint[], integer[], bigint[]);
