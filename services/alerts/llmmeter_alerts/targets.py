"""Where notifications may go: only http(s) to public addresses, unless an operator allows more.

A webhook URL is a request the alerts service makes on a rule author's behalf, from inside the
deployment; unchecked, it reaches loopback, the cloud metadata endpoint (169.254.169.254) and
private networks (SSRF), and the delivery history becomes a port scanner. So a URL's host is
checked when a rule is saved (literal addresses, and names that resolve) and again at every
send, where the name is resolved once, every address it resolves to is checked, and the
connection goes to a checked address (so a DNS answer that changes between check and connect,
DNS rebinding, reaches nothing new). Secrets for signatures come only from environment
variables under an operator-chosen prefix, never from, say, DATABASE_URL.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

from llmmeter.v1 import alerts_pb2
from llmmeter_common.errors import FieldViolation, InvalidArgument

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Ranges no notification goes to unless allowed: besides what `ipaddress` calls private,
#: loopback, link-local (169.254/16 holds the metadata endpoints), multicast, reserved and
#: unspecified, the carrier-grade NAT range that clouds use internally.
_EXTRA_BLOCKED = (ipaddress.ip_network("100.64.0.0/10"), ipaddress.ip_network("192.0.0.0/24"))


class RefusedTarget(Exception):
    """A notification target that the egress policy refuses."""


def _blocked(addr: IPAddress) -> bool:
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return (addr.is_private or addr.is_loopback or addr.is_link_local or addr.is_multicast
            or addr.is_reserved or addr.is_unspecified
            or any(addr in net for net in _EXTRA_BLOCKED if addr.version == net.version))


def _mask_netloc(netloc: str) -> str:
    return netloc.rpartition("@")[2]


def mask_url(url: str) -> str:
    """A notification URL as reads show it: scheme and host, the rest (tokens, paths) masked."""
    parts = urlsplit(url)
    if not parts.scheme or not parts.netloc:
        return "****"
    rest = "/****" if (parts.path not in ("", "/") or parts.query) else "/"
    return f"{parts.scheme}://{_mask_netloc(parts.netloc)}{rest}"


@dataclass(frozen=True)
class TargetPolicy:
    """The operator's egress rules for notifications."""

    allow: tuple[str, ...] = ()
    """Host names, addresses or CIDR ranges that may be reached although private or loopback."""

    secret_env_prefix: str = "LLMMETER_WEBHOOK_SECRET_"
    """The only environment variables a webhook's `secret_env` may name start with this."""

    @classmethod
    def from_setting(cls, allow: str, secret_env_prefix: str) -> TargetPolicy:
        """From the comma-separated allowlist setting."""
        return cls(tuple(a.strip().lower() for a in allow.split(",") if a.strip()), secret_env_prefix)

    def _networks(self) -> list[IPNetwork]:
        out = []
        for entry in self.allow:
            try:
                out.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                continue  # a host name
        return out

    def address_allowed(self, addr: IPAddress) -> bool:
        """Whether a resolved address may be reached."""
        return not _blocked(addr) or any(addr in net for net in self._networks()
                                         if addr.version == net.version)

    def host_allowed_by_name(self, host: str) -> bool:
        """Whether the operator allowed this host name itself (its addresses are then not checked)."""
        return host.lower().rstrip(".") in self.allow

    async def resolve(self, host: str, port: int) -> list[str]:
        """The addresses to connect to for `host`, every one of them allowed; RefusedTarget otherwise."""
        try:
            literal: IPAddress | None = ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            literal = None
        if literal is not None:
            if not self.address_allowed(literal):
                raise RefusedTarget(f"{host} is a private, loopback, link-local or metadata address")
            return [str(literal)]
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise RefusedTarget(f"{host} does not resolve ({exc.strerror or exc})") from None
        addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
        if not self.host_allowed_by_name(host):
            bad = [a for a in addresses if not self.address_allowed(ipaddress.ip_address(a.split("%")[0]))]
            if bad:
                raise RefusedTarget(f"{host} resolves to {bad[0]}, a private, loopback, link-local or "
                                    "metadata address")
        return addresses

    def secret_env_allowed(self, name: str) -> bool:
        """Whether a webhook may sign with this environment variable."""
        prefix = self.secret_env_prefix
        return bool(prefix) and name.startswith(prefix) and len(name) > len(prefix)

    async def check_rule(self, rule: alerts_pb2.Rule) -> None:
        """INVALID_ARGUMENT naming each notification target the policy refuses (a name that does not
        resolve now is let through: it is checked again at every send)."""
        bad: list[FieldViolation] = []
        for i, ch in enumerate(rule.channels):
            kind = ch.WhichOneof("target")
            if kind not in ("webhook", "slack"):
                continue
            target = ch.webhook if kind == "webhook" else ch.slack
            path = f"rule.channels[{i}].{kind}"
            parts = urlsplit(target.url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                bad.append(FieldViolation(f"{path}.url", "an http:// or https:// URL with a host"))
                continue
            try:
                await self.resolve(parts.hostname, parts.port or (443 if parts.scheme == "https" else 80))
            except RefusedTarget as exc:
                if "does not resolve" not in str(exc):
                    bad.append(FieldViolation(f"{path}.url", f"{exc}; an operator may allow it "
                                                             "(LLMMETER_ALERTS_WEBHOOK_ALLOW_HOSTS)"))
            env = ch.webhook.secret_env if kind == "webhook" else ""
            if env and not self.secret_env_allowed(env):
                bad.append(FieldViolation(
                    f"{path}.secret_env", f"must start with {self.secret_env_prefix} (the operator's)"))
        if bad:
            raise InvalidArgument(f"{bad[0].field}: {bad[0].description}", bad)
