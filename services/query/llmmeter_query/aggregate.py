"""The aggregation engine behind summaries, breakdowns, time series and aggregate exports.

A request becomes (window, filter, grouping, time bucket). The window is cut
into stretches (see `window.plan`): rollup stretches read the narrowest
grouping set that keeps the filtered and grouped dimensions plus the rows of
that stretch still queued for the rollups, raw stretches read
`usage_records`; sums are added up in SQL, histograms merged key by key.
Counts, tokens and cost are therefore exact; percentiles are exact when the
whole window was answered from raw rows and estimated (within 0.5%) from the
merged histograms otherwise, and the result says which.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg

from llmmeter_common import sketch
from llmmeter_common.errors import FieldViolation, InvalidArgument
from llmmeter_common.rollups import HISTOGRAMS, MEASURES, covering_mask
from llmmeter_query.filters import FIELDS, ROLLUP_COLUMNS, Filter
from llmmeter_query.window import Stretch, Window, plan, usable_levels

QUANTILES = (0.5, 0.75, 0.9, 0.95, 0.99)
RAW = "usage_records"
PENDING = "usage_rollup_pending"
_ORIGIN_SQL = "TIMESTAMPTZ '2000-01-01 00:00:00+00'"


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
        if key and all(c.isalnum() or c in "_.-" for c in key) and len(key) <= 64:
            return Grouping(name, f"coalesce(metadata->>'{key}', '')", None)
    column = FIELDS.get(name)
    if column is not None:
        return Grouping(name, column, frozenset({column}) if column in ROLLUP_COLUMNS else None)
    raise InvalidArgument(
        f"group_by: {name!r} is not a dimension, status_class or metadata.<key>",
        [FieldViolation("group_by", f"unknown dimension {name!r}")],
    )


@dataclass
class Stats:
    """Everything aggregated for one (group, time bucket)."""

    measures: dict[str, Any] = field(default_factory=dict)
    hists: dict[str, dict[int, int]] = field(default_factory=lambda: {p: {} for p, _ in HISTOGRAMS})
    exact: dict[tuple[str, float], float] = field(default_factory=dict)

    def get(self, column: str) -> Any:
        """A summed measure (0 when absent)."""
        return self.measures.get(column, 0)

    def add(self, other: Stats) -> None:
        """Fold another group into this one (for "other"); exact percentiles do not fold."""
        for k, v in other.measures.items():
            self.measures[k] = self.measures.get(k, 0) + v
        for p, hist in other.hists.items():
            mine = self.hists[p]
            for key, count in hist.items():
                mine[key] = mine.get(key, 0) + count
        self.exact = {}

    def percentile(self, prefix: str, q: float) -> float | None:
        """The q-quantile of latency (`lat`) or TTFT (`ttft`) in microseconds."""
        if (prefix, q) in self.exact:
            return self.exact[(prefix, q)]
        return sketch.quantile(self.hists[prefix], q)


Key = tuple[str, datetime | None]


@dataclass
class Aggregates:
    """Stats per (group value, bucket start); `exact` tells how percentiles were computed."""

    groups: dict[Key, Stats]
    exact: bool


class Aggregator:
    """Runs the aggregation queries on a pool."""

    def __init__(self, pool: asyncpg.Pool, exact_window: timedelta) -> None:
        self._pool = pool
        self._exact_window = exact_window

    def _stretches(self, window: Window, filt: Filter, group: Grouping | None,
                   bucket: timedelta | None) -> tuple[list[Stretch], int]:
        dims = set(filt.columns())
        rollups_ok = filt.rollup_compatible() and (group is None or group.dims is not None)
        if group is not None and group.dims is not None:
            dims |= group.dims
        small = window.end - window.start <= self._exact_window
        levels = usable_levels(bucket) if rollups_ok and not small else ()
        return plan(window.start, window.end, levels), covering_mask(dims)

    async def run(self, window: Window, filt: Filter, group: Grouping | None,
                  bucket: timedelta | None, fold_limit: int | None = None) -> Aggregates:
        """Aggregate; percentiles are exact when only raw rows were read and no groups fold.

        All statements of one call read one snapshot, so a row the rollup worker moves
        meanwhile is counted once in the sums and the histograms alike.
        """
        stretches, mask = self._stretches(window, filt, group, bucket)
        query = _Query(filt, group, bucket, stretches, mask)
        all_raw = all(s.level is None for s in stretches)
        async with self._pool.acquire() as conn, conn.transaction(isolation="repeatable_read",
                                                                 readonly=True):
            groups: dict[Key, Stats] = {}
            sql, params = query.measures()
            for row in await conn.fetch(sql, *params):
                groups[(row[0], row[1])] = Stats(
                    measures={m.column: _num(row[i + 2]) for i, m in enumerate(MEASURES)})
            exact = all_raw and (fold_limit is None or len({k[0] for k in groups}) <= fold_limit)
            if exact:
                sql, params = query.exact_percentiles()
                _add_exact(groups, list(await conn.fetch(sql, *params)))
            else:
                for prefix, col in HISTOGRAMS:
                    sql, params = query.histogram(prefix, col)
                    for g, tb, k, c in await conn.fetch(sql, *params):
                        stats = groups.get((g, tb))
                        if stats is not None:
                            stats.hists[prefix][k] = int(c)
        return Aggregates(groups, exact)


def _add_exact(groups: dict[Key, Stats], rows: list[asyncpg.Record]) -> None:
    for row in rows:
        stats = groups.get((row[0], row[1]))
        if stats is None:
            continue
        for i, (prefix, _) in enumerate(HISTOGRAMS):
            for q, v in zip(QUANTILES, row[2 + i] or (), strict=False):
                if v is not None:
                    stats.exact[(prefix, q)] = float(v)


def _num(v: Any) -> Any:
    """Sums come back as numeric; keep Decimal for money, int for whole numbers."""
    if isinstance(v, Decimal):
        exponent = v.as_tuple().exponent
        if isinstance(exponent, int) and exponent >= 0:
            return int(v)
    return v if v is not None else 0


class _Query:
    """Builds the UNION ALL over stretches for one aggregation."""

    def __init__(self, filt: Filter, group: Grouping | None, bucket: timedelta | None,
                 stretches: list[Stretch], mask: int) -> None:
        self.filt, self.group, self.bucket = filt, group, bucket
        self.stretches, self.mask = stretches, mask

    def _keys(self, time_col: str) -> str:
        g = self.group.expr if self.group else "''"
        if self.bucket is None:
            tb = "NULL::timestamptz"
        else:
            tb = f"date_bin('{int(self.bucket.total_seconds())} seconds', {time_col}, {_ORIGIN_SQL})"
        return f"{g} AS g, {tb} AS tb"

    def _where(self, s: Stretch, rollup: bool, params: list[Any]) -> str:
        params += [s.start, s.end]
        a, b = len(params) - 1, len(params)
        cond = self.filt.sql(params)
        if not rollup:
            return f"start_time >= ${a} AND start_time < ${b} AND {cond}"
        return f"dims_mask = {self.mask} AND bucket >= ${a} AND bucket < ${b} AND {cond}"

    def _sources(self) -> list[tuple[Stretch, str | None]]:
        """(stretch, rollup table) or (stretch, None) for rows read raw-style: the raw rows of raw
        stretches, and the rows of rollup stretches still queued for the rollups."""
        out: list[tuple[Stretch, str | None]] = []
        for s in self.stretches:
            if s.level is None:
                out.append((s, None))
            else:
                out += [(s, s.level.table), (s, PENDING)]
        return out

    def measures(self) -> tuple[str, list[Any]]:
        """Summed measures per (g, tb)."""
        params: list[Any] = []
        parts = []
        for s, table in self._sources():
            if table is None or table == PENDING:
                sums = ", ".join(f"sum({m.raw_expr}) AS {m.column}" for m in MEASURES)
                parts.append(f"SELECT {self._keys('start_time')}, {sums} FROM {table or RAW} "
                             f"WHERE {self._where(s, False, params)} GROUP BY 1, 2")
            else:
                sums = ", ".join(f"sum({m.column}) AS {m.column}" for m in MEASURES)
                parts.append(f"SELECT {self._keys('bucket')}, {sums} FROM {table} "
                             f"WHERE {self._where(s, True, params)} GROUP BY 1, 2")
        outer = ", ".join(f"sum({m.column})" for m in MEASURES)
        return (f"SELECT g, tb, {outer} FROM ({' UNION ALL '.join(parts)}) AS s GROUP BY g, tb", params)

    def histogram(self, prefix: str, raw_col: str) -> tuple[str, list[Any]]:
        """Merged histogram rows (g, tb, key, count)."""
        params: list[Any] = []
        parts = []
        for s, table in self._sources():
            if table is None or table == PENDING:
                parts.append(
                    f"SELECT {self._keys('start_time')}, llmmeter_hist_key({raw_col}) AS k, count(*) AS c "
                    f"FROM {table or RAW} WHERE {raw_col} IS NOT NULL AND {self._where(s, False, params)} "
                    "GROUP BY 1, 2, 3")
            else:
                parts.append(
                    f"SELECT {self._keys('bucket')}, u.k, sum(u.c) AS c FROM {table}, "
                    f"unnest({prefix}_keys, {prefix}_counts) AS u(k, c) "
                    f"WHERE {self._where(s, True, params)} GROUP BY 1, 2, 3")
        return (f"SELECT g, tb, k, sum(c) FROM ({' UNION ALL '.join(parts)}) AS s GROUP BY g, tb, k",
                params)

    def exact_percentiles(self) -> tuple[str, list[Any]]:
        """Exact nearest-rank percentiles per (g, tb), from raw rows only."""
        params: list[Any] = []
        qs = "ARRAY[" + ", ".join(str(q) for q in QUANTILES) + "]::float8[]"
        cols = ", ".join(f"percentile_disc({qs}) WITHIN GROUP (ORDER BY {c})" for _, c in HISTOGRAMS)
        parts = [f"SELECT {self._keys('start_time')}, {cols} FROM {RAW} "
                 f"WHERE {self._where(s, False, params)} GROUP BY 1, 2" for s in self.stretches]
        return " UNION ALL ".join(parts), params
