"""LDAP login with ldap3: find the user, bind as them, read their groups.

ldap3 is synchronous: :meth:`Directory.authenticate` runs the whole exchange on
one of the acl plugin's own threads (:class:`.limits.LoginThreads`), with connect
and response timeouts, so the event loop never waits on the network.

Two ways to find the user's DN:

* **search-then-bind** (``bind_dn`` set): bind as the service account, search
  ``user_search_base`` with ``user_search_filter`` (exactly one entry must match),
  then bind as that DN with the user's password. When no entry (or several) match,
  the user bind still happens, as the decoy DN ``cn=sessiongate-login-decoy,<user
  search base>`` with a random password: an unknown user takes the same requests
  (connect, StartTLS, bind) and so about the same time as a wrong password, and
  ends the same way;
* **DN template** (``bind_dn`` empty): ``user_dn_template`` with ``{username}``.

Every value that comes from the person logging in is escaped before it reaches
the directory: filter values with ``escape_filter_chars`` (so ``*)(uid=*`` is a
literal name, not a wider search), DN values with ``escape_rdn``. An empty
password is refused before anything is sent (a simple bind with an empty
password is an anonymous bind, which most directories accept).

Outcomes are deliberately coarse: :class:`LoginRefused` (unknown user, wrong
password, ambiguous match: the caller never learns which) and
:class:`DirectoryUnavailable` (cannot connect, timeout, TLS failure, the
service account refused, the directory busy).

In search-then-bind mode :meth:`Directory.refresh` reads the groups of people who
hold sign-in tokens again, with the service account (no password of theirs is
needed), so a membership change reaches tokens already issued. What groups grant
(:meth:`LdapConfig.grants`) is computed from the current settings each time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import logging
import math
import re
import secrets
import ssl
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

with warnings.catch_warnings():
    # ldap3 2.9.1 (its last release) reads names pyasn1 has deprecated, at import time.
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"ldap3(\.|$)")
    from ldap3 import NONE, SIMPLE, SUBTREE, Connection, Server, Tls
    from ldap3.core import tls as _ldap3_tls
    from ldap3.core.exceptions import LDAPException, LDAPInvalidDnError
    from ldap3.protocol.sasl.sasl import validate_simple_password
    from ldap3.utils.conv import escape_filter_chars
    from ldap3.utils.dn import escape_rdn
    from ldap3.utils.tls_backport import match_hostname as _match_dns_name

if TYPE_CHECKING:
    from sessiongate.core import Settings

__all__ = ["Directory", "DirectoryUnavailable", "LdapConfig", "LoginRefused", "LoginResult",
           "normalize_dn"]

log = logging.getLogger("sessiongate.plugins.acl")

INVALID_CREDENTIALS = 49
MAX_USERNAME = 256
#: bound instead of the user's DN when no user matches (equal-time failures)
DECOY_RDN = "cn=sessiongate-login-decoy"
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _match_hostname(cert: dict[str, Any], hostname: str) -> None:
    """The certificate names ``hostname`` (a DNS name, or an IP address in its SAN).

    ldap3 turns the ssl module's own check off and calls ``ssl.match_hostname``,
    deprecated since Python 3.7 and gone in 3.12 (where ldap3 uses its RFC 6125
    backport for DNS names). This is that backport, plus IP addresses, on every
    Python: installed once, at import, with :func:`_check_hostname` around it.
    """
    try:
        address = ipaddress.ip_address(hostname)
    except ValueError:
        _match_dns_name(cert, hostname)
        return
    for kind, value in cert.get("subjectAltName", ()):
        if kind == "IP Address" and ipaddress.ip_address(str(value).strip()) == address:
            return
    raise _ldap3_tls.CertificateError(f"the certificate does not name {hostname}")


_ldap3_check_hostname = _ldap3_tls.check_hostname


def _check_hostname(sock: Any, server_name: str, additional_names: Any) -> None:
    """ldap3's check, closing the TLS socket it would otherwise leak on a mismatch."""
    try:
        _ldap3_check_hostname(sock, server_name, additional_names)
    except BaseException:
        with contextlib.suppress(OSError):
            sock.close()
        raise


_ldap3_tls.match_hostname = _match_hostname
_ldap3_tls.check_hostname = _check_hostname


class LoginRefused(Exception):
    """Wrong username or password (deliberately not saying which)."""


class DirectoryUnavailable(Exception):
    """The directory could not be asked (the message is for the log, not the caller)."""


