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
import functools
import ipaddress
import re
import socket
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit

from llmmeter.v1 import alerts_pb2
from llmmeter_common.errors import FieldViolation, InvalidArgument

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Ranges no notification goes to unless allowed: besides what `ipaddress` calls private,
#: loopback, link-local (169.254/16 holds the metadata endpoints), multicast, reserved,
#: unspecified or not global, the carrier-grade NAT range that clouds use internally, and
#: local-use NAT64 (RFC 8215), which translates into the deployment's own IPv4 networks.
_EXTRA_BLOCKED = (ipaddress.ip_network("100.64.0.0/10"), ipaddress.ip_network("192.0.0.0/24"),
                  ipaddress.ip_network("64:ff9b:1::/48"))
#: The well-known NAT64 prefix (RFC 6052): such an address is judged by the IPv4 address in its
#: last 32 bits (DNS64 gives public hosts such addresses on IPv6-only clusters, and
#: 64:ff9b::a9fe:a9fe is the metadata endpoint).
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
#: Names of cloud metadata services, refused by name (they need not resolve where a rule is saved).
METADATA_NAMES = frozenset({
    "metadata", "metadata.google.internal", "metadata.goog", "instance-data",
    "instance-data.ec2.internal", "metadata.azure.com", "metadata.tencentyun.com",
})
MAX_URL_LENGTH = 2048


class RefusedTarget(Exception):
    """A notification target that the egress policy refuses."""


