"""Who is looking: sign-in cookies, CSRF tokens and the failed-login limit.

* **The sign-in cookie** (``sg_dashboard``; ``HttpOnly``, ``SameSite=Strict``, ``Path=/``,
  ``Secure`` when the side port serves TLS) holds, after an LDAP sign-in, the acl
  plugin's short-lived token itself (checked at every request through
  ``GatewayAPI.authenticate_credential``, revoked at sign-out through
  ``GatewayAPI.revoke_credential``). After an API-key sign-in it holds a random
  *handle* to an in-memory record of the key's identity: the key itself is checked once
  and never kept, and the key's revocation is checked at every request.
* **CSRF tokens** are HMAC-SHA-256, under a random key that never leaves this process's
  memory, of the digest of the sign-in cookie (or, on the sign-in form, of a random
  pre-sign-in cookie): a page of one sign-in cannot be replayed by another, and a
  restarted gateway's forms simply ask to be reloaded.
* **Failed sign-ins** are counted per client address in a fixed window; past the limit
  that address is refused (429) until the window ends, whatever the name or key.
"""

from __future__ import annotations

import base64
import collections
import dataclasses
import hashlib
import hmac
import ipaddress
import secrets
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from sessiongate.core.errors import GatewayError

if TYPE_CHECKING:
    from aiohttp import web

    from sessiongate.core import GatewayAPI, Identity

__all__ = ["COOKIE", "LOGIN_COOKIE", "ApiKeySignIns", "Csrf", "FailedLogins", "SignIns",
           "SignedIn", "client_address", "grpc_peer"]

COOKIE = "sg_dashboard"
LOGIN_COOKIE = "sg_dashboard_login"
#: how an API-key sign-in's handle starts (a JWT never does)
HANDLE_PREFIX = "k_"
#: how long an API-key sign-in lasts (an LDAP one: its token's lifetime)
API_KEY_SIGN_IN_SECONDS = 8 * 3600
#: API-key sign-ins remembered at most (the oldest are forgotten first)
API_KEY_SIGN_INS = 10_000
#: the longest cookie value looked at (a token is about 400 characters)
MAX_COOKIE = 4096
#: failed sign-ins from one address per window, and the window
FAILURES_PER_WINDOW = 5
FAILURE_WINDOW_SECONDS = 60.0
#: addresses whose failures are remembered at most
FAILURE_TABLE = 10_000


def digest(value: str) -> str:
    """Names a credential without revealing it (CSRF binding, grouping, never logged)."""
    return hashlib.sha256(value.encode()).hexdigest()


def client_address(request: web.Request) -> str:
    """The address failed sign-ins count against (an IPv6 client by its /64, as the
    acl plugin counts). The side port's own peer: no proxy header is trusted."""
    host = request.remote or ""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host or "unknown"
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


def grpc_peer(request: web.Request) -> str:
    """The client as gRPC names a peer (``ipv4:192.0.2.7:5312``), for ``sg_login``."""
    peer = request.transport.get_extra_info("peername") if request.transport else None
    if not peer:
        return ""
    host, port = peer[0], peer[1]
    return f"ipv6:[{host}]:{port}" if ":" in host else f"ipv4:{host}:{port}"


@dataclasses.dataclass(frozen=True)
class SignedIn:
    """A person signed in to the dashboard, as of the request that found them."""

    identity: Identity
    credential: str = dataclasses.field(repr=False)  # the cookie's value: a secret
    digest: str = ""
    via: str = "ldap"  # or "api_key"


class Csrf:
    """Per-sign-in CSRF tokens: ``token(binding)`` in a form, ``valid(binding, token)``
    when it comes back."""

    def __init__(self) -> None:
        self._key = secrets.token_bytes(32)  # in memory only

    def token(self, binding: str) -> str:
        mac = hmac.new(self._key, b"csrf|" + binding.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).decode().rstrip("=")

    def valid(self, binding: str, presented: str | None) -> bool:
        return bool(presented) and hmac.compare_digest(self.token(binding),
                                                       str(presented))


class ApiKeySignIns:
    """API-key sign-ins: handle → (identity, expiry), in memory, bounded; the handle is
    kept only as its digest."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._by_digest: collections.OrderedDict[str, tuple[Identity, float]] = \
            collections.OrderedDict()

    def add(self, identity: Identity) -> tuple[str, float]:
        """A new handle for ``identity`` and when it expires."""
        handle = HANDLE_PREFIX + secrets.token_urlsafe(32)
        expires = self.clock() + API_KEY_SIGN_IN_SECONDS
        self._by_digest[digest(handle)] = (identity, expires)
        while len(self._by_digest) > API_KEY_SIGN_INS:
            self._by_digest.popitem(last=False)
        return handle, expires

    def get(self, handle: str) -> Identity | None:
        key = digest(handle)
        found = self._by_digest.get(key)
        if found is None:
            return None
        if found[1] <= self.clock():
            del self._by_digest[key]
            return None
        return found[0]

    def remove(self, handle: str) -> None:
        self._by_digest.pop(digest(handle), None)


class FailedLogins:
    """Failed sign-ins per client address, in fixed windows, in a bounded table."""

    def __init__(self, limit: int = FAILURES_PER_WINDOW,
                 window: float = FAILURE_WINDOW_SECONDS, capacity: int = FAILURE_TABLE,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.window = window
        self.capacity = capacity
        self.clock = clock
        self._table: collections.OrderedDict[str, tuple[float, int]] = \
            collections.OrderedDict()

    def retry_after(self, address: str) -> float:
        """Seconds until ``address`` may try again (0: now)."""
        entry = self._table.get(address)
        if entry is None:
            return 0.0
        started, count = entry
        left = started + self.window - self.clock()
        if left <= 0:
            del self._table[address]
            return 0.0
        return left if count >= self.limit else 0.0

    def failed(self, address: str) -> None:
        now = self.clock()
        started, count = self._table.pop(address, (now, 0))
        if started + self.window <= now:
            started, count = now, 0
        self._table[address] = (started, count + 1)
        while len(self._table) > self.capacity:
            self._table.popitem(last=False)


class SignIns:
    """Turns a sign-in cookie into a :class:`SignedIn`, checked now."""

    def __init__(self, gateway: GatewayAPI, *, ldap: bool) -> None:
        self.gateway = gateway
        self.ldap = ldap
        self.api_keys = ApiKeySignIns()

    async def resolve(self, value: str | None) -> SignedIn | None:
        """Who this cookie value signs in, or None (absent, unknown, expired, revoked)."""
        if not value or len(value) > MAX_COOKIE:
            return None
        if value.startswith(HANDLE_PREFIX):
            identity = self.api_keys.get(value)
            if identity is None or not await self.gateway.key_is_active(identity.key_id):
                return None
            return SignedIn(identity, value, digest(value), "api_key")
        if not self.ldap:
            return None
        try:
            identity = await self.gateway.authenticate_credential(value)
        except GatewayError:
            return None
        if identity.kind == "api_key":
            return None  # a bare API key is never a cookie of ours
        return SignedIn(identity, value, digest(value), "ldap")

    async def sign_out(self, signed_in: SignedIn) -> bool:
        """End this sign-in on the server: its token is revoked, or its handle forgotten."""
        if signed_in.via == "api_key":
            self.api_keys.remove(signed_in.credential)
            return True
        return await self.gateway.revoke_credential(signed_in.credential)