def normalize_dn(dn: str) -> str:
    """A comparable DN: RDNs split on unescaped commas, trimmed, lower-cased."""
    parts = re.split(r"(?<!\\),", dn.strip())
    out = []
    for part in parts:
        attr, _, value = part.partition("=")
        out.append(f"{attr.strip().lower()}={value.strip().lower()}")
    return ",".join(out)


@dataclasses.dataclass(frozen=True)
class LdapConfig:
    url: str
    start_tls: bool
    ca_file: str
    timeout: float
    bind_dn: str
    bind_password: str = dataclasses.field(repr=False)
    user_dn_template: str
    user_search_base: str
    user_search_filter: str
    group_search_base: str
    group_search_filter: str
    admin_groups: frozenset[str]
    group_tags: Mapping[str, frozenset[str]]

    @classmethod
    def from_settings(cls, settings: Settings) -> LdapConfig:
        ldap = settings.plugins.acl.ldap
        return cls(
            url=str(ldap.url), start_tls=bool(ldap.start_tls), ca_file=str(ldap.ca_file),
            timeout=float(ldap.timeout_seconds), bind_dn=str(ldap.bind_dn),
            bind_password=str(ldap.bind_password),
            user_dn_template=str(ldap.user_dn_template),
            user_search_base=str(ldap.user_search_base),
            user_search_filter=str(ldap.user_search_filter),
            group_search_base=str(ldap.group_search_base),
            group_search_filter=str(ldap.group_search_filter),
            admin_groups=frozenset(normalize_dn(str(g)) for g in ldap.admin_groups),
            group_tags={normalize_dn(str(dn)): frozenset(str(t) for t in tags)
                        for dn, tags in dict(ldap.group_tags).items()},
        )

    @property
    def search_then_bind(self) -> bool:
        """A service account finds users (and can re-read their groups without them)."""
        return bool(self.bind_dn)

    def grants(self, groups: Iterable[str]) -> tuple[bool, frozenset[str]]:
        """``(admin, tags)`` that membership of ``groups`` (DNs) grants under these
        settings (``admin_groups``, ``group_tags``; DNs compared normalized)."""
        normalized = [normalize_dn(g) for g in groups]
        tags: set[str] = set()
        for group in normalized:
            tags.update(self.group_tags.get(group, ()))
        return any(g in self.admin_groups for g in normalized), frozenset(tags)


@dataclasses.dataclass(frozen=True)
class LoginResult:
    user_dn: str
    groups: tuple[str, ...]
    admin: bool
    tags: frozenset[str]


