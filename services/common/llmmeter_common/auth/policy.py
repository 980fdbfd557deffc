"""Which role each RPC of every llmmeter service needs: the whole access policy in one table.

Methods are matched by the longest prefix of their full name. A method no entry
names is refused (deny by default), so a new RPC cannot be served unprotected by
forgetting it here; health and reflection stay open for probes and tools.
"""

from __future__ import annotations

from dataclasses import dataclass

from llmmeter_common.auth.keys import Role


@dataclass(frozen=True)
class Requirement:
    """The role a call needs; `team_scoped` says whether a team-bound key may make it (the service
    then limits the call to that team's data)."""

    role: Role
    team_scoped: bool


OPEN: tuple[str, ...] = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)

_READ_ALERTS = Requirement(Role.READ, team_scoped=False)
#: Alert rules, alerts and silences span every team: read by unscoped read keys, changed by admins.
POLICY: dict[str, Requirement] = {
    "/llmmeter.v1.IngestService/": Requirement(Role.INGEST, team_scoped=True),
    "/opentelemetry.proto.collector.trace.v1.TraceService/": Requirement(Role.INGEST, team_scoped=True),
    "/llmmeter.v1.QueryService/": Requirement(Role.READ, team_scoped=True),
    "/llmmeter.v1.AlertsService/": Requirement(Role.ADMIN, team_scoped=False),
    "/llmmeter.v1.AlertsService/GetRule": _READ_ALERTS,
    "/llmmeter.v1.AlertsService/ListRules": _READ_ALERTS,
    "/llmmeter.v1.AlertsService/ListAlerts": _READ_ALERTS,
    "/llmmeter.v1.AlertsService/ListAlertEvents": _READ_ALERTS,
    "/llmmeter.v1.AlertsService/WatchAlerts": _READ_ALERTS,
    "/llmmeter.v1.AlertsService/ListSilences": _READ_ALERTS,
    "/llmmeter.v1.KeysService/": Requirement(Role.ADMIN, team_scoped=False),
    "/llmmeter.v1.PricesService/": Requirement(Role.ADMIN, team_scoped=False),
}


def is_open(method: str) -> bool:
    """Whether a method is served without a key."""
    return method.startswith(OPEN)


def requirement(method: str) -> Requirement | None:
    """What a method needs (None: no entry, so it is refused)."""
    best = max((p for p in POLICY if method.startswith(p)), key=len, default=None)
    return None if best is None else POLICY[best]
