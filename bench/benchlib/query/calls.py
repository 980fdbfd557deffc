"""The five measured query-service calls, each timed and checked against its plain-SQL answer.

A fast answer only counts if it is the right one: counts, tokens and cost must equal plain SQL
over the raw rows (the run fails otherwise), log pages must hold the same request ids, and the
percentiles' relative error against percentile_disc is collected for the report. The SQL is
timed too, so the service's speedup over a raw scan can be stated.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from ..harness import BenchFailure, keyed_sync_channel, log
from ..timing import time_sql, time_sync
from .baselines import (
    BREAKDOWN_SQL,
    DETAIL_SQL,
    LOG_FILTER_MODEL,
    LOG_KEYSET_SQL,
    LOG_OFFSET_SQL,
    SERIES_CHECK_SQL,
    SERIES_SQL,
    SUMMARY_SQL,
)


class Errors:
    """Worst relative percentile error, and where."""

    def __init__(self) -> None:
        self.worst = 0.0
        self.where = ""
        self.count = 0
        self.by_q: dict[str, float] = {}

    def add(self, label: str, kind: str, q: str, exact_us: Any, got_ms: float) -> None:
        """Compare one of the service's percentiles (ms) with the exact one (µs); no data, no error."""
        if exact_us is None:
            return
        exact = float(exact_us) / 1000
        if exact <= 0:
            return
        err = abs(got_ms - exact) / exact
        self.count += 1
        key = f"{kind} {q}"
        self.by_q[key] = max(self.by_q.get(key, 0.0), err)
        if err > self.worst:
            self.worst, self.where = err, f"{label} {key}: {got_ms:.3f} ms vs exact {exact:.3f} ms"

    def result(self) -> dict[str, Any]:
        """What the report and the goal need: the worst error, where, over how many values."""
        return {"worst": round(self.worst, 6), "where": self.where, "compared": self.count,
                "worst_by_quantile": {k: round(v, 6) for k, v in sorted(self.by_q.items())}}


def _check(cond: bool, what: str) -> None:
    if not cond:
        raise BenchFailure(f"answer mismatch: {what}")


def _cost_eq(a: float, b: Decimal) -> bool:
    return abs(a - float(b)) <= 1e-9 * max(1.0, abs(float(b)))


def _ts(t: datetime) -> Any:
    from google.protobuf import timestamp_pb2

    out = timestamp_pb2.Timestamp()
    out.FromDatetime(t)
    return out


class _Session:
    """What every call uses: the service's stub, a baseline connection on its own event loop (the
    stubs are synchronous), the windows, the repetitions, and the percentile errors so far."""

    def __init__(self, addr: str, dsn: str, end: datetime, days: int, args: argparse.Namespace) -> None:
        import asyncpg

        from llmmeter.v1 import query_pb2_grpc

        self.args, self.end, self.days = args, end, days
        self.start30, self.start7 = end - timedelta(days=days), end - timedelta(days=7)
        self.reps, self.warm, self.breps = args.reps, args.warmups, args.baseline_reps
        options = [("grpc.max_receive_message_length", 64 << 20)]
        self.channel = keyed_sync_channel(addr, options)
        self.stub = query_pb2_grpc.QueryServiceStub(self.channel)
        self.errs = Errors()
        self.loop = asyncio.new_event_loop()
        self.conn = self.loop.run_until_complete(asyncpg.connect(dsn))

    def sql(self, q: str, params: list[Any], reps: int | None = None,
            warm: int = 1) -> tuple[dict[str, Any], Any]:
        """Time a baseline (by default `--baseline-reps` runs after one warm-up); its timing and rows."""
        return self.loop.run_until_complete(
            time_sql(self.conn, q, params, warm, self.breps if reps is None else reps))

    def close(self) -> None:
        """Release the connection, its loop and the channel, also after a failed call."""
        self.loop.run_until_complete(self.conn.close())
        self.loop.close()
        self.channel.close()


