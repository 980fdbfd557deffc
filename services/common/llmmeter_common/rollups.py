"""The rollup tables' shape, in one place, and the SQL that keeps them exact.

The PostgreSQL path has no continuous aggregates. Each stored batch also
writes its newly inserted rows (the columns the rollups need) to
`usage_rollup_pending` in the same transaction; a background worker moves
pending rows into the minute, hour and day rollups, deleting them in the same
transaction. So at every moment each stored record is counted exactly once,
either in the rollups or in the pending table, and queries read both. The
grouping dimensions and the measures are listed here once; the SQL is
generated from them, the query side reads the same names, and a test checks
them against the migrations (both flavours). The PostgreSQL flavour's worker
aggregates in numpy (`llmmeter_ingest.rollup_agg`) from the same definitions;
the SQL here is what it is tested against.
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

#: Histograms: (prefix, raw column). The column `<prefix>_hist` is a bytea in `sketch`'s one
#: format (4-byte elements `key << sketch.COUNT_BITS | count`, migration 0013) on both flavours.
HISTOGRAMS: tuple[tuple[str, str], ...] = (("lat", "latency_us"), ("ttft", "ttft_us"))


#: Columns of `usage_rollup_pending`: what the rollups need of a raw row.
PENDING_COLUMNS: tuple[str, ...] = (
    "start_time", *DIMENSIONS, "streaming", "cache_hit", "retries", "input_tokens", "output_tokens",
    "cache_read_tokens", "cache_write_tokens", "reasoning_tokens", "images", "audio_seconds",
    "video_seconds", "characters", "cost", "latency_us", "ttft_us", "itl_us", "tpot_us",
)

#: dims_mask of the rows that keep every dimension.
ALL_DIMS = (1 << len(DIMENSIONS)) - 1


def mask_of(dims: Iterable[str]) -> int:
    """The dims_mask of a grouping set: bit (8 - i) for dimension i kept (PostgreSQL's GROUPING order)."""
    mask = 0
    for d in dims:
        mask |= 1 << (len(DIMENSIONS) - 1 - DIMENSIONS.index(d))
    return mask


_SINGLES: tuple[tuple[str, ...], ...] = tuple((d,) for d in DIMENSIONS)
_ALL_BUT_USER: tuple[str, ...] = tuple(d for d in DIMENSIONS if d != "user_name")


@dataclass(frozen=True)
class Rollup:
    """One rollup table, the width of its time buckets and the grouping sets it stores.

    Which sets a level keeps is what it costs: at a fine level nearly every record is its own
    histogram element in every set, so the minute level keeps only the sets read per minute;
    the wide multi-dimension sets live where buckets hold many records (hours, days). A query
    reads, per level, the narrowest set keeping the dimensions it filters and groups on, and
    skips a level that has none (`covering_mask`): the next finer level, or raw rows, answer
    those stretches instead.
    """

    table: str
    width: str
    sets: tuple[tuple[str, ...], ...]

    @property
    def masks(self) -> tuple[int, ...]:
        """dims_mask of every stored set, ascending."""
        return tuple(sorted({mask_of(g) for g in self.sets}))


ROLLUPS: tuple[Rollup, ...] = (
    # Per-minute charts of the last day or two: overall, by model, failures by error type. Kept
    # about as long as raw rows (LLMMETER_INGEST_MINUTE_RETENTION_DAYS), which answer the rest.
    Rollup("usage_1m", "1 minute", ((), ("model",), ("error_type",))),
    # Kept LLMMETER_INGEST_ROLLUP_RETENTION_DAYS: every dimension alone, and every combination
    # but the user; per-user questions combined with other dimensions come from days, or raw rows.
    Rollup("usage_1h", "1 hour", ((), *_SINGLES, _ALL_BUT_USER)),
    Rollup("usage_1d", "1 day", ((), *_SINGLES, DIMENSIONS)),
)

#: Origin of the buckets: UTC midnight, so buckets never depend on a session time zone.
ORIGIN = "TIMESTAMPTZ '2000-01-01 00:00:00+00'"


def rollup(table: str) -> Rollup:
    """The rollup level stored in `table`."""
    return next(r for r in ROLLUPS if r.table == table)


def covering_mask(dims: Iterable[str], table: str) -> int | None:
    """The narrowest set of rollup `table` keeping every dimension in `dims`; None when it keeps
    no such set (that level cannot answer)."""
    wanted = set(dims)
    fits = sorted((len(g), mask_of(g)) for g in rollup(table).sets if wanted <= set(g))
    return fits[0][1] if fits else None


def set_relation(table: str, mask: int) -> str:
    """The relation holding only rollup `table`'s rows of one grouping set (migration 0016), with
    every rollup column. Reading it instead of `table WHERE dims_mask = mask` spares TimescaleDB
    planning the level's other continuous aggregates; on PostgreSQL it is that very filter."""
    return f"{table}_set{mask}"


def rollup_columns() -> list[str]:
    """Every column of a rollup table, in table order."""
    hist = [f"{p}_hist" for p, _ in HISTOGRAMS]
    return ["bucket", "dims_mask", *DIMENSIONS, *(m.column for m in MEASURES), *hist]


def hist_sql(key: str, count: str) -> str:
    """SQL of the stored histogram elements of one (key, count), for writers and readers alike."""
    return f"llmmeter_hist_elems({key}, {count})"


def one_elem_sql(key: str) -> str:
    """SQL of the element of one record (count 1): the expression `llmmeter_hist_elems` computes,
    inline, because a raw read calls it per row (a function call per row cost 3x the read)."""
    return f"substring(int8send((({key})::bigint << {sketch.COUNT_BITS}) | 1) FROM 5 FOR 4)"


#: The SQL of an empty histogram.
EMPTY_HIST_SQL = "''::bytea"


def _grouped_dims(r: Rollup) -> str:
    """Select list of dims_mask and the dimensions under the level's GROUPING SETS: a dimension a
    row's set does not keep is '' or 0 (always, for one no set of the level keeps)."""
    used = {d for g in r.sets for d in g}
    bits = [f"(CASE WHEN GROUPING({d}) = 0 THEN {mask_of([d])} ELSE 0 END)" for d in DIMENSIONS if d in used]
    cols = [f"({' + '.join(bits) or '0'})::smallint AS dims_mask"]
    for d in DIMENSIONS:
        empty = "0" if d == "status_code" else "''"
        cols.append(f"coalesce({d}, {empty}) AS {d}" if d in used else f"{empty} AS {d}")
    return ", ".join(cols)


def _grouping_sets(r: Rollup) -> str:
    return "GROUPING SETS (" + ", ".join(f"({', '.join(g)})" for g in r.sets) + ")"


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
    SELECT date_bin('1 minute', start_time, {ORIGIN}) AS bucket, {dims}, {terms}, {keys} FROM {source})""",
        f"""full_usage_1m AS (SELECT bucket, {dims}, {sums} FROM nb GROUP BY bucket, {dims})""",
    ]
    parts += [
        f"""keys_usage_1m_{p} AS (SELECT bucket, {dims}, {p}_k AS k, count(*) AS c FROM nb
    WHERE {p}_k IS NOT NULL GROUP BY bucket, {dims}, {p}_k)"""
        for p, _ in HISTOGRAMS
    ]
    return ",\n".join(parts)


def _upsert_cte(r: Rollup, finer: Rollup | None) -> str:
    """CTEs adding the new rows into one rollup table, every grouping set of it at once.

    Each level first re-buckets the full-dimension rows of the level below (one hash step over
    rows much fewer than records), then groups those into its own sets. A histogram is the
    elements of its (key, count)s in no particular order (sorting them cost most of the write).
    On conflict the new elements are appended, so a key may appear more than once until
    `compact_sql` runs; readers add counts up by key.
    """
    t = r.table
    key = ", ".join(("bucket", "dims_mask", *DIMENSIONS))
    dims = ", ".join(DIMENSIONS)
    parts = []
    if finer is not None:
        f = finer.table
        bucket = f"date_bin('{r.width}', bucket, {ORIGIN})"
        sums = ", ".join(f"{m.summed(m.column)} AS {m.column}" for m in MEASURES)
        parts.append(f"""full_{t} AS (
    SELECT {bucket} AS bucket, {dims}, {sums} FROM full_{f} GROUP BY 1, {dims})""")
        parts += [f"""keys_{t}_{p} AS (
    SELECT {bucket} AS bucket, {dims}, k, sum(c)::bigint AS c FROM keys_{f}_{p} GROUP BY 1, {dims}, k)"""
                  for p, _ in HISTOGRAMS]
    sums = ", ".join(f"{m.summed(m.column)} AS {m.column}" for m in MEASURES)
    parts.append(f"""{t}_agg AS (
    SELECT bucket, {_grouped_dims(r)}, {sums} FROM full_{t} GROUP BY bucket, {_grouping_sets(r)})""")
    joins = []
    hist_cols = []
    for prefix, _ in HISTOGRAMS:
        parts.append(f"""{t}_{prefix} AS (
    SELECT {key}, string_agg({hist_sql('k', 'c')}, ''::bytea) AS h FROM (
        SELECT bucket, {_grouped_dims(r)}, k, sum(c)::bigint AS c
        FROM keys_{t}_{prefix} GROUP BY bucket, k, {_grouping_sets(r)}) AS s
    GROUP BY {key})""")
        joins.append(f"LEFT JOIN {t}_{prefix} AS {prefix} USING ({key})")
        hist_cols.append(f"coalesce({prefix}.h, {EMPTY_HIST_SQL})")
    cols = rollup_columns()
    agg_cols = ", ".join(f"a.{c}" for c in cols[: 2 + len(DIMENSIONS) + len(MEASURES)])
    parts.append(
        f"""{t}_up AS (
    INSERT INTO {t} ({", ".join(cols)})
    SELECT {agg_cols}, {", ".join(hist_cols)}
    FROM {t}_agg AS a {" ".join(joins)}
    ORDER BY {", ".join("a." + c for c in key.split(", "))}
    ON CONFLICT ({key}) DO UPDATE SET
        {conflict_sql(t)})"""
    )
    return ",\n".join(parts)


def conflict_sql(table: str) -> str:
    """The SET list of an upsert into rollup `table` meeting a row already there: measures added,
    histogram elements appended (for the SQL path and the rollup worker's numpy path alike).

    Appending is a byte concatenation; merging key by key here took half the rollup time.
    Readers add counts up by key anyway, and `compact_sql` folds repeated keys back together,
    set-based, once histograms grow long.
    """
    additive = [f"{m.column} = {table}.{m.column} + EXCLUDED.{m.column}" for m in MEASURES]
    merges = [f"{p}_hist = {table}.{p}_hist || EXCLUDED.{p}_hist" for p, _ in HISTOGRAMS]
    return ",\n        ".join(additive + merges)


def rollup_ctes(source: str) -> str:
    """CTEs that add the rows of the CTE `source` to every rollup table.

    Rows are upserted in key order so that concurrent writers lock rollup rows
    in the same order and cannot deadlock each other.
    """
    levels = [_upsert_cte(r, ROLLUPS[i - 1] if i else None) for i, r in enumerate(ROLLUPS)]
    return ",\n".join([_base_ctes(source), *levels])


def compact_sql(r: Rollup) -> str:
    """One statement folding repeated histogram keys in the rows of the buckets holding start
    times $1 to $2 whose histograms hold more than $3 elements. Returns the rows rewritten.

    Upserts append elements (see `_upsert_cte`), so a row that many chunks touch (the day's
    totals, say) grows by a few hundred elements per chunk. Distinct keys are bounded (about
    2,600 for latencies up to a day), so a threshold a little above that rewrites each busy row
    once every several chunks, all rows in one set-based pass. Folded histograms are in key
    order: a reader can take a row read alone as its group's histogram without merging
    (`histograms._alone_and_ordered`). Callers hold the rollup worker's lock: a concurrent
    append between the read and the update would be lost.
    """
    t = r.table
    masks = ", ".join(str(m) for m in r.masks)
    long_ = " OR ".join(f"length({p}_hist) > $3 * {sketch.ELEM_BYTES}" for p, _ in HISTOGRAMS)
    sets = ", ".join(f"{p}_hist = llmmeter_hist_fold({p}_hist)" for p, _ in HISTOGRAMS)
    return f"""WITH done AS (
    UPDATE {t} SET {sets}
    WHERE dims_mask = ANY('{{{masks}}}'::smallint[])
      AND bucket >= date_bin('{r.width}', $1::timestamptz, {ORIGIN}) AND bucket <= $2
      AND ({long_})
    RETURNING 1)
SELECT count(*) FROM done"""
