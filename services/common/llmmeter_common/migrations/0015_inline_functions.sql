-- llmmeter_hist_key and llmmeter_is_error become inlinable (issue 14: the
-- rollup worker's per-record pass). PostgreSQL inlines a one-expression SQL
-- function into the calling query only when it can prove a STRICT function's
-- body strict too, and a CASE or an AND is not provably so: as STRICT both
-- ran as full function calls, about 3 µs per row each, most of the rollup
-- pass's time. Declared without STRICT, the same bodies are inlined. Results
-- are unchanged: both bodies give NULL for a NULL argument anyway, and the
-- inlined expression is the same arithmetic (ln of a double precision,
-- divided, ceil, cast), so keys stay bit-for-bit what they were.

CREATE OR REPLACE FUNCTION llmmeter_hist_key(us bigint) RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN us <= 1 THEN 0
                ELSE ceil(ln(us::double precision) / 0.010000083334583179)::integer END
$$;

CREATE OR REPLACE FUNCTION llmmeter_is_error(status_code integer) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT NOT (status_code >= 200 AND status_code < 400)
$$;