def measure(addr: str, dsn: str, end: datetime, days: int, args: argparse.Namespace) -> dict[str, Any]:
    """Time and check every call in turn; the result's entries for them, in report order."""
    s = _Session(addr, dsn, end, days, args)
    res: dict[str, Any] = {}
    try:
        res["summary"] = _summary(s)
        res["series"] = _series(s)
        res["breakdown"] = _breakdown(s)
        pages, last_page = _log_pages(s)
        res.update(pages)
        res["detail"] = _detail(s, last_page)
        res["percentile_error"] = s.errs.result()
    finally:
        s.close()
    return res


def _summary(s: _Session) -> dict[str, Any]:
    """1. GetSummary over the whole month."""
    from llmmeter.v1 import query_pb2

    sreq = query_pb2.GetSummaryRequest(start_time=_ts(s.start30), end_time=_ts(s.end))
    log(f"1/5 GetSummary over {s.days} days")
    svc, resp = time_sync(lambda: s.stub.GetSummary(sreq, timeout=120), s.warm, s.reps)
    base, rows = s.sql(SUMMARY_SQL, [s.start30, s.end])
    got, b = resp.summary, rows[0]
    for f in ("request_count", "success_count", "input_tokens", "output_tokens", "cache_read_tokens",
              "cache_write_tokens", "reasoning_tokens", "images"):
        _check(getattr(got, f) == b[f], f"summary {f}: service {getattr(got, f)} != SQL {b[f]}")
    _check(Decimal(got.cost_exact) == b["cost"], f"summary cost {got.cost_exact} != SQL {b['cost']}")
    s.errs.add("summary", "latency", "p95", b["lat"][1], got.latency_p95_ms)
    s.errs.add("summary", "ttft", "p95", b["ttft"][1], got.ttft_p95_ms)
    return {"service": svc, "sql": base, "method": query_pb2.PercentileMethod.Name(got.percentile_method)}


def _series(s: _Session) -> dict[str, Any]:
    """2. 7-day hourly p95 latency by model; every point of every percentile is checked (untimed)."""
    from llmmeter.v1 import query_pb2

    start7, end = s.start7, s.end
    log("2/5 GetTimeSeries: 7 days, hourly, latency p95 by model")
    treq = query_pb2.GetTimeSeriesRequest(start_time=_ts(start7), end_time=_ts(end), granularity="1h",
                                         metrics=[query_pb2.METRIC_LATENCY_P95], group_by="model")
    svc, resp = time_sync(lambda: s.stub.GetTimeSeries(treq, timeout=120), s.warm, s.reps)
    base, _ = s.sql(SERIES_SQL, [start7, end])
    check_metrics = {"REQUESTS": None, "LATENCY_P50": ("lat", 0), "LATENCY_P95": ("lat", 1),
                     "LATENCY_P99": ("lat", 2), "TTFT_P50": ("ttft", 0), "TTFT_P95": ("ttft", 1),
                     "TTFT_P99": ("ttft", 2)}
    vreq = query_pb2.GetTimeSeriesRequest(
        start_time=_ts(start7), end_time=_ts(end), granularity="1h", group_by="model",
        metrics=[query_pb2.Metric.Value(f"METRIC_{m}") for m in check_metrics],
        top_n=100)  # every model, also the live tail's "bench-tail" of earlier runs on a reused load
    vresp = s.stub.GetTimeSeries(vreq, timeout=120)
    _, exact_rows = s.sql(SERIES_CHECK_SQL, [start7, end], reps=1, warm=0)
    exact = {(r["model"], r["hour"]): r for r in exact_rows}
    _check(all(se.group != "other" for se in vresp.series), "series folded groups into 'other'")
    for se in vresp.series:
        name = query_pb2.Metric.Name(se.metric).removeprefix("METRIC_")
        for p in se.points:
            key = (se.group, p.time.ToDatetime(tzinfo=UTC))
            row = exact.get(key)
            if name == "REQUESTS":
                _check(int(p.value) == (row["n"] if row else 0),
                       f"series requests {key}: service {p.value} != SQL {row['n'] if row else 0}")
                continue
            kind, idx = check_metrics[name]  # type: ignore[misc]
            if row is None or row[kind] is None:
                _check(not p.present, f"series {name} {key} present without data")
                continue
            s.errs.add(f"series {se.group} {key[1]:%m-%d %H:%M}", "latency" if kind == "lat" else "ttft",
                       f"p{name.rsplit('P', 1)[1]}",
                       row[kind][idx], p.value)
    return {"service": svc, "sql": base,
            "points": len(resp.series[0].points) if resp.series else 0,
            "groups": len(resp.series),
            "method": query_pb2.PercentileMethod.Name(resp.percentile_method)}


