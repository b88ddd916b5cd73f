"""The SSRF guard (S2.PIT.4): where a webhook may be sent.

* A URL must be ``https://`` unless its host is in ``plugins.webhooks.allow_http_hosts``;
  it may not carry a user or password; checked when the endpoint is added.
* Every address a connection goes to is checked, the one DNS answered included (so a
  name that resolves to an inside address, or is re-pointed there later, is refused):
  the aiohttp resolver returns only allowed addresses (:class:`GuardedResolver`), and
  the connector's ``socket_factory`` (:func:`guarded_socket`) refuses any other, which
  also covers IP-literal URLs, which skip the resolver.
* Refused: every address that is not public - private, loopback, link-local (cloud
  metadata: 169.254.169.254), shared (100.64/10), multicast, unspecified, reserved,
  documentation - in IPv4 and IPv6, and a public-looking IPv6 address that carries an
  IPv4 one (v4-mapped, 6to4, Teredo, NAT64) is judged by that IPv4 address too; unless
  the address is in ``plugins.webhooks.allow_networks``.
* Redirects are never followed and no proxy is taken from the environment (the
  session's ``trust_env=False``); answers are read 64 KiB at most (see dispatch).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver

__all__ = ["Blocked", "GuardedResolver", "Policy", "check_url"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
#: IPv4 prefix of NAT64 (RFC 6052): the last 32 bits are an IPv4 address
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
#: the longest URL an endpoint may have
MAX_URL = 2048


class Blocked(OSError):
    """A connection the guard refused (an ``OSError``: aiohttp reports it as a
    connection error, and the attempt fails)."""


def _embedded_v4(address: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    found = [a for a in (address.ipv4_mapped, address.sixtofour) if a is not None]
    if address.teredo is not None:
        found.extend(address.teredo)
    if address in _NAT64:
        found.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    return found


def _public(address: IPAddress) -> bool:
    if not address.is_global or address.is_multicast:
        return False
    if isinstance(address, ipaddress.IPv6Address):
        return all(_public(inner) for inner in _embedded_v4(address))
    return True


class Policy:
    """What the settings allow: plain-http hosts and inside networks."""

    def __init__(self, http_hosts: Iterable[str] = (), networks: Iterable[Network] = ()) -> None:
        self.http_hosts = frozenset(h.lower() for h in http_hosts)
        self.networks = tuple(networks)

    def allows(self, address: str) -> bool:
        """May a connection go to ``address`` (an IP address, without port)?"""
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])  # without a v6 zone
        except ValueError:
            return False
        candidates = [ip]
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            candidates.append(ip.ipv4_mapped)
        if any(c in n for c in candidates for n in self.networks if c.version == n.version):
            return True
        return _public(ip)

    def vet(self, address: str) -> str:
        """``address`` if allowed; :class:`Blocked` naming it if not."""
        if not self.allows(address):
            raise Blocked(f"address {address} is not public and not in "
                          "plugins.webhooks.allow_networks (SSRF guard)")
        return address

    def guarded_socket(self, addrinfo: Any) -> socket.socket:
        """aiohttp's ``socket_factory``: every connection's final address is vetted."""
        family, kind, proto, _name, sockaddr = addrinfo
        self.vet(str(sockaddr[0]))
        return socket.socket(family, kind, proto)


def check_url(url: str, policy: Policy) -> str:
    """The URL an endpoint may have, or ``ValueError`` naming the problem.

    Checked now: the scheme, the host, no credentials, and an IP-literal host's address.
    A name's addresses are checked at each connection (they may change).
    """
    if len(url) > MAX_URL:
        raise ValueError(f"the URL is longer than {MAX_URL} characters")
    if any(c.isspace() or not c.isprintable() for c in url):
        raise ValueError("the URL contains a space or a control character")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"not a valid URL ({exc})") from None
    host = (parts.hostname or "").lower()
    if parts.scheme not in ("https", "http") or not host:
        raise ValueError("the URL must be https://host/... (http:// only for the hosts in "
                         "plugins.webhooks.allow_http_hosts)")
    if parts.username is not None or parts.password is not None:
        raise ValueError("the URL may not carry a user or password (it would be shown by "
                         "webhooks list); authenticate the webhook by its signature")
    if parts.scheme == "http" and host not in policy.http_hosts:
        raise ValueError(f"plain http:// to {host} is refused: use https://, or list the "
                         "host in plugins.webhooks.allow_http_hosts")
    if port == 0:
        raise ValueError("the URL's port may not be 0")
    try:
        literal = ipaddress.ip_address(host)
    except ValueError:
        return url
    if not policy.allows(str(literal)):
        raise ValueError(f"address {literal} is not public and not in "
                         "plugins.webhooks.allow_networks (SSRF guard)")
    return url


class GuardedResolver(AbstractResolver):
    """Resolves with ``inner`` (default: aiohttp's threaded resolver, the system's DNS)
    and keeps only the addresses the policy allows; none left is :class:`Blocked`."""

    def __init__(self, policy: Policy, inner: AbstractResolver | None = None) -> None:
        self.policy = policy
        self.inner = inner or ThreadedResolver()

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        found = await self.inner.resolve(host, port, family)
        allowed = [r for r in found if self.policy.allows(r["host"])]
        if not allowed:
            refused = ", ".join(sorted({r["host"] for r in found})) or "no address"
            raise Blocked(f"{host} resolves to {refused}: not public and not in "
                          "plugins.webhooks.allow_networks (SSRF guard)")
        return allowed

    async def close(self) -> None:
        await self.inner.close()
