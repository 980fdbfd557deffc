"""The SQL of one aggregation: a UNION ALL over the window's stretches (see `window.plan`).

Kept apart from `aggregate`, which decides what to read and merges the answers: this module only
spells the statements. A rollup stretch reads the relation of the narrowest grouping set keeping
the filtered and grouped dimensions (`rollups.set_relation`, one relation per set, so that
TimescaleDB plans one continuous aggregate rather than a level's eleven) plus the stretch's rows
still queued for the rollups; a raw stretch reads `usage_records`.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from llmmeter_common.rollups import (
    EMPTY_HIST_SQL,
    HISTOGRAMS,
    MEASURES,
    covering_mask,
    one_elem_sql,
    set_relation,
)
from llmmeter_query.filters import Filter
from llmmeter_query.local_days import LocalDays
from llmmeter_query.window import Stretch

if TYPE_CHECKING:
    from llmmeter_query.aggregate import Grouping

QUANTILES = (0.5, 0.75, 0.9, 0.95, 0.99)
MEASURE_COLUMNS = tuple(m.column for m in MEASURES)
RAW = "usage_records"
PENDING = "usage_rollup_pending"
_ORIGIN_SQL = "TIMESTAMPTZ '2000-01-01 00:00:00+00'"


class AggregateSql:
    """Builds the UNION ALL over stretches for one aggregation."""

    def __init__(self, filt: Filter, group: Grouping | None, bucket: timedelta | None,
                 stretches: list[Stretch], dims: frozenset[str], days: LocalDays | None = None) -> None:
        self.filt, self.group, self.bucket, self.days = filt, group, bucket, days
        self.stretches, self.dims = stretches, dims

    def over(self, stretches: list[Stretch]) -> AggregateSql:
        """The same query over other stretches (a part of this one's)."""
        return AggregateSql(self.filt, self.group, self.bucket, stretches, self.dims, self.days)

    def _keys(self, time_col: str) -> str:
        g = self.group.expr if self.group else "''"
        if self.bucket is None:
            tb = "NULL::timestamptz"
        elif self.days is not None:
            tb = f"date_trunc('day', {time_col}, {self.days.sql})"
        else:
            tb = f"date_bin('{int(self.bucket.total_seconds())} seconds', {time_col}, {_ORIGIN_SQL})"
        return f"{g} AS g, {tb} AS tb"

    def _where(self, s: Stretch, rollup: bool, params: list[Any]) -> str:
        params += [s.start, s.end]
        a, b = len(params) - 1, len(params)
        cond = self.filt.sql(params)
        if not rollup or s.level is None:
            return f"start_time >= ${a} AND start_time < ${b} AND {cond}"
        return f"bucket >= ${a} AND bucket < ${b} AND {cond}"

    def _sources(self) -> list[tuple[Stretch, str | None]]:
        """(stretch, relation of the rollup set to read) or (stretch, None) for rows read
        raw-style: the raw rows of raw stretches, and the rows of rollup stretches still queued
        for the rollups."""
        out: list[tuple[Stretch, str | None]] = []
        for s in self.stretches:
            if s.level is None:
                out.append((s, None))
            else:
                mask = covering_mask(self.dims, s.level.table)  # not None: `plan` had only such levels
                assert mask is not None
                out += [(s, set_relation(s.level.table, mask)), (s, PENDING)]
        return out

    def measures(self, columns: Sequence[str] = MEASURE_COLUMNS) -> tuple[str, list[Any]]:
        """Summed measures (`columns`, in that order) per (g, tb)."""
        params: list[Any] = []
        parts = []
        chosen = [m for c in columns for m in MEASURES if m.column == c]
        for s, table in self._sources():
            if table is None or table == PENDING:
                sums = ", ".join(f"{m.summed(m.raw_expr)} AS {m.column}" for m in chosen)
                parts.append(f"SELECT {self._keys('start_time')}, {sums} FROM {table or RAW} "
                             f"WHERE {self._where(s, False, params)} GROUP BY 1, 2")
            else:  # rollup rows go straight to the one outer aggregation
                cols = ", ".join(m.column for m in chosen)
                parts.append(f"SELECT {self._keys('bucket')}, {cols} FROM {table} "
                             f"WHERE {self._where(s, True, params)}")
        outer = ", ".join(m.summed(m.column) for m in chosen)
        return (f"SELECT g, tb, {outer} FROM ({' UNION ALL '.join(parts)}) AS s GROUP BY g, tb", params)

    def histograms(self, prefixes: Sequence[str], only: list[Any] | None) -> tuple[str, list[Any]]:
        """Histogram pieces (g, tb, then per prefix a histogram in `sketch`'s format): rollup rows
        as stored, raw rows one element (key, 1) each per (g, tb). With `only`, just the rows of
        those group values."""
        params: list[Any] = []
        parts = []
        cols = dict(HISTOGRAMS)
        for s, table in self._sources():
            rollup = table is not None and table != PENDING
            cond = self._where(s, rollup, params)
            if only is not None and self.group is not None:
                params.append(only)
                cond += f" AND ({self.group.expr}) = ANY(${len(params)})"
            if rollup:
                arrays = ", ".join(f"{p}_hist" for p in prefixes)
                parts.append(f"SELECT {self._keys('bucket')}, {arrays} FROM {table} WHERE {cond}")
            else:
                arrays = ", ".join(
                    f"coalesce(string_agg({one_elem_sql(f'llmmeter_hist_key({cols[p]})')}, ''::bytea) "
                    f"FILTER (WHERE {cols[p]} IS NOT NULL), {EMPTY_HIST_SQL})"
                    for p in prefixes)
                parts.append(f"SELECT {self._keys('start_time')}, {arrays} FROM {table or RAW} "
                             f"WHERE {cond} GROUP BY 1, 2")
        return " UNION ALL ".join(parts), params

    def exact_percentiles(self) -> tuple[str, list[Any]]:
        """Exact nearest-rank percentiles per (g, tb), from raw rows only."""
        params: list[Any] = []
        qs = "ARRAY[" + ", ".join(str(q) for q in QUANTILES) + "]::float8[]"
        cols = ", ".join(f"percentile_disc({qs}) WITHIN GROUP (ORDER BY {c})" for _, c in HISTOGRAMS)
        parts = [f"SELECT {self._keys('start_time')}, {cols} FROM {RAW} "
                 f"WHERE {self._where(s, False, params)} GROUP BY 1, 2" for s in self.stretches]
        return " UNION ALL ".join(parts), params
