"""The acl plugin bound to one running gateway.

``sg_startup`` creates an :class:`AclRuntime` and keeps it in that gateway's stash
(``gateway.stash[RUNTIME]``), so the plugin's hooks find the gateway's metrics, token
key and settings; several gateways in one process (tests) each get their own.
``sg_shutdown`` takes it out and stops it (:meth:`AclRuntime.stop`).

With LDAP login on it owns the login threads (:class:`.limits.LoginThreads`), the
failed-login tables (:class:`.limits.FailureBackoff`, per username and per client
address) and the token store (:class:`.tokenstore.TokenStore`).

It runs one background task, owned by the gateway (``gateway.spawn``), the
*revocation watcher*: every
``plugins.acl.revocation_check_interval_seconds`` it looks at the live external
streams, asks the key store whether each API key is still active and the token
store whether each sign-in token is (a revocation by ``sessiongate keys revoke`` or
``sessiongate tokens revoke`` in another process is seen too: both stores are
shared SQLite files) and ends the streams of revoked keys, revoked tokens and
expired tokens with ``UNAUTHENTICATED``. The gateway cancels and awaits it at
shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from typing import TYPE_CHECKING

from sessiongate.core import LoginGrant, StashKey
from sessiongate.core.errors import (
    GatewayError,
    NotFound,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)

from . import policy
from .limits import FailureBackoff, LoginThreads, client_address
from .tokens import MintedToken, TokenIdentity, TokenSigner
from .tokenstore import STORE_FILE, TokenStore

if TYPE_CHECKING:
    from collections.abc import Iterable

    from sessiongate.core import GatewayAPI, Identity, Session, Subscription

    from .directory import Directory, LoginResult

__all__ = ["RUNTIME", "AclRuntime"]

log = logging.getLogger("sessiongate.plugins.acl")

RUNTIME: StashKey[AclRuntime] = StashKey("acl.runtime")
REFUSED = "invalid username or password"
UNAVAILABLE = "the directory is unavailable; try again later"
#: the longest login name the failure table keeps (the directory refuses longer ones)
MAX_NAME = 256


def login_name(username: str) -> str:
    """The name a login counts against (and its token is issued to)."""
    return username[:MAX_NAME].strip().lower()


class AclRuntime:
    """Decision hooks, the login service and the revocation watcher of one gateway."""

    def __init__(self, gateway: GatewayAPI) -> None:
        self.gateway = gateway
        self.metrics = gateway.metrics
        acl = gateway.settings.plugins.acl
        ldap = acl.ldap
        self.interval = float(acl.revocation_check_interval_seconds)
        self.ttl = float(acl.token_ttl_seconds)
        self.ldap_enabled = bool(ldap.enabled)
        self.directory: Directory | None = None
        self.tokens: TokenSigner | None = None
        self.store: TokenStore | None = None
        self.threads = LoginThreads(int(ldap.max_logins_in_flight))
        common = {"window": float(ldap.failure_window_seconds),
                  "backoff": float(ldap.backoff_seconds),
                  "maximum": float(ldap.backoff_max_seconds),
                  "capacity": int(ldap.failure_table_size)}
        self.user_failures = FailureBackoff(
            threshold=int(ldap.user_failures_before_backoff), **common)
        self.peer_failures = FailureBackoff(
            threshold=int(ldap.peer_failures_before_backoff), **common)

    async def start(self) -> None:
        if self.ldap_enabled:
            from .directory import Directory, LdapConfig  # ldap3 only when LDAP is on

            self.directory = Directory(LdapConfig.from_settings(self.gateway.settings))
            self.tokens = await asyncio.to_thread(TokenSigner.from_state_dir,
                                                  self.gateway.state_dir, self.ttl)
            self.store = await TokenStore(self.gateway.state_dir / STORE_FILE).open()
            try:
                await self.store.prune()
            except BaseException:
                await self.stop()
                raise
            self.threads.start()
        # owned by the gateway: cancelled and awaited at shutdown
        self.gateway.spawn(self._watch(), "acl-revocation-watcher")
        log.info("acl: sessions are owner/admin/tag gated; LDAP login %s",
                 f"on ({self.directory.config.url})" if self.directory else "off")

    async def stop(self) -> None:
        """Stop the login threads (running exchanges end within the directory timeout)
        and close the token store."""
        self.threads.shutdown()
        store, self.store = self.store, None
        if store is not None:
            await store.close()

    # -- decisions -----------------------------------------------------------------------

    async def authenticate(self, credential: str) -> Identity:
        """A sign-in token of ours: the identity it carries, or ``Unauthenticated``."""
        try:
            if self.tokens is None or self.store is None:
                raise Unauthenticated("sign-in tokens are not accepted: LDAP login is off "
                                      "(plugins.acl.ldap.enabled)")
            identity = self.tokens.verify(credential)
            await self._check_recorded(identity)
        except Unauthenticated as exc:
            self.metrics.inc("acl_tokens", outcome="refused")
            log.info("acl: token refused: %s", exc.message)
            raise
        self.metrics.inc("acl_tokens", outcome="accepted")
        return identity

    async def _check_recorded(self, identity: TokenIdentity) -> None:
        """Only a token the store holds as live is accepted (revocable, see tokenstore)."""
        assert self.store is not None
        try:
            state = await self.store.state(identity.token_id)
        except Exception:
            log.exception("acl: the token store cannot be read; token refused")
            raise Unavailable("sign-in tokens cannot be checked now; try again later") from None
        if state == "revoked":
            raise Unauthenticated(f"the sign-in token {identity.token_id} has been revoked; "
                                  "log in again")
        if state != "live":
            raise Unauthenticated(f"the sign-in token {identity.token_id} is unknown to this "
                                  "gateway; log in again")

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

    async def login(self, username: str, password: str, peer: str) -> LoginGrant:
        """The Login RPC: limits, LDAP bind, groups → admin/tags, a recorded token."""
        from .directory import DirectoryUnavailable, LoginRefused

        name, address, shown = login_name(username), client_address(peer), username[:64]
        self._refuse_while_backing_off(name, address, shown)
        future = self.threads.submit(self._exchange, username, password, name, address)
        if future is None:
            self.metrics.inc("acl_logins", outcome="busy")
            log.info("acl: LDAP login of %r from %s refused: %d logins in progress", shown,
                     address or "?", self.threads.size)
            raise ResourceExhausted("too many logins in progress; try again shortly",
                                    retry_after=1)
        started, loop = time.monotonic(), asyncio.get_running_loop()

        def timed(_: object) -> None:  # in the login's thread: count on the loop
            with contextlib.suppress(RuntimeError):  # the loop has closed meanwhile
                loop.call_soon_threadsafe(self.metrics.observe, "acl_login_seconds",
                                          time.monotonic() - started)

        future.add_done_callback(timed)
        try:
            result = await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            # the exchange runs on (a thread cannot be stopped) and keeps its slot
            self.metrics.inc("acl_logins", outcome="cancelled")
            log.info("acl: LDAP login of %r cancelled by the caller", shown)
            raise
        except LoginRefused:
            self.metrics.inc("acl_logins", outcome="refused")
            log.info("acl: LDAP login refused for %r from %s", shown, address or "?")
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
        minted = await self.issue(name, admin=result.admin, tags=result.tags)
        self.metrics.inc("acl_logins", outcome="ok")
        log.info("acl: LDAP login of %r (%s) from %s: token %s, admin=%s, %d tag(s), "
                 "%d group(s)", shown, result.user_dn, address or "?", minted.token_id,
                 result.admin, len(result.tags), len(result.groups))
        if not result.admin and not result.tags:
            log.info("acl: %r is in no mapped group: the login grants nothing", shown)
        return LoginGrant(token=minted.token, expires_at=minted.expires_at,
                          admin=minted.admin, tags=minted.tags, token_id=minted.token_id)

    def _exchange(self, username: str, password: str, name: str,
                  address: str) -> LoginResult:
        """On a login thread: ask the directory; count the outcome here, so that a login
        whose caller went away still counts."""
        from .directory import LoginRefused

        assert self.directory is not None
        try:
            result = self.directory.authenticate(username, password)
        except LoginRefused:
            for failures, key, whose in ((self.user_failures, name, f"for {name[:64]!r}"),
                                         (self.peer_failures, address, f"from {address}")):
                refused = failures.failed(key) if key else 0.0
                if refused:
                    log.warning("acl: too many failed logins %s: refused for %.0f s", whose,
                                refused)
            raise
        self.user_failures.succeeded(name)
        return result

    def _refuse_while_backing_off(self, name: str, address: str, shown: str) -> None:
        """``ResourceExhausted`` with a retry hint while the name or the address is
        refused for its failed logins."""
        by_name = self.user_failures.retry_after(name)
        by_address = self.peer_failures.retry_after(address) if address else 0.0
        wait = max(by_name, by_address)
        if wait <= 0:
            return
        limit = "username" if by_name >= by_address else "peer"
        seconds = math.ceil(wait)
        self.metrics.inc("acl_logins", outcome="throttled", limit=limit)
        log.info("acl: LDAP login of %r from %s refused for %d s more (too many failed "
                 "logins %s)", shown, address or "?", seconds,
                 "for the username" if limit == "username" else "from the address")
        what = "for this username" if limit == "username" else "from your address"
        raise ResourceExhausted(f"too many failed logins {what}; try again in {seconds} s",
                                retry_after=wait)

    async def issue(self, username: str, *, admin: bool, tags: Iterable[str],
                    ttl: float | None = None) -> MintedToken:
        """Mint a token and record it (a token the store does not hold is refused)."""
        assert self.tokens is not None and self.store is not None
        minted = self.tokens.mint(username, admin=admin, tags=tags, ttl=ttl)
        try:
            await self.store.record(minted)
        except Exception:
            log.exception("acl: the token store cannot be written; login refused")
            self.metrics.inc("acl_logins", outcome="unavailable")
            raise Unavailable("the sign-in token could not be recorded; try again "
                              "later") from None
        return minted

    # -- revocation ------------------------------------------------------------------------

    async def revoke_credential(self, credential: str) -> bool:
        """Sign-out (``sg_revoke_credential``): revoke the token ``credential`` itself.

        It is verified first, so only its holder can revoke it; an expired or invalid
        token has nothing left to revoke (False). Its live streams end at the next
        revocation check, like those of ``sessiongate tokens revoke``.
        """
        if self.tokens is None or self.store is None:
            return False
        try:
            identity = self.tokens.verify(credential)
            await self.store.revoke(identity.token_id)
        except (Unauthenticated, NotFound):
            return False
        log.info("acl: sign-in token %s revoked by its holder (signed out)", identity.token_id)
        return True

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
        """End the streams of revoked API keys, revoked and expired tokens; returns how
        many. Also forgets old failed logins."""
        self.user_failures.prune()
        self.peer_failures.prune()
        by_key: dict[str, list[tuple[Session, Subscription]]] = {}
        by_token: dict[str, list[tuple[Session, Subscription]]] = {}
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
                elif isinstance(identity, TokenIdentity):
                    by_token.setdefault(identity.token_id, []).append((session, sub))
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
        if by_token and self.store is not None:
            for token_id in sorted(await self.store.inactive(by_token)):
                streams = by_token[token_id]
                log.info("acl: sign-in token %s is revoked: ending its %d live stream(s)",
                         token_id, len(streams))
                for session, sub in streams:
                    self._end(session, sub, f"the sign-in token {token_id} has been "
                              "revoked; log in again", "token revoked")
                    ended += 1
        return ended

    def _end(self, session: Session, sub: Subscription, message: str, reason: str) -> None:
        if sub.end(Unauthenticated(message), reason=reason):
            self.metrics.inc("acl_streams_ended", reason=reason)
        session.unsubscribe(sub, reason)
