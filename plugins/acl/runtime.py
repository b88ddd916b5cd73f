"""The acl plugin bound to one running gateway.

``sg_startup`` creates an :class:`AclRuntime` and keeps it in that gateway's stash
(``gateway.stash[RUNTIME]``), so the plugin's hooks find the gateway's metrics, token
key and settings; several gateways in one process (tests) each get their own.

It runs one background task, owned by the gateway (``gateway.spawn``), the
*revocation watcher*: every
``plugins.acl.revocation_check_interval_seconds`` it looks at the live external
streams, asks the key store whether each API key is still active (a revocation
by ``sessiongate keys revoke`` in another process is seen too: the store is a
shared SQLite file) and ends a revoked key's streams - and streams of expired
tokens - with ``UNAUTHENTICATED``. The gateway cancels and awaits it at shutdown.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from sessiongate.core import LoginGrant, StashKey
from sessiongate.core.errors import GatewayError, ResourceExhausted, Unauthenticated, Unavailable

from . import policy
from .tokens import TokenSigner

if TYPE_CHECKING:
    from sessiongate.core import GatewayAPI, Identity, Session, Subscription

    from .directory import Directory

__all__ = ["RUNTIME", "AclRuntime"]

log = logging.getLogger("sessiongate.plugins.acl")

RUNTIME: StashKey[AclRuntime] = StashKey("acl.runtime")
#: LDAP logins in flight at most (each holds a thread for up to the timeout)
MAX_LOGINS_IN_FLIGHT = 8
REFUSED = "invalid username or password"
UNAVAILABLE = "the directory is unavailable; try again later"


class AclRuntime:
    """Decision hooks, the login service and the revocation watcher of one gateway."""

    def __init__(self, gateway: GatewayAPI) -> None:
        self.gateway = gateway
        self.metrics = gateway.metrics
        acl = gateway.settings.plugins.acl
        self.interval = float(acl.revocation_check_interval_seconds)
        self.ttl = float(acl.token_ttl_seconds)
        self.ldap_enabled = bool(acl.ldap.enabled)
        self.directory: Directory | None = None
        self.tokens: TokenSigner | None = None
        self._logins_in_flight = 0

    async def start(self) -> None:
        if self.ldap_enabled:
            from .directory import Directory, LdapConfig  # ldap3 only when LDAP is on

            self.directory = Directory(LdapConfig.from_settings(self.gateway.settings))
            self.tokens = await asyncio.to_thread(TokenSigner.from_state_dir,
                                                  self.gateway.state_dir, self.ttl)
        # owned by the gateway: cancelled and awaited at shutdown
        self.gateway.spawn(self._watch(), "acl-revocation-watcher")
        log.info("acl: sessions are owner/admin/tag gated; LDAP login %s",
                 f"on ({self.directory.config.url})" if self.directory else "off")

    # -- decisions -----------------------------------------------------------------------

    def authenticate(self, credential: str) -> Identity:
        """A sign-in token of ours: the identity it carries, or ``Unauthenticated``."""
        if self.tokens is None:
            self.metrics.inc("acl_tokens", outcome="refused")
            raise Unauthenticated("sign-in tokens are not accepted: LDAP login is off "
                                  "(plugins.acl.ldap.enabled)")
        try:
            identity = self.tokens.verify(credential)
        except Unauthenticated as exc:
            self.metrics.inc("acl_tokens", outcome="refused")
            log.info("acl: token refused: %s", exc.message)
            raise
        self.metrics.inc("acl_tokens", outcome="accepted")
        return identity

    def authorize(self, identity: Identity, action: str, session: Session | None) -> bool:
        allowed, why = policy.decide(identity, action, session)
        outcome = "allow" if allowed else "deny"
        self.metrics.inc("acl_decisions", action=action, outcome=outcome)
        sid = session.session_id if session is not None else "-"
        # ListSessions asks once per session: its refusals are filtering, not denials.
        level = logging.INFO if not allowed and action != "list" else logging.DEBUG
        log.log(level, "acl: %s %s on session %s for %s %s (%s)", outcome, action, sid,
                identity.kind, identity.key_id, why)
        return allowed

    # -- login -----------------------------------------------------------------------------

    async def login(self, username: str, password: str) -> LoginGrant:
        """The Login RPC: LDAP bind, groups → admin/tags, a signed token."""
        from .directory import DirectoryUnavailable, LoginRefused

        assert self.directory is not None and self.tokens is not None
        shown = username[:64]
        if self._logins_in_flight >= MAX_LOGINS_IN_FLIGHT:
            self.metrics.inc("acl_logins", outcome="busy")
            raise ResourceExhausted("too many logins in progress; try again shortly")
        self._logins_in_flight += 1
        try:
            result = await asyncio.to_thread(self.directory.authenticate, username, password)
        except LoginRefused:
            self.metrics.inc("acl_logins", outcome="refused")
            log.info("acl: LDAP login refused for %r", shown)
            raise Unauthenticated(REFUSED) from None
        except DirectoryUnavailable as exc:
            self.metrics.inc("acl_logins", outcome="unavailable")
            log.warning("acl: LDAP login for %r impossible: %s", shown, exc)
            raise Unavailable(UNAVAILABLE) from None
        except GatewayError:
            raise
        except Exception:
            self.metrics.inc("acl_logins", outcome="unavailable")
            log.exception("acl: LDAP login for %r failed", shown)
            raise Unavailable(UNAVAILABLE) from None
        finally:
            self._logins_in_flight -= 1
        name = username.strip().lower()
        token, expires = self.tokens.mint(name, admin=result.admin, tags=result.tags)
        self.metrics.inc("acl_logins", outcome="ok")
        log.info("acl: LDAP login of %r (%s): admin=%s, %d tag(s), %d group(s)", shown,
                 result.user_dn, result.admin, len(result.tags), len(result.groups))
        if not result.admin and not result.tags:
            log.info("acl: %r is in no mapped group: the login grants nothing", shown)
        return LoginGrant(token=token, expires_at=expires, admin=result.admin,
                          tags=tuple(sorted(result.tags)))

    # -- revocation ------------------------------------------------------------------------

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.check_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("acl: revocation check failed; retrying")

    async def check_once(self) -> int:
        """End the streams of revoked API keys and expired tokens; returns how many."""
        by_key: dict[str, list[tuple[Session, Subscription]]] = {}
        ended = 0
        now = time.time()
        for session in self.gateway.sessions():
            for sub in session.subscriptions():
                identity = sub.identity
                if not sub.external or identity is None or sub.ended:
                    continue
                if identity.expires_at is not None and identity.expires_at <= now:
                    self._end(session, sub, f"the sign-in token of {identity.key_id} "
                              "has expired; log in again", "token expired")
                    ended += 1
                elif identity.kind == "api_key":
                    by_key.setdefault(identity.key_id, []).append((session, sub))
        for key_id, streams in by_key.items():
            if await self.gateway.key_is_active(key_id):
                continue
            log.info("acl: API key %s is revoked: ending its %d live stream(s)", key_id,
                     len(streams))
            for session, sub in streams:
                self._end(session, sub, f"API key {key_id} has been revoked", "key revoked")
                ended += 1
        return ended

    def _end(self, session: Session, sub: Subscription, message: str, reason: str) -> None:
        if sub.end(Unauthenticated(message), reason=reason):
            self.metrics.inc("acl_streams_ended", reason=reason)
        session.unsubscribe(sub, reason)
