"""The rollup tables' shape, in one place, and the SQL that keeps them exact.

The PostgreSQL path has no continuous aggregates. Each stored batch also
writes its newly inserted rows (the columns the rollups need) to
`usage_rollup_pending` in the same transaction; a background worker moves
pending rows into the minute, hour and day rollups, deleting them in the same
transaction. So at every moment each stored record is counted exactly once,
either in the rollups or in the pending table, and queries read both. The
grouping dimensions and the measures are listed here once; the SQL is
generated from them, the query side reads the same names, and a test checks
them against the migrations (both flavours).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from llmmeter_common import sketch

#: Dimensions every rollup row is keyed by (after the time bucket).
DIMENSIONS: tuple[str, ...] = (
    "model", "model_alias", "provider", "user_name", "team", "account",
    "status_code", "error_type", "call_type",
)


@dataclass(frozen=True)
class Measure:
    """One additive rollup column and how a raw row contributes to it."""

    column: str
    raw_expr: str
    sql_type: str = "bigint"

    def summed(self, expr: str) -> str:
        """SUM(expr) in the column's own type: sum(bigint) is numeric, which costs a Decimal per
        value to decode client-side; whole counts fit bigint exactly."""
        return f"sum({expr})::{self.sql_type}"


#: Additive measures: the rollup column is SUM(raw_expr) over the bucket's rows.
MEASURES: tuple[Measure, ...] = (
    Measure("request_count", "1"),
    Measure("error_count", "CASE WHEN llmmeter_is_error(status_code) THEN 1 ELSE 0 END"),
    Measure("streaming_count", "CASE WHEN streaming THEN 1 ELSE 0 END"),
    Measure("cache_hit_count", "CASE WHEN cache_hit THEN 1 ELSE 0 END"),
    Measure("retries", "retries"),
    Measure("input_tokens", "input_tokens"),
    Measure("output_tokens", "output_tokens"),
    Measure("cache_read_tokens", "cache_read_tokens"),
    Measure("cache_write_tokens", "cache_write_tokens"),
    Measure("reasoning_tokens", "reasoning_tokens"),
    Measure("images", "images"),
    Measure("audio_seconds", "audio_seconds", "numeric"),
    Measure("video_seconds", "video_seconds", "numeric"),
    Measure("characters", "characters"),
    Measure("cost", "cost", "numeric"),
    Measure("latency_us_sum", "latency_us"),
    Measure("ttft_us_sum", "coalesce(ttft_us, 0)"),
    Measure("ttft_count", "CASE WHEN ttft_us IS NULL THEN 0 ELSE 1 END"),
    Measure("itl_us_sum", "coalesce(itl_us, 0)", "double precision"),
    Measure("itl_count", "CASE WHEN itl_us IS NULL THEN 0 ELSE 1 END"),
    Measure("tpot_us_sum", "coalesce(tpot_us, 0)", "double precision"),
    Measure("tpot_count", "CASE WHEN tpot_us IS NULL THEN 0 ELSE 1 END"),
)

#: Sparse histograms: (prefix, raw column). The column `<prefix>_hist` holds (key, count) pairs, one
#: bigint each (`sketch.PAIR_SHIFT`, migration 0005).
HISTOGRAMS: tuple[tuple[str, str], ...] = (("lat", "latency_us"), ("ttft", "ttft_us"))


#: Columns of `usage_rollup_pending`: what the rollups need of a raw row.
PENDING_COLUMNS: tuple[str, ...] = (
    "start_time", *DIMENSIONS, "streaming", "cache_hit", "retries", "input_tokens", "output_tokens",
    "cache_read_tokens", "cache_write_tokens", "reasoning_tokens", "images", "audio_seconds",
    "video_seconds", "characters", "cost", "latency_us", "ttft_us", "itl_us", "tpot_us",
)


@dataclass(frozen=True)
class Rollup:
    """One rollup table and the width of its time buckets."""

    table: str
    width: str


ROLLUPS: tuple[Rollup, ...] = (
    Rollup("usage_1m", "1 minute"),
    Rollup("usage_1h", "1 hour"),
    Rollup("usage_1d", "1 day"),
)

#: Origin of the buckets: UTC midnight, so buckets never depend on a session time zone.
ORIGIN = "TIMESTAMPTZ '2000-01-01 00:00:00+00'"

#: dims_mask of the rows that keep every dimension.
ALL_DIMS = (1 << len(DIMENSIONS)) - 1


def mask_of(dims: Iterable[str]) -> int:
    """The dims_mask of a grouping set: bit (8 - i) for dimension i kept (PostgreSQL's GROUPING order)."""
    mask = 0
    for d in dims:
        mask |= 1 << (len(DIMENSIONS) - 1 - DIMENSIONS.index(d))
    return mask


#: Grouping sets stored in every rollup: all dimensions, each one alone, and none.
GROUPING_SETS: tuple[tuple[str, ...], ...] = (DIMENSIONS, *((d,) for d in DIMENSIONS), ())


def covering_mask(dims: Iterable[str]) -> int:
    """The narrowest stored grouping set that keeps every dimension in `dims`."""
    wanted = set(dims)
    for gset in sorted(GROUPING_SETS, key=len):
        if wanted <= set(gset):
            return mask_of(gset)
    return ALL_DIMS


def rollup_columns() -> list[str]:
    """Every column of a rollup table, in table order."""
    hist = [f"{p}_hist" for p, _ in HISTOGRAMS]
    return ["bucket", "dims_mask", *DIMENSIONS, *(m.column for m in MEASURES), *hist]


#: Packed copies of the histograms (`sketch.PACK_TAG`, migration 0007), written by compaction and
#: reset to NULL by every upsert: read-side copies, not maintained columns.
PACK_COLUMNS: tuple[str, ...] = tuple(f"{p}_pack" for p, _ in HISTOGRAMS)

#: The SQL bytea literal of `sketch.PACK_TAG`: an empty pack.
EMPTY_PACK_SQL = "'\\x" + sketch.PACK_TAG.hex() + "'::bytea"


def table_columns() -> list[str]:
    """Every column of a rollup table as stored on the PostgreSQL flavour: the maintained ones,
    then the packed copies."""
    return [*rollup_columns(), *PACK_COLUMNS]


def pair_sql(key: str, count: str) -> str:
    """SQL of one histogram pair element (`sketch.PAIR_SHIFT`), for writers and readers alike."""
    return f"(({key})::bigint << {sketch.PAIR_SHIFT}) | ({count})"


def _grouped_dims() -> str:
    """Select list of the dimensions under GROUPING SETS: absent ones as '' or 0, plus dims_mask."""
    cols = [f"{ALL_DIMS} - GROUPING({', '.join(DIMENSIONS)}) AS dims_mask"]
    for d in DIMENSIONS:
        empty = "0" if d == "status_code" else "''"
        cols.append(f"coalesce({d}, {empty}) AS {d}")
    return ", ".join(cols)


def _grouping_sets() -> str:
    return "GROUPING SETS (" + ", ".join(f"({', '.join(g)})" for g in GROUPING_SETS) + ")"


def _base_ctes(source: str) -> str:
    """One pass over the new rows: their minute, dimensions, measure terms and histogram keys,
    then per-minute sums and per-minute key counts at full dimensionality. Every rollup level
    and grouping set is derived from these, which are much smaller than the rows when traffic
    is live (many calls share a minute and a dimension combination)."""
    dims = ", ".join(DIMENSIONS)
    terms = ", ".join(f"{m.raw_expr} AS {m.column}" for m in MEASURES)
    keys = ", ".join(f"llmmeter_hist_key({col}) AS {p}_k" for p, col in HISTOGRAMS)
    sums = ", ".join(f"{m.summed(m.column)} AS {m.column}" for m in MEASURES)
    parts = [
        f"""nb AS (
    SELECT date_bin('1 minute', start_time, {ORIGIN}) AS minute, {dims}, {terms}, {keys} FROM {source})""",
        f"""nm AS (SELECT minute, {dims}, {sums} FROM nb GROUP BY minute, {dims})""",
    ]
    parts += [
        f"""nh_{p} AS (SELECT minute, {dims}, {p}_k AS k, count(*) AS c FROM nb
    WHERE {p}_k IS NOT NULL GROUP BY minute, {dims}, {p}_k)"""
        for p, _ in HISTOGRAMS
    ]
    return ",\n".join(parts)


def _upsert_cte(rollup: Rollup, finer: Rollup | None) -> str:
    """CTEs adding the new rows into one rollup table, every grouping set at once.

    The finest level groups the per-minute rows into every grouping set; each
    coarser level only re-buckets the level below it (same sets, one hash
    step), which is much cheaper than grouping sets again.
    A histogram is one array_agg of its (key, count) pairs (`sketch.PAIR_SHIFT`), in
    no particular order (sorting them cost most of the write). On conflict the new pairs are
    appended, so a key may appear more than once until `compact_sql` runs; readers
    add counts up by key.
    """
    t = rollup.table
    key = ", ".join(("bucket", "dims_mask", *DIMENSIONS))
    dims = ", ".join(DIMENSIONS)
    if finer is None:
        bucket = f"date_bin('{rollup.width}', minute, {ORIGIN})"
        sums = ", ".join(f"{m.summed(m.column)} AS {m.column}" for m in MEASURES)
        parts = [f"""{t}_agg AS (
    SELECT {bucket} AS bucket, {_grouped_dims()}, {sums}
    FROM nm GROUP BY 1, {_grouping_sets()})"""]
        parts += [f"""{t}_pairs_{p} AS (
    SELECT {bucket} AS bucket, {_grouped_dims()}, k, sum(c)::bigint AS c
    FROM nh_{p} GROUP BY 1, k, {_grouping_sets()})""" for p, _ in HISTOGRAMS]
    else:
        f = finer.table
        bucket = f"date_bin('{rollup.width}', bucket, {ORIGIN})"
        sums = ", ".join(f"{m.summed(m.column)} AS {m.column}" for m in MEASURES)
        parts = [f"""{t}_agg AS (
    SELECT {bucket} AS bucket, dims_mask, {dims}, {sums}
    FROM {f}_agg GROUP BY 1, dims_mask, {dims})"""]
        parts += [f"""{t}_pairs_{p} AS (
    SELECT {bucket} AS bucket, dims_mask, {dims}, k, sum(c)::bigint AS c
    FROM {f}_pairs_{p} GROUP BY 1, dims_mask, {dims}, k)""" for p, _ in HISTOGRAMS]
    joins = []
    hist_cols = []
    for prefix, _ in HISTOGRAMS:
        parts.append(f"""{t}_{prefix} AS (
    SELECT {key}, array_agg({pair_sql('k', 'c')}) AS pairs FROM {t}_pairs_{prefix} GROUP BY {key})""")
        joins.append(f"LEFT JOIN {t}_{prefix} AS {prefix} USING ({key})")
        hist_cols.append(f"coalesce({prefix}.pairs, '{{}}'::bigint[])")
    cols = rollup_columns()
    additive = ",\n        ".join(f"{m.column} = {t}.{m.column} + EXCLUDED.{m.column}" for m in MEASURES)
    # Appending is a C array concatenation; merging key by key here (an SQL function call per
    # conflicting row) took half the rollup time. Readers add counts up by key anyway, and
    # `compact_sql` folds repeated keys back together, set-based, once arrays grow long.
    merges = ",\n        ".join(
        [f"{p}_hist = {t}.{p}_hist || EXCLUDED.{p}_hist" for p, _ in HISTOGRAMS]
        + [f"{c} = NULL" for c in PACK_COLUMNS])  # stale now: the next compaction packs again
    agg_cols = ", ".join(f"a.{c}" for c in cols[: 2 + len(DIMENSIONS) + len(MEASURES)])
    parts.append(
        f"""{t}_up AS (
    INSERT INTO {t} ({", ".join(cols)})
    SELECT {agg_cols}, {", ".join(hist_cols)}
    FROM {t}_agg AS a {" ".join(joins)}
    ORDER BY {", ".join("a." + c for c in key.split(", "))}
    ON CONFLICT ({key}) DO UPDATE SET
        {additive},
        {merges})"""
    )
    return ",\n".join(parts)


def rollup_ctes(source: str) -> str:
    """CTEs that add the rows of the CTE `source` to every rollup table.

    Rows are upserted in key order so that concurrent writers lock rollup rows
    in the same order and cannot deadlock each other.
    """
    levels = [_upsert_cte(r, ROLLUPS[i - 1] if i else None) for i, r in enumerate(ROLLUPS)]
    return ",\n".join([_base_ctes(source), *levels])


#: dims_mask values of the stored grouping sets (an index condition on the leading key column).
STORED_MASKS: tuple[int, ...] = tuple(sorted({mask_of(g) for g in GROUPING_SETS}))


def compact_sql(rollup: Rollup) -> str:
    """One statement folding repeated histogram keys in the rows of the buckets holding start
    times $1 to $2 whose arrays are longer than $3 elements and that are not packed yet; it also
    writes their packs (`PACK_COLUMNS`). Returns the number of rows rewritten.

    Upserts append histogram pairs (see `_upsert_cte`), so a row that many chunks touch (the
    day's totals, say) grows by a few hundred pairs per chunk. Distinct keys are bounded (about
    2,600 for latencies up to a day), so a threshold a little above that rewrites each busy row
    once every several chunks, all rows in one set-based pass. A packed row has had no append
    since its last compaction, so it has nothing to fold. The folded pairs are written in key
    order (one key each, so ordering by the pair orders by key): a reader can take a row read
    alone as its group's histogram without merging (`histograms._alone_and_ordered`). Callers
    hold the rollup worker's lock: a concurrent append between the read and the update would
    be lost.
    """
    t = rollup.table
    key = ", ".join(("bucket", "dims_mask", *DIMENSIONS))
    masks = ", ".join(str(m) for m in STORED_MASKS)
    long_ = " OR ".join(f"cardinality({p}_hist) > $3" for p, _ in HISTOGRAMS)
    unpacked = " OR ".join(f"{c} IS NULL" for c in PACK_COLUMNS)
    parts = [f"""cand AS (
    SELECT {key}, {", ".join(f"{p}_hist" for p, _ in HISTOGRAMS)} FROM {t}
    WHERE dims_mask = ANY('{{{masks}}}'::smallint[])
      AND bucket >= date_bin('{rollup.width}', $1::timestamptz, {ORIGIN}) AND bucket <= $2
      AND ({long_}) AND ({unpacked})
    FOR UPDATE)"""]
    sets, folds = [], []
    folded = pair_sql(f"u.v >> {sketch.PAIR_SHIFT}", f"sum(u.v & {sketch.COUNT_MASK})::bigint")
    for p, _ in HISTOGRAMS:
        # each row's pairs folded on their own: sorting a few thousand pairs per row, not every
        # candidate row's pairs at once by the row's eleven-column key (that spilled to disk)
        folds.append(f"""LATERAL (
        SELECT array_agg(v ORDER BY v) AS h,
               {EMPTY_PACK_SQL} || string_agg(int8send(v), ''::bytea ORDER BY v) AS pk
        FROM (SELECT {folded} AS v
              FROM unnest(cand.{p}_hist) AS u(v) GROUP BY u.v >> {sketch.PAIR_SHIFT}) AS f) AS {p}""")
        sets.append(f"{p}_hist = coalesce(m.{p}_h, '{{}}'), {p}_pack = coalesce(m.{p}_pk, {EMPTY_PACK_SQL})")
    merged = ", ".join(f"{p}.h AS {p}_h, {p}.pk AS {p}_pk" for p, _ in HISTOGRAMS)
    keys = ", ".join(f"cand.{c}" for c in key.split(", "))
    match = " AND ".join(f"t.{c} = m.{c}" for c in key.split(", "))
    return f"""WITH {parts[0]},
done AS (
    UPDATE {t} AS t SET {", ".join(sets)}
    FROM (SELECT {keys}, {merged} FROM cand, {", ".join(folds)}) AS m
    WHERE {match}
    RETURNING 1)
SELECT count(*) FROM done"""
