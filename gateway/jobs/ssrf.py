"""Where a webhook may be sent: only to public (globally routable) addresses, unless the admin
allows a range with GATEWAY_WEBHOOK_ALLOW_CIDRS. Checked when a job is submitted (every address
the host resolves to) and again when it is delivered, on the address actually connected to (a
name that resolved to a public address at submit time may resolve to 127.0.0.1 an hour later:
DNS rebinding)."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# IPv6 prefixes that carry an IPv4 address inside (NAT64, 6to4): judged by the address they carry.
NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
SIX_TO_FOUR = ipaddress.IPv6Network("2002::/16")


class ForbiddenTargetError(Exception):
    """A webhook target that may not be called; the message says why (without secrets)."""


@dataclass(frozen=True, slots=True)
class TargetPolicy:
    allow: tuple[Network, ...] = ()
    allow_http: bool = False

    @classmethod
    def parse(cls, cidrs: Sequence[str], *, allow_http: bool) -> TargetPolicy:
        return cls(tuple(ipaddress.ip_network(c.strip(), strict=False) for c in cidrs if c.strip()), allow_http)

    def permits(self, address: IPAddress) -> bool:
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped  # the IPv4 address it is, for the allowed ranges too
        if any(address in net for net in self.allow if net.version == address.version):
            return True
        return is_public(address)

    def check_address(self, address: str) -> None:
        ip = ipaddress.ip_address(address.split("%", 1)[0])  # a scope id (fe80::1%eth0) names no other address
        if not self.permits(ip):
            raise ForbiddenTargetError(
                f"it resolves to {ip}, which is not a public address (allow a range with GATEWAY_WEBHOOK_ALLOW_CIDRS)"
            )


def is_public(ip: IPAddress) -> bool:
    """Globally routable unicast: not loopback, link-local, private, shared (CGN), multicast,
    unspecified, reserved or documentation; an IPv6 address that embeds an IPv4 one (mapped,
    NAT64, 6to4) is judged by that."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return is_public(ip.ipv4_mapped)
        if ip in NAT64:
            return is_public(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
        if ip in SIX_TO_FOUR:
            return is_public(ipaddress.IPv4Address((int(ip) >> 80) & 0xFFFFFFFF))
        if ip.teredo is not None:
            return is_public(ip.teredo[1])
    return ip.is_global and not ip.is_multicast and not ip.is_reserved


@dataclass(frozen=True, slots=True)
class Target:
    url: str
    host: str
    port: int


def parse_target(url: str, policy: TargetPolicy) -> Target:
    """The URL's scheme, host and port, checked without any lookup."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ForbiddenTargetError(f"it is not a valid URL ({exc})") from None
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ForbiddenTargetError("it must be an absolute https:// URL")
    if parts.scheme == "http" and not policy.allow_http:
        raise ForbiddenTargetError("it must use https (plain http is allowed only with GATEWAY_WEBHOOK_ALLOW_HTTP)")
    if parts.username is not None or parts.password is not None:
        raise ForbiddenTargetError("it must not carry credentials")
    if parts.fragment:
        raise ForbiddenTargetError("it must not have a fragment")
    return Target(url, parts.hostname, port or (443 if parts.scheme == "https" else 80))


async def check_url(url: str, policy: TargetPolicy) -> Target:
    """The target, once every address its host resolves to now is one the policy permits."""
    target = parse_target(url, policy)
    for address in await _addresses(target.host, target.port):
        policy.check_address(address)
    return target


async def _addresses(host: str, port: int) -> list[str]:
    try:
        return [str(ipaddress.ip_address(host))]
    except ValueError:
        pass
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise ForbiddenTargetError(f"its host does not resolve ({type(exc).__name__})") from None
    if not infos:
        raise ForbiddenTargetError("its host does not resolve")
    return [str(info[4][0]) for info in infos]


class GuardedResolver(AbstractResolver):
    """aiohttp's resolver for webhook deliveries: the addresses it hands the connector are the
    ones connected to, so each is checked here, at delivery time. (A literal IP address in the URL
    is not resolved by aiohttp; the sender checks that one itself.)"""

    def __init__(self, policy: TargetPolicy) -> None:
        self._policy = policy
        self._inner = ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        found = await self._inner.resolve(host, port, family)
        for entry in found:
            self._policy.check_address(entry["host"])
        return found

    async def close(self) -> None:
        await self._inner.close()


def literal_address(host: str) -> str | None:
    try:
        return str(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        return None
