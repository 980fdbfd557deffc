"""The aggregation engine behind summaries, breakdowns, time series and aggregate exports.

A request becomes (window, filter, grouping, time bucket). The window is cut
into stretches (see `window.plan`): rollup stretches read the narrowest
grouping set that keeps the filtered and grouped dimensions plus the rows of
that stretch still queued for the rollups, raw stretches read
`usage_records` (the statements are spelt in `aggregate_sql`); sums are
added up in SQL. Histograms come back as arrays, only for the groups that
will be shown (see `Top`), and are merged and read in numpy (`histograms`).
Counts, tokens and cost are therefore exact; percentiles are exact when the
whole window was answered from raw rows and estimated (within 0.5%) from the
merged histograms otherwise, and the result says which.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import asyncpg

from llmmeter_common.errors import FieldViolation, InvalidArgument
from llmmeter_common.rollups import HISTOGRAMS, covering_mask
from llmmeter_query import horizons
from llmmeter_query.aggregate_sql import MEASURE_COLUMNS, QUANTILES, AggregateSql
from llmmeter_query.filter_syntax import FIELDS, METADATA_KEY, NON_TEXT_FIELDS, ROLLUP_COLUMNS, shown
from llmmeter_query.filters import Filter
from llmmeter_query.histograms import Collector
from llmmeter_query.local_days import Calendar, LocalDays
from llmmeter_query.snapshot_fetch import Statement, fetch_all
from llmmeter_query.window import Window, ceil_to, plan, rollup_buckets, split, usable_levels

#: Every percentile of both histograms (`lat`, `ttft`): what a summary or breakdown shows.
ALL_PERCENTILES: dict[str, tuple[float, ...]] = {p: QUANTILES for p, _ in HISTOGRAMS}
OTHER = "other"
#: The widest bucket an "up to now" window reads whole at its end (`Aggregator._query`). Today's
#: day bucket is still open: on TimescaleDB its continuous aggregate answers it in real time,
#: folding every group's hour histograms at query time (171 ms for 200 users at 10M records),
#: while the hours it spans are stored as they are read; on PostgreSQL, 24 hour rows a group
#: instead of one cost a few ms of merging.
OPEN_BUCKET_MAX = timedelta(hours=1)
#: Histogram rows (groups x rollup buckets) from which a read is split over two connections; below
#: it, the extra connection and snapshot import cost more than they save.
SPLIT_MIN_ROWS = 1000


@dataclass(frozen=True)
class Grouping:
    """What rows are grouped by: an SQL expression valid on raw rows (and rollups, if `dims`)."""

    name: str
    expr: str
    dims: frozenset[str] | None  # rollup columns needed; None when only raw rows can answer


def parse_group(name: str) -> Grouping | None:
    """A `group_by` value: a filter field, `status_class`, or `metadata.<key>`; "" for none."""
    if not name:
        return None
    if name == "status_class":
        return Grouping(name, "((status_code / 100)::text || 'xx')", frozenset({"status_code"}))
    if name.startswith("metadata."):
        key = name[len("metadata."):]
        if not METADATA_KEY.fullmatch(key):  # the filter's rule; the key is spliced into the SQL
            raise InvalidArgument(
                f"group_by: bad metadata key {shown(key)}: 1 to 64 of A-Z a-z 0-9 _ . -",
                [FieldViolation("group_by", "metadata.<key> with a key of 1 to 64 of A-Z a-z 0-9 _ . -")])
        return Grouping(name, f"coalesce(metadata->>'{key}', '')", None)
    column = FIELDS.get(name)
    if column is not None:
        expr = f"({column})::text" if name in NON_TEXT_FIELDS else column  # group values are strings
        return Grouping(name, expr, frozenset({column}) if column in ROLLUP_COLUMNS else None)
    raise InvalidArgument(
        f"group_by: {shown(name)} is not a dimension, status_class or metadata.<key>",
        [FieldViolation("group_by", f"unknown dimension {shown(name)}")],
    )


@dataclass
class Stats:
    """Everything aggregated for one (group, time bucket)."""

    measures: dict[str, Any] = field(default_factory=dict)
    quantiles: dict[tuple[str, float], float] = field(default_factory=dict)

    def get(self, column: str) -> Any:
        """A summed measure (0 when absent)."""
        return self.measures.get(column, 0)

    def add(self, other: Stats) -> None:
        """Fold another group's sums into this one (percentiles are computed after folding)."""
        for k, v in other.measures.items():
            self.measures[k] = self.measures.get(k, 0) + v

    def percentile(self, prefix: str, q: float) -> float | None:
        """The q-quantile (one of QUANTILES) of latency (`lat`) or TTFT (`ttft`) in microseconds."""
        return self.quantiles.get((prefix, q))


Key = tuple[str, datetime | None]