class Directory:
    """One configured directory. :meth:`authenticate` blocks: call it in a thread."""

    def __init__(self, config: LdapConfig) -> None:
        self.config = config

    def _server(self) -> Server:
        # A new Server each time: ldap3 remembers unreachable addresses per Server.
        tls = Tls(validate=ssl.CERT_REQUIRED, ca_certs_file=self.config.ca_file or None)
        return Server(self.config.url, get_info=NONE, connect_timeout=self.config.timeout,
                      tls=tls)

    # -- the exchange (blocking) ---------------------------------------------------------

    def _connection(self, server: Server, user: str, password: str) -> Connection:
        """An open (and, if configured, StartTLS-upgraded) connection, not yet bound."""
        conn = Connection(server, user=user, password=password,
                          authentication=SIMPLE,
                          # ldap3 packs it into SO_RCVTIMEO: whole seconds, at least 1
                          receive_timeout=max(1, math.ceil(self.config.timeout)),
                          read_only=True,
                          raise_exceptions=False)
        try:
            conn.open()
            if self.config.start_tls and not conn.start_tls():
                raise DirectoryUnavailable(f"StartTLS failed: {conn.result}")
        except BaseException:
            _close(conn)
            raise
        return conn

    @staticmethod
    def _entries(conn: Connection) -> list[dict[str, Any]]:
        return [e for e in (conn.response or []) if e.get("type") == "searchResEntry"]

    def _bind(self, conn: Connection, who: str) -> bool:
        """Bind; False for invalid credentials, DirectoryUnavailable for anything else."""
        if conn.bind():
            return True
        code = (conn.result or {}).get("result")
        if code == INVALID_CREDENTIALS:
            return False
        raise DirectoryUnavailable(f"bind as {who} failed: "
                                   f"{(conn.result or {}).get('description')} ({code})")

    def _find_user(self, service: Connection, username: str) -> str | None:
        """The user's DN; None when no entry, or several, match."""
        cfg = self.config
        flt = cfg.user_search_filter.replace("{username}", escape_filter_chars(username))
        service.search(cfg.user_search_base, flt, search_scope=SUBTREE, attributes=[],
                       size_limit=2)
        code = (service.result or {}).get("result")
        entries = self._entries(service)
        if code not in (0, 4, 32):  # success, sizeLimitExceeded, noSuchObject
            raise DirectoryUnavailable(f"user search failed: {service.result}")
        if len(entries) != 1:
            log.debug("ldap: %d entries match the login name", len(entries))
            return None
        return str(entries[0]["dn"])

    def _decoy_bind(self, server: Server) -> Connection:
        """The user bind of a login whose user was not found: a DN nobody has, a random
        password; every answer but a network failure is a refusal."""
        decoy = self._connection(server, f"{DECOY_RDN},{self.config.user_search_base}",
                                 secrets.token_urlsafe(24))
        try:
            decoy.bind()
        except BaseException:
            _close(decoy)
            raise
        return decoy

    def _groups(self, conn: Connection, username: str, user_dn: str) -> tuple[str, ...]:
        cfg = self.config
        if not cfg.group_search_base:
            return ()
        flt = (cfg.group_search_filter.replace("{user_dn}", escape_filter_chars(user_dn))
               .replace("{username}", escape_filter_chars(username)))
        conn.search(cfg.group_search_base, flt, search_scope=SUBTREE, attributes=[])
        code = (conn.result or {}).get("result")
        if code not in (0, 4, 32):
            raise DirectoryUnavailable(f"group search failed: {conn.result}")
        if code == 32:
            log.warning("ldap: group_search_base %r does not exist", cfg.group_search_base)
        return tuple(str(e["dn"]) for e in self._entries(conn))

    def _service(self, server: Server) -> Connection:
        """A connection bound as the service account (DirectoryUnavailable if refused)."""
        service = self._connection(server, self.config.bind_dn, self.config.bind_password)
        try:
            if not self._bind(service, "the service account"):
                raise DirectoryUnavailable("the directory refused the service account "
                                           "(plugins.acl.ldap.bind_dn / bind_password)")
        except BaseException:
            _close(service)
            raise
        return service

    def refresh(self, usernames: Sequence[str]) -> dict[str, tuple[str, ...] | None]:
        """Blocking (a login thread): each person's groups now, read with the service
        account over one connection; None for a person no longer found (no entry, or
        several). Search-then-bind mode only. :raises DirectoryUnavailable:."""
        assert self.config.search_then_bind
        found: dict[str, tuple[str, ...] | None] = {}
        service: Connection | None = None
        try:
            service = self._service(self._server())
            for username in usernames:
                user_dn = self._find_user(service, username)
                found[username] = (None if user_dn is None
                                   else self._groups(service, username, user_dn))
        except LDAPException as exc:  # sockets, timeouts, TLS, protocol
            raise DirectoryUnavailable(f"{type(exc).__name__}: {exc}") from None
        finally:
            if service is not None:
                _close(service)
        return found

    def authenticate(self, username: str, password: str) -> LoginResult:
        """Blocking. :raises LoginRefused: / :raises DirectoryUnavailable:."""
        if (not username or not password or len(username) > MAX_USERNAME
                or _CONTROL.search(username)):
            raise LoginRefused
        try:
            validate_simple_password(password)
        except LDAPException:
            # A password ldap3 will not send (SASLprep refuses it) is no account's: it
            # fails like any wrong one, by the same path (a random one is sent instead)
            password = secrets.token_urlsafe(24)
        cfg = self.config
        server = self._server()
        service: Connection | None = None
        user_conn: Connection | None = None
        try:
            if cfg.search_then_bind:
                service = self._service(server)
                found = self._find_user(service, username)
                if found is None:
                    user_conn = self._decoy_bind(server)
                    raise LoginRefused
                user_dn = found
            else:
                user_dn = cfg.user_dn_template.replace("{username}", escape_rdn(username))
            user_conn = self._connection(server, user_dn, password)
            try:
                if not self._bind(user_conn, "the user"):
                    raise LoginRefused
            except LDAPInvalidDnError:
                raise LoginRefused from None
            groups = self._groups(service or user_conn, username, user_dn)
        except (LoginRefused, DirectoryUnavailable):
            raise
        except LDAPException as exc:  # sockets, timeouts, TLS, protocol
            raise DirectoryUnavailable(f"{type(exc).__name__}: {exc}") from None
        finally:
            for conn in (user_conn, service):
                if conn is not None:
                    _close(conn)
        admin, tags = cfg.grants(groups)
        return LoginResult(user_dn=user_dn, groups=tuple(groups), admin=admin, tags=tags)


def _close(conn: Connection) -> None:
    try:
        conn.unbind()
    except LDAPException:
        pass
    sock = getattr(conn, "socket", None)  # ldap3 leaves it open when connect() failed
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.close()