def _breakdown(s: _Session) -> dict[str, Any]:
    """3. The month by user, top 10: same groups in the same order, same sums, percentile errors."""
    from llmmeter.v1 import query_pb2

    log(f"3/5 GetBreakdown: {s.days} days by user, top 10")
    breq = query_pb2.GetBreakdownRequest(start_time=_ts(s.start30), end_time=_ts(s.end), group_by="user",
                                         top_n=10)
    svc, resp = time_sync(lambda: s.stub.GetBreakdown(breq, timeout=120), s.warm, s.reps)
    base, rows = s.sql(BREAKDOWN_SQL, [s.start30, s.end])
    _check([r.group for r in resp.rows] == [b["user_name"] for b in rows],
           f"breakdown groups {[r.group for r in resp.rows]} != SQL {[b['user_name'] for b in rows]}")
    for r, b in zip(resp.rows, rows, strict=True):
        for f in ("request_count", "success_count", "input_tokens", "output_tokens", "cache_read_tokens"):
            _check(getattr(r, f) == b[f], f"breakdown {r.group} {f}: {getattr(r, f)} != SQL {b[f]}")
        _check(_cost_eq(r.cost, b["cost"]), f"breakdown {r.group} cost {r.cost} != SQL {b['cost']}")
        for q, i in (("p50", 0), ("p90", 1), ("p95", 2), ("p99", 3)):
            s.errs.add(f"breakdown {r.group}", "latency", q, b["lat"][i], getattr(r, f"latency_{q}_ms"))
        for q, i in (("p50", 0), ("p95", 1)):
            s.errs.add(f"breakdown {r.group}", "ttft", q, b["ttft"][i], getattr(r, f"ttft_{q}_ms"))
    return {"service": svc, "sql": base, "omitted_groups": resp.omitted_groups,
            "method": query_pb2.PercentileMethod.Name(resp.percentile_method)}