@dataclass(frozen=True)
class Top:
    """Which groups are shown, so that only their histograms are read.

    `order` ranks the group values from their summed measures; the first
    `limit` (0: all) get percentiles. With `fold`, the others are summed into
    one group "other", whose histogram is their own (when they are no more than the kept ones)
    or the total's minus the kept groups'.
    """

    limit: int
    order: Callable[[dict[Any, Stats]], list[Any]]
    fold: bool = False


@dataclass
class Aggregates:
    """Stats per (group value, bucket start); `exact` tells how percentiles were computed.

    `shown` lists the group values in `Top` order (kept ones, then "other"
    when folded); without a `Top` it is every group, unordered.
    """

    groups: dict[Key, Stats]
    exact: bool
    shown: list[Any] = field(default_factory=list)
    counted_from: datetime | None = None
    """Set when retention had dropped rows the window's start needed (`horizons`): the answer
    counts the window from here on."""


class Aggregator:
    """Runs the aggregation queries on a pool."""

    def __init__(self, pool: asyncpg.Pool, exact_window: timedelta, lanes: int = 2,
                 split_min_rows: int = SPLIT_MIN_ROWS) -> None:
        self._pool = pool
        self._exact_window = exact_window
        self._lanes = lanes
        self._split_min_rows = split_min_rows

    @property
    def pool(self) -> asyncpg.Pool:
        """The connection pool it reads with."""
        return self._pool

    def _query(self, window: Window, filt: Filter, group: Grouping | None, bucket: timedelta | None,
               days: LocalDays | None = None, open_end: bool = False) -> AggregateSql:
        """The query's plan; with `open_end` (no stored record starts at or after the window's
        end), the window's last rollup bucket, at most OPEN_BUCKET_MAX wide, is read whole: it
        holds nothing past the end."""
        dims = set(filt.columns())
        rollups_ok = _rollups_can_answer(filt, group)
        if group is not None and group.dims is not None:
            dims |= group.dims
        small = window.end - window.start <= self._exact_window
        days = Calendar.of(bucket, days).days if bucket is not None else None
        nesting = days.levels(window) if days is not None else usable_levels(bucket)
        # a level that keeps no set with these dimensions is skipped: finer levels or raw rows
        # answer its stretches
        levels = tuple(lv for lv in nesting if covering_mask(dims, lv.table) is not None)
        if not rollups_ok or small:
            levels = ()
        width = min(levels[0].width, OPEN_BUCKET_MAX) if levels else None
        end = ceil_to(window.end, width) if open_end and width is not None else window.end
        return AggregateSql(filt, group, bucket, plan(window.start, end, levels), frozenset(dims), days)

    async def run(self, window: Window, filt: Filter, group: Grouping | None, bucket: timedelta | None,
                  *, top: Top | None = None,
                  percentiles: Mapping[str, Sequence[float]] = ALL_PERCENTILES,
                  measures: Sequence[str] | None = None, days: LocalDays | None = None) -> Aggregates:
        """Aggregate; only the `percentiles` asked for ({prefix: quantiles}) are computed, exactly
        when only raw rows were read and no groups fold, and only the `measures` named (all when
        None; request_count always, `Top` orders may need it). Every summed column costs: numeric
        sums especially, and a series chart needs one or two.

        All statements of one call read one snapshot, so a row the rollup worker moves
        meanwhile is counted once in the sums and the histograms alike. With `days`, day buckets
        are that time zone's local days.
        """
        query = self._query(window, filt, group, bucket, days)
        async with self._pool.acquire() as conn, conn.transaction(isolation="repeatable_read",
                                                                 readonly=True):
            # "Up to now" windows end inside a bucket the rollups hold up to now: read it whole
            # rather than its minutes and seconds from finer levels and raw rows
            open_end = bool(query.stretches) and _ends_finer(query) and await horizons.nothing_after(
                conn, window.end)
            if open_end:
                query = self._query(window, filt, group, bucket, days, open_end)
            counted_from = await horizons.counted_from(conn, query.stretches, datetime.now(UTC))
            groups: dict[Key, Stats] = {}
            columns = MEASURE_COLUMNS if measures is None else _measure_subset(measures)
            sql, params = query.measures(columns)
            for row in await conn.fetch(sql, *params):
                groups[(row[0], row[1])] = Stats(measures=dict(zip(columns, row[2:], strict=True)))
            shown, kept, fold = _choose(groups, top)
            omitted = list(dict.fromkeys(g for g, _ in groups if g not in (kept or ()))) if fold else []
            if fold:
                groups = _fold(groups, kept)
            exact = not fold and all(s.level is None for s in query.stretches)
            prefixes = [p for p, qs in percentiles.items() if qs]
            if not prefixes or not groups:
                pass
            elif exact:
                sql, params = query.exact_percentiles()
                _add_exact(groups, list(await conn.fetch(sql, *params)))
            else:
                collectors = {p: Collector() for p in prefixes}
                only = None if kept is None else list(kept)
                reads = self._parts(query, len({g for g, _ in groups}) if only is None else len(only))
                statements: list[Statement] = [q.histograms(prefixes, only) for q in reads]
                # "other": the folded groups' own histograms when they are no more than the kept
                # ones (a series of 11 models, top 10), else the total minus the kept groups (a
                # top 10 of 200 users), whichever reads and merges fewer histograms
                subtract = fold and len(omitted) > len(kept or ())
                if subtract:
                    total = self._query(window, filt, None, bucket, days, open_end)
                    statements += [q.histograms(prefixes, None) for q in self._parts(total, 1)]
                elif fold:
                    statements += [q.histograms(prefixes, omitted) for q in self._parts(query, len(omitted))]
                results = await fetch_all(self._pool, conn, statements, self._lanes)
                for rows in results[: len(reads)]:
                    _collect(collectors, rows, subtract)
                for rows in results[len(reads):]:
                    _collect(collectors, rows, False, OTHER)
                _read_quantiles(groups, collectors, percentiles)
        return Aggregates(groups, exact, shown, counted_from)

    def _parts(self, query: AggregateSql, groups: int) -> list[AggregateSql]:
        """The query cut by time into one part per lane when it reads enough histogram rows."""
        if self._lanes < 2 or groups * rollup_buckets(query.stretches) < self._split_min_rows:
            return [query]
        return [query.over(part) for part in split(query.stretches, self._lanes)]


