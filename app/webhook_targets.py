"""Where a webhook may be sent (OWASP API7, server-side request forgery).

A webhook URL is a request the server makes on a caller's behalf, from inside its network. Unless
MEMAUDIT_WEBHOOK_ALLOW_PRIVATE is set, its host must resolve only to globally routable unicast
addresses: loopback, link-local (169.254/16 with the cloud metadata endpoints, fe80::/10), private
(10/8, 172.16/12, 192.168/16, fc00::/7), shared (100.64/10), multicast, unspecified and otherwise
reserved or documentation ranges are refused; IPv6 forms that embed an IPv4 address (IPv4-mapped
::ffff:a.b.c.d, 6to4, Teredo, NAT64) are judged by that IPv4 address.

The check runs twice: at submit (POST /jobs, a 422), and at every delivery attempt, where the host is
resolved once, every address is checked, and the request is sent to that checked address (the URL's
host replaced by the IP, the original name kept in Host and in TLS SNI / certificate checks), so a
name that re-resolves to another address between the check and the connection (DNS rebinding) never
reaches it. A name that does not resolve at submit is accepted (the API and the workers may see
different DNS); its deliveries are checked when they happen.
"""

from __future__ import annotations

import concurrent.futures
import ipaddress
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit

log = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], list[str]]
RESOLVE_TIMEOUT_S = 3.0
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_SHARED = ipaddress.IPv4Network("100.64.0.0/10")


class BlockedTarget(ValueError):
    """The URL's host is, or resolves to, an address webhooks may not reach."""


def resolve_host(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (system resolver, TCP)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]  # the client's (obfuscated in the address, decoded by ipaddress)
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def refusal(address: IPAddress) -> str | None:
    """Why webhooks may not reach ``address`` ("a loopback address", ...), or None when they may."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            reason = refusal(embedded)
            return None if reason is None else f"{reason} (embedded in {address})"
    checks = (
        ("is_unspecified", "an unspecified address"),
        ("is_loopback", "a loopback address"),
        ("is_link_local", "a link-local address"),
        ("is_multicast", "a multicast address"),
        ("is_reserved", "a reserved address"),
        ("is_private", "a private address"),  # also documentation and benchmarking ranges
    )
    for attribute, reason in checks:
        if getattr(address, attribute):
            return reason
    if isinstance(address, ipaddress.IPv4Address) and address in _SHARED:
        return "a shared (carrier-grade NAT) address"
    if isinstance(address, ipaddress.IPv6Address) and address.is_site_local:
        return "a site-local address"
    if not address.is_global:
        return "an address that is not globally routable"
    return None


@dataclass(frozen=True)
class Target:
    """A URL pinned to one checked address: connect to ``address``, present ``host``."""

    url: str  # the URL with the host replaced by the address
    host_header: str
    sni_hostname: str | None  # https only: the name the certificate must carry
    address: str


def _split(url: str) -> tuple[SplitResult, str, int]:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("webhook url must be an absolute http(s) URL")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return parts, parts.hostname, port


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _checked(host: str, addresses: list[str]) -> list[IPAddress]:
    parsed = [ipaddress.ip_address(address.split("%", 1)[0]) for address in addresses]
    for address in parsed:
        reason = refusal(address)
        if reason is not None:
            shown = host if str(address) == host else f"{host!r} resolves to {address},"
            raise BlockedTarget(f"{shown} {reason}; webhooks may not target loopback, private, link-local, "
                                "multicast or reserved addresses (MEMAUDIT_WEBHOOK_ALLOW_PRIVATE=true "
                                "allows them for internal receivers)")  # fmt: skip
    return parsed


def pin(url: str, *, allow_private: bool, resolver: Resolver = resolve_host) -> Target:
    """Resolve once, check every address, and return the URL aimed at the first one.

    Raises BlockedTarget for a refused address, OSError when the name does not resolve."""
    parts, host, port = _split(url)
    literal = _literal(host)
    addresses = [str(literal)] if literal is not None else resolver(host, port)
    if not addresses:
        raise OSError(f"{host!r} has no address")
    if allow_private:
        checked = [ipaddress.ip_address(address.split("%", 1)[0]) for address in addresses]
    else:
        checked = _checked(host, addresses)
    chosen = checked[0]
    shown = f"[{chosen}]" if chosen.version == 6 else str(chosen)
    userinfo, at, host_header = parts.netloc.rpartition("@")  # Host never carries the user info
    netloc = f"{userinfo}{at}{shown}" + (f":{parts.port}" if parts.port else "")
    pinned = parts._replace(netloc=netloc).geturl()
    return Target(pinned, host_header, host if parts.scheme == "https" else None, str(chosen))


_pool: concurrent.futures.ThreadPoolExecutor | None = None


def _resolve_with_timeout(resolver: Resolver, host: str, port: int) -> list[str] | None:
    """getaddrinfo has no timeout: run it on a small pool and stop waiting after RESOLVE_TIMEOUT_S."""
    global _pool
    if _pool is None:
        _pool = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="memaudit-dns")
    try:
        return _pool.submit(resolver, host, port).result(timeout=RESOLVE_TIMEOUT_S)
    except (OSError, UnicodeError, concurrent.futures.TimeoutError):
        return None


def check_at_submit(url: str, *, allow_private: bool, resolver: Resolver = resolve_host) -> None:
    """Raise BlockedTarget when the URL's host is (or resolves to) a refused address."""
    if allow_private:
        return
    _, host, port = _split(url)
    literal = _literal(host)
    if literal is not None:
        _checked(host, [str(literal)])
        return
    addresses = _resolve_with_timeout(resolver, host, port)
    if addresses is None:
        log.info("webhook host %r does not resolve now; it is checked again at each delivery", host)
        return
    _checked(host, addresses)