def _log_pages(s: _Session) -> tuple[dict[str, Any], Any]:
    """4. The filtered request log: page 1 and page N (reached untimed by following tokens), against
    OFFSET (what a naive app runs) and keyset SQL. Returns the result's entries and page N."""
    from llmmeter.v1 import query_pb2

    start30, end, args, reps, warm = s.start30, s.end, s.args, s.reps, s.warm
    res: dict[str, Any] = {}
    page_n, size = args.page, args.page_size
    flt = f'model = "{LOG_FILTER_MODEL}"'
    log(f"4/5 ListRequests ({flt}, {size}/page): walking to page {page_n}")

    def page(token: str) -> Any:
        return s.stub.ListRequests(query_pb2.ListRequestsRequest(
            start_time=_ts(start30), end_time=_ts(end), filter=flt, page_size=size, page_token=token),
            timeout=60)

    n_filtered = s.loop.run_until_complete(s.conn.fetchval(
        "SELECT count(*) FROM usage_records WHERE start_time >= $1 AND start_time < $2 AND model = $3",
        start30, end, LOG_FILTER_MODEL))
    if n_filtered // size < page_n:
        page_n = int(n_filtered // size)
        if page_n < 2:
            raise BenchFailure(f"only {n_filtered} {LOG_FILTER_MODEL} rows; use more --records")
        log(f"   only {n_filtered:,} matching rows: timing page {page_n} instead of {args.page}")
    first = page("")
    token, t_walk = first.next_page_token, time.perf_counter()
    for _ in range(page_n - 2):
        token = page(token).next_page_token
        if not token:
            raise BenchFailure(f"the filtered log has fewer than {page_n} pages; use more --records")
    walk_s = time.perf_counter() - t_walk
    svc1, p1 = time_sync(lambda: page(""), warm, reps)
    svcn, pn = time_sync(lambda: page(token), warm, reps)
    base1, b1 = s.sql(LOG_OFFSET_SQL, [start30, end, LOG_FILTER_MODEL, size, 0], reps=reps, warm=warm)
    basen, bn = s.sql(LOG_OFFSET_SQL, [start30, end, LOG_FILTER_MODEL, size, (page_n - 1) * size],
                      reps=max(s.breps, 5))
    # keyset from the last row of page N-1 (taken from an OFFSET query, untimed)
    _, prev = s.sql(LOG_OFFSET_SQL, [start30, end, LOG_FILTER_MODEL, 1, (page_n - 1) * size - 1], 1, 0)
    prev_last = prev[0]
    keyn, kn = s.sql(LOG_KEYSET_SQL, [start30, end, LOG_FILTER_MODEL, prev_last["start_time"],
                                      prev_last["request_id"], size], reps=reps, warm=warm)
    _check([r.request_id for r in p1.requests] == [r["request_id"] for r in b1], "log page 1 ids")
    _check([r.request_id for r in pn.requests] == [r["request_id"] for r in bn],
           f"log page {page_n} ids (service vs OFFSET SQL)")
    _check([r["request_id"] for r in kn] == [r["request_id"] for r in bn], "keyset vs OFFSET SQL")
    if args.explain:  # informational: the plans of the keyset page queries the service runs
        try:
            for label, q, params in (
                    ("log page 1", LOG_OFFSET_SQL.replace(" OFFSET $5", ""),
                     [start30, end, LOG_FILTER_MODEL, size + 1]),
                    (f"log page {page_n} (keyset)", LOG_KEYSET_SQL,
                     [start30, end, LOG_FILTER_MODEL, prev_last["start_time"], prev_last["request_id"],
                      size + 1])):
                plan = s.loop.run_until_complete(s.conn.fetch("EXPLAIN (ANALYZE, BUFFERS) " + q, *params))
                res.setdefault("_plans", []).append(
                    f"===== {label}\n{q}\n" + "\n".join(r[0] for r in plan) + "\n")
        except Exception as exc:
            log(f"   EXPLAIN of the log queries failed: {exc}")
    res["log_page_1"] = {"service": svc1, "sql": base1}
    res["log_page_n"] = {"page": page_n, "service": svcn, "sql": basen, "sql_keyset": keyn}
    res["log_walk_s"] = round(walk_s, 2)
    return res, pn


def _detail(s: _Session, pn: Any) -> dict[str, Any]:
    """5. GetRequest of one request id from page N, against the row by request_id."""
    from llmmeter.v1 import query_pb2

    rid = pn.requests[len(pn.requests) // 2].request_id
    log(f"5/5 GetRequest {rid}")
    dreq = query_pb2.GetRequestRequest(request_id=rid)
    svc, resp = time_sync(lambda: s.stub.GetRequest(dreq, timeout=60), s.warm, s.reps)
    base, rows = s.sql(DETAIL_SQL, [rid], reps=s.reps, warm=s.warm)
    rec, b = resp.record, rows[0]
    _check(rec.request_id == b["request_id"] and rec.model == b["model"]
           and rec.input_tokens == b["input_tokens"] and rec.output_tokens == b["output_tokens"]
           and _cost_eq(rec.cost, b["cost"]), "request detail")
    return {"service": svc, "sql": base}