def _ends_finer(query: AggregateSql) -> bool:
    """Whether the plan's last stretch is finer than its coarsest rollup level (raw rows count as
    finest): only then can reading the last bucket whole save anything."""
    levels = [s.level for s in query.stretches if s.level is not None]
    last = query.stretches[-1].level
    return bool(levels) and (last is None or last.width < max(lv.width for lv in levels))


def _rollups_can_answer(filt: Filter, group: Grouping | None) -> bool:
    """Whether the rollups keep every field the filter tests and the grouping needs."""
    return filt.rollup_compatible() and (group is None or group.dims is not None)


def _measure_subset(names: Sequence[str]) -> tuple[str, ...]:
    """The named measures plus request_count, in MEASURES order; an unknown name is a bug."""
    unknown = set(names) - set(MEASURE_COLUMNS)
    if unknown:
        raise ValueError(f"not rollup measures: {sorted(unknown)}")
    return tuple(c for c in MEASURE_COLUMNS if c in names or c == "request_count")


def _choose(groups: dict[Key, Stats], top: Top | None) -> tuple[list[Any], set[Any] | None, bool]:
    """(group values shown, the ones whose histograms to read (None: all), whether to fold)."""
    if top is None:
        return list(dict.fromkeys(g for g, _ in groups)), None, False
    totals: dict[Any, Stats] = {}
    for (g, _), s in groups.items():
        totals.setdefault(g, Stats()).add(s)
    ranked = top.order(totals)
    if top.limit <= 0 or len(ranked) <= top.limit:
        return ranked, None, False
    kept = ranked[: top.limit]
    return ([*kept, OTHER] if top.fold else kept), set(kept), top.fold


def _fold(groups: dict[Key, Stats], kept: set[Any] | None) -> dict[Key, Stats]:
    out: dict[Key, Stats] = {}
    for (g, tb), s in groups.items():
        key = (g if kept is None or g in kept else OTHER, tb)
        if key not in out:
            out[key] = Stats()
        out[key].add(s)
    return out


def _collect(collectors: dict[str, Collector], rows: list[asyncpg.Record], subtract: bool,
             rename: str | None = None) -> None:
    """Feed histogram rows (g, tb, then keys and counts per prefix) to the collectors; with `subtract`,
    also take each from "other" (which the total is added to)."""
    if not rows:
        return
    groups = [(rename if rename is not None else row[0], row[1]) for row in rows]
    for i, coll in enumerate(collectors.values()):
        blobs = [row[2 + i] for row in rows]
        coll.add_sent(groups, blobs)
        if subtract:
            coll.add_sent([(OTHER, row[1]) for row in rows], blobs, sign=-1)


def _read_quantiles(groups: dict[Key, Stats], collectors: dict[str, Collector],
                    percentiles: Mapping[str, Sequence[float]]) -> None:
    for prefix, coll in collectors.items():
        qs = percentiles[prefix]
        for key, values in coll.quantiles(qs).items():
            stats = groups.get(cast(Key, key))
            if stats is None:
                continue
            for q, v in zip(qs, values, strict=True):
                if v is not None:
                    stats.quantiles[(prefix, q)] = v


def _add_exact(groups: dict[Key, Stats], rows: list[asyncpg.Record]) -> None:
    for row in rows:
        stats = groups.get((row[0], row[1]))
        if stats is None:
            continue
        for i, (prefix, _) in enumerate(HISTOGRAMS):
            for q, v in zip(QUANTILES, row[2 + i] or (), strict=False):
                if v is not None:
                    stats.quantiles[(prefix, q)] = float(v)