def embedded_ipv4(addr: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for (IPv4-mapped, 6to4, well-known NAT64), if any."""
    if not isinstance(addr, ipaddress.IPv6Address):
        return None
    inner = addr.ipv4_mapped or addr.sixtofour
    if inner is None and addr in _NAT64:
        inner = ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
    return inner


def _blocked(addr: IPAddress) -> bool:
    inner = embedded_ipv4(addr)
    if inner is not None:
        return _blocked(inner)
    return (addr.is_private or addr.is_loopback or addr.is_link_local or addr.is_multicast
            or addr.is_reserved or addr.is_unspecified or not addr.is_global
            or any(addr in net for net in _EXTRA_BLOCKED if addr.version == net.version))


def _mask_netloc(netloc: str) -> str:
    return netloc.rpartition("@")[2]


def mask_url(url: str) -> str:
    """A notification URL as reads show it: scheme and host, the rest (tokens, paths) masked."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "****"
    if not parts.scheme or not parts.netloc:
        return "****"
    rest = "/****" if (parts.path not in ("", "/") or parts.query) else "/"
    return f"{parts.scheme}://{_mask_netloc(parts.netloc)}{rest}"


class UnresolvedTarget(RefusedTarget):
    """A host name that did not resolve (in time): let through when a rule is saved, since it is
    checked again at every send."""


_HOST_NAME = re.compile(r"^(?=.{1,253}$)([a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?)(\.[a-z0-9_]([a-z0-9_-]{0,61}"
                        r"[a-z0-9_])?)*$")


def parse_allow(setting: str) -> tuple[str, ...]:
    """The entries of the comma-separated allowlist setting, lower case; ValueError naming an entry
    that is neither an address, a CIDR range nor a host name (a typo must not pass for a name)."""
    out = []
    for raw in setting.split(","):
        entry = raw.strip().lower().rstrip(".")
        if not entry:
            continue
        try:
            out.append(str(ipaddress.ip_network(entry.strip("[]"), strict=False)))
        except ValueError:
            if "/" in entry or ":" in entry or not _HOST_NAME.match(entry):
                raise ValueError(f"{raw.strip()!r} is not a host name, an IP address or a CIDR range"
                                 ) from None
            out.append(entry)
    return tuple(out)


def url_port(parts: SplitResult) -> int:
    """The URL's port (ValueError when it is not a number in 1..65535)."""
    port = parts.port  # ValueError when out of range or not a number
    if port == 0:
        raise ValueError("port 0")
    return port or (443 if parts.scheme == "https" else 80)


@dataclass(frozen=True)
class TargetPolicy:
    """The operator's egress rules for notifications."""

    allow: tuple[str, ...] = ()
    """Host names, addresses or CIDR ranges that may be reached although private or loopback."""

    secret_env_prefix: str = "LLMMETER_WEBHOOK_SECRET_"
    """A webhook's `secret_env` may name a variable starting with this (empty: none by prefix)."""

    secret_envs: tuple[str, ...] = ()
    """...or one of these variables."""

    resolve_timeout: float = 5.0
    """How long a host name may take to resolve."""

    @classmethod
    def from_setting(cls, allow: str, secret_env_prefix: str, secret_envs: str = "",
                     resolve_timeout: float = 5.0) -> TargetPolicy:
        """From the comma-separated settings (ValueError on a malformed allowlist entry)."""
        return cls(parse_allow(allow), secret_env_prefix,
                   tuple(e.strip() for e in secret_envs.split(",") if e.strip()), resolve_timeout)

    @functools.cached_property
    def _networks(self) -> list[IPNetwork]:
        out = []
        for entry in self.allow:
            try:
                out.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                continue  # a host name
        return out

    def address_allowed(self, addr: IPAddress) -> bool:
        """Whether a resolved address may be reached (an allowlist range covers it, or the IPv4
        address it embeds)."""
        if not _blocked(addr):
            return True
        candidates = [a for a in (addr, embedded_ipv4(addr)) if a is not None]
        return any(a in net for a in candidates for net in self._networks if a.version == net.version)

    def host_allowed_by_name(self, host: str) -> bool:
        """Whether the operator allowed this host name itself (its addresses are then not checked)."""
        return host.lower().rstrip(".") in self.allow

    async def resolve(self, host: str, port: int) -> list[str]:
        """The addresses to connect to for `host`, every one of them allowed; RefusedTarget otherwise
        (UnresolvedTarget when the name does not resolve within `resolve_timeout`)."""
        try:
            literal: IPAddress | None = ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            literal = None
        if literal is not None:
            if not self.address_allowed(literal):
                raise RefusedTarget(f"{host} is a private, loopback, link-local or metadata address")
            return [str(literal)]
        by_name = self.host_allowed_by_name(host)
        if not by_name and host.lower().rstrip(".") in METADATA_NAMES:
            raise RefusedTarget(f"{host} is a cloud metadata service")
        try:
            infos = await asyncio.wait_for(asyncio.get_running_loop().getaddrinfo(
                host, port, type=socket.SOCK_STREAM), self.resolve_timeout)
        except TimeoutError:
            raise UnresolvedTarget(f"{host} does not resolve (no answer within {self.resolve_timeout:g}s)"
                                   ) from None
        except (OSError, UnicodeError) as exc:
            raise UnresolvedTarget(f"{host} does not resolve ({getattr(exc, 'strerror', None) or exc})"
                                   ) from None
        addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
        if not addresses:
            raise UnresolvedTarget(f"{host} does not resolve")
        if not by_name:
            bad = [a for a in addresses if not self.address_allowed(ipaddress.ip_address(a.split("%")[0]))]
            if bad:
                raise RefusedTarget(f"{host} resolves to {bad[0]}, a private, loopback, link-local or "
                                    "metadata address")
        return addresses

    def secret_env_allowed(self, name: str) -> bool:
        """Whether a webhook may sign with this environment variable."""
        prefix = self.secret_env_prefix
        by_prefix = bool(prefix) and name.startswith(prefix) and len(name) > len(prefix)
        return by_prefix or name in self.secret_envs

    def secret_env_rule(self) -> str:
        """What `secret_env` must be, for error messages."""
        ways = [f"start with {self.secret_env_prefix}"] if self.secret_env_prefix else []
        if self.secret_envs:
            ways.append("be one of " + ", ".join(self.secret_envs))
        return ("must " + " or ".join(ways) + " (the operator's)") if ways else \
            "is not allowed here (the operator declared no secret variables)"

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
            try:
                parts = urlsplit(target.url)
                port = url_port(parts)
            except ValueError:  # an unclosed [IPv6 address, a port that is not a number
                parts, port = urlsplit(""), -1
            if len(target.url) > MAX_URL_LENGTH:
                bad.append(FieldViolation(f"{path}.url", f"at most {MAX_URL_LENGTH} characters"))
            elif parts.scheme not in ("http", "https") or not parts.hostname or port < 0:
                bad.append(FieldViolation(f"{path}.url", "an http:// or https:// URL with a host (and a "
                                                         "port in 1..65535)"))
            else:
                try:
                    await self.resolve(parts.hostname, port)
                except UnresolvedTarget:
                    pass
                except RefusedTarget as exc:
                    bad.append(FieldViolation(f"{path}.url", f"{exc}; an operator may allow it "
                                                             "(LLMMETER_ALERTS_WEBHOOK_ALLOW_HOSTS)"))
            env = ch.webhook.secret_env if kind == "webhook" else ""
            if env and not self.secret_env_allowed(env):
                bad.append(FieldViolation(f"{path}.secret_env", self.secret_env_rule()))
        if bad:
            raise InvalidArgument(f"{bad[0].field}: {bad[0].description}", bad)
