"""Rule values from the query service, over gRPC through the generated stub.

The query service is the single definition of every metric and of the filter
syntax: a rule's value is what GetSummary (or GetBreakdown with the rule's
group_by, all groups) answers over the rule's window, and a rule's filter and
group_by are valid when the query service accepts them.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import grpc
from google.protobuf import timestamp_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from llmmeter.v1 import alerts_pb2, query_pb2, query_pb2_grpc
from llmmeter_alerts import rules as rules_mod
from llmmeter_alerts.statemachine import Observation
from llmmeter_common.errors import FieldViolation, InvalidArgument, LlmmeterError, Unavailable


def period_start(period: int, now: datetime) -> datetime:
    """Start of the UTC day or month containing `now`."""
    day = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return day if period == alerts_pb2.BUDGET_PERIOD_DAY else day.replace(day=1)


def period_key(period: int, now: datetime) -> str:
    """`2025-06-01` (day) or `2025-06` (month)."""
    start = period_start(period, now)
    return start.strftime("%Y-%m-%d" if period == alerts_pb2.BUDGET_PERIOD_DAY else "%Y-%m")


def window_of(rule: alerts_pb2.Rule, now: datetime) -> tuple[datetime, datetime]:
    """[start, end) a rule reads at `now`."""
    if rules_mod.is_budget(rule):
        return period_start(rule.budget.period, now), now
    return now - rules_mod.seconds(rule.window), now


def _ts(when: datetime) -> timestamp_pb2.Timestamp:
    t = timestamp_pb2.Timestamp()
    t.FromDatetime(when)
    return t


def _domain_error(err: grpc.aio.AioRpcError) -> LlmmeterError:
    """A query-service failure as a domain error; its bad fields renamed to the rule's."""
    if err.code() == grpc.StatusCode.INVALID_ARGUMENT:
        violations = []
        status = rpc_status.from_call(err)
        for detail in status.details if status else []:
            br = error_details_pb2.BadRequest()
            if detail.Unpack(br):
                violations += [FieldViolation(f"rule.{v.field}", v.description) for v in br.field_violations]
        return InvalidArgument(f"rule: {err.details()}",
                               violations or [FieldViolation("rule.filter", err.details())])
    return Unavailable(f"query service: {err.code().name}: {err.details()}")


class MetricSource:
    """Reads rule values from the query service."""

    def __init__(self, stub: query_pb2_grpc.QueryServiceStub, timeout: float) -> None:
        self._stub = stub
        self._timeout = timeout

    async def observe(self, rule: alerts_pb2.Rule, now: datetime) -> dict[str, Observation]:
        """Value and request count per group ("" without group_by) at `now`."""
        start, end = window_of(rule, now)
        if start >= end:
            return {"": Observation(0.0, 0)} if not rule.group_by else {}
        minutes = (end - start).total_seconds() / 60
        metric = rules_mod.METRICS[rule.metric]
        try:
            if not rule.group_by:
                assert metric.summary is not None
                resp = await self._stub.GetSummary(query_pb2.GetSummaryRequest(
                    start_time=_ts(start), end_time=_ts(end), filter=rule.filter), timeout=self._timeout)
                s = resp.summary
                return {"": Observation(metric.summary(s, minutes), s.request_count)}
            assert metric.row is not None
            bd = await self._stub.GetBreakdown(query_pb2.GetBreakdownRequest(
                start_time=_ts(start), end_time=_ts(end), filter=rule.filter, group_by=rule.group_by,
                top_n=0), timeout=self._timeout)
        except grpc.aio.AioRpcError as err:
            raise _domain_error(err) from None
        return {row.group: Observation(metric.row(row, minutes), row.request_count) for row in bd.rows}

    async def check(self, rule: alerts_pb2.Rule) -> None:
        """INVALID_ARGUMENT naming `rule.filter` or `rule.group_by` when the query service rejects them."""
        end = datetime(2000, 1, 1, 0, 0, 1, tzinfo=UTC)
        start = end - timedelta(seconds=1)
        try:
            if rule.group_by:
                await self._stub.GetBreakdown(query_pb2.GetBreakdownRequest(
                    start_time=_ts(start), end_time=_ts(end), filter=rule.filter, group_by=rule.group_by,
                    top_n=1), timeout=self._timeout)
            else:
                await self._stub.GetSummary(query_pb2.GetSummaryRequest(
                    start_time=_ts(start), end_time=_ts(end), filter=rule.filter), timeout=self._timeout)
        except grpc.aio.AioRpcError as err:
            raise _domain_error(err) from None
