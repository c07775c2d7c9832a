"""Outbound URL safety for webhooks and internal alerts: no plain http, no private networks.

A flow author controls the URL of a webhook step, so without these checks a flow could make
the worker call services that only the worker can reach (the Temporal frontend, a cloud
metadata endpoint at 169.254.169.254, a database admin page on localhost). `check_url`
allows https only, resolves the host once and refuses it if *any* address it resolves to is
loopback, private, link-local, multicast, reserved or otherwise not globally routable.

Hosts and networks an operator trusts are listed in `Settings.webhook_allow_hosts` (host
names, IPs or CIDRs): they may resolve to internal addresses and may use plain http.

The caller connects to `SafeTarget.ip`, the address that was checked, and sends the original
host in the Host header and TLS SNI. Resolving again at connect time would let a DNS record
with a short TTL pass the check with a public address and then point at an internal one
(DNS rebinding).
"""

import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import httpx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_DEFAULT_PORTS = {"http": 80, "https": 443}


class UnsafeUrl(ValueError):
    """The URL may not be called; `reason` says why, in words fit for a step's skip reason."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class SafeTarget:
    """A checked URL and the one address the request must connect to."""

    url: httpx.URL
    host: str  # ASCII (IDNA) host name or IP literal, as in the URL
    port: int
    ip: str

    @property
    def connect_url(self) -> httpx.URL:
        """The URL with the checked IP in place of the host name: nothing resolves it again."""
        return self.url.copy_with(host=self.ip)

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        if self.port == _DEFAULT_PORTS[self.url.scheme]:
            return host
        return f"{host}:{self.port}"

    @property
    def extensions(self) -> dict[str, Any]:
        """httpx request extensions: TLS SNI and certificate checks use the original host name."""
        if _ip_literal(self.host) is not None:
            return {}
        return {"sni_hostname": self.host}


@dataclass(frozen=True)
class AllowList:
    hosts: frozenset[str]
    networks: tuple[IPNetwork, ...]

    @classmethod
    def parse(cls, entries: Iterable[str]) -> "AllowList":
        hosts: set[str] = set()
        networks: list[IPNetwork] = []
        for raw in entries:
            entry = raw.strip().lower().rstrip(".")
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                hosts.add(entry)
        return cls(frozenset(hosts), tuple(networks))

    def allows_host(self, host: str) -> bool:
        return host in self.hosts

    def allows_ip(self, ip: IPAddress) -> bool:
        candidates = [ip]
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            candidates.append(ip.ipv4_mapped)
        return any(
            c in net for c in candidates for net in self.networks if c.version == net.version
        )


def resolve_host(host: str, port: int) -> list[str]:
    """Every address the system resolver returns for host (IP literals resolve to themselves)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses: list[str] = []
    for _family, _type, _proto, _canon, sockaddr in infos:
        address = str(sockaddr[0])
        if address not in addresses:
            addresses.append(address)
    return addresses


def blocked_kind(ip: IPAddress) -> str | None:
    """Why an address may not be called (e.g. "loopback"), or None if it is public."""
    if isinstance(ip, ipaddress.IPv6Address):
        # An IPv6 address that carries an IPv4 one reaches that IPv4 address.
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is not None:
            return blocked_kind(embedded)
    checks = (
        ("unspecified", ip.is_unspecified),
        ("loopback", ip.is_loopback),
        ("link-local", ip.is_link_local),
        ("multicast", ip.is_multicast),
        ("reserved", ip.is_reserved),
        ("private", ip.is_private),
        # Shared address space (100.64.0.0/10) and the like: neither private nor public.
        ("non-global", not ip.is_global),
    )
    return next((kind for kind, hit in checks if hit), None)


def check_url(url: str, allow_hosts: list[str]) -> SafeTarget:
    """Checks url for an outbound POST; raises UnsafeUrl, or returns where to connect.

    Blocks on DNS: call it from a thread (`asyncio.to_thread`) in async code.
    """
    allow = AllowList.parse(allow_hosts)
    try:
        parsed = httpx.URL(url)
        port = parsed.port
    except (httpx.InvalidURL, ValueError) as exc:
        raise UnsafeUrl(f"invalid url ({exc})") from exc
    scheme = parsed.scheme
    if scheme not in _DEFAULT_PORTS:
        raise UnsafeUrl(f"scheme {scheme or '(none)'!r} is not allowed, use https")
    host = parsed.raw_host.decode("ascii").lower().rstrip(".")
    if not host:
        raise UnsafeUrl("url has no host")
    port = port or _DEFAULT_PORTS[scheme]
    if not 0 < port < 65536:
        raise UnsafeUrl(f"port {port} is out of range")

    try:
        addresses = resolve_host(host, port)
    except (OSError, UnicodeError) as exc:
        raise UnsafeUrl(f"host {host!r} does not resolve") from exc
    if not addresses:
        raise UnsafeUrl(f"host {host!r} does not resolve")

    host_allowed = allow.allows_host(host)
    all_ips_allowed = True
    for address in addresses:
        ip = _ip_literal(address)
        if ip is None:
            raise UnsafeUrl(f"host {host!r} resolved to an unusable address {address!r}")
        ip_allowed = allow.allows_ip(ip)
        all_ips_allowed = all_ips_allowed and ip_allowed
        kind = blocked_kind(ip)
        if kind is not None and not (host_allowed or ip_allowed):
            raise UnsafeUrl(f"host {host!r} resolves to a {kind} address ({address})")

    if scheme == "http" and not (host_allowed or all_ips_allowed):
        raise UnsafeUrl(f"plain http is not allowed for {host!r}, use https")
    return SafeTarget(url=parsed, host=host, port=port, ip=addresses[0])


def _ip_literal(text: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None
