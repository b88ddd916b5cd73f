"""The acl plugin bound to one running gateway.

``sg_startup`` creates an :class:`AclRuntime` and keeps it in that gateway's stash
(``gateway.stash[RUNTIME]``), so the plugin's hooks find the gateway's metrics, token
key and settings; several gateways in one process (tests) each get their own.
``sg_shutdown`` takes it out and stops it (:meth:`AclRuntime.stop`).

With LDAP login on it owns the login threads (:class:`.limits.LoginThreads`), the
failed-login tables (:class:`.limits.FailureBackoff`, per username and per client
address) and the token store (:class:`.tokenstore.TokenStore`).

A sign-in token is accepted only while its record in the store is live, and what it
grants is computed from the directory groups recorded with it under the *current*
``admin_groups`` and ``group_tags`` each time it is presented: a mapping changed
(and the gateway restarted) applies to tokens already issued.

Background tasks, owned by the gateway (``gateway.spawn``: cancelled and awaited at
shutdown):

* the *revocation watcher*: every ``plugins.acl.revocation_check_interval_seconds`` it
  looks at the live external streams, asks the key store whether each API key is
  still active and the token store whether each sign-in token is, and what the
  token's groups grant now, and ends the streams of revoked keys, revoked and expired
  tokens (``UNAUTHENTICATED``) and of tokens that may no longer stream their session
  (``PERMISSION_DENIED``);
* with LDAP on, the *token watcher*: four times a second it asks SQLite whether the
  token store changed (two integers, no query); a token newly revoked there
  (``sessiongate tokens revoke`` in another process) has its streams ended at once
  and is announced (``sg_credential_changed``: the cluster plugin tells other nodes);
* in search-then-bind mode, the *group refresh*: every
  ``plugins.acl.ldap.group_refresh_interval_seconds`` (by default the revocation
  interval) it reads again, on one of the login threads and with the service
  account, the groups of the people whose tokens are in use (a live stream, or a call
  since the last refresh); a change is recorded on their tokens, announced, and their
  streams checked at once; a person no longer found has their tokens revoked.

Every change to a token (issued, revoked, groups changed, or such a change from
another node applied here: :meth:`AclRuntime.apply_record`) is announced with
``GatewayAPI.announce_credential``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from sessiongate.core import ADMIN_SCOPE, LoginGrant, StashKey
from sessiongate.core.errors import (
    GatewayError,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)

from . import policy
from .limits import FailureBackoff, LoginThreads, client_address
from .tokens import SUBJECT_PREFIX, TOKEN_ID, TOKEN_KIND, MintedToken, TokenIdentity, TokenSigner
from .tokenstore import ADDED, CONFLICT, REVOKED, STORE_FILE, UPDATED, TokenRow, TokenStore

if TYPE_CHECKING:
    from collections.abc import Collection, Iterator, Sequence

    from sessiongate.core import CredentialRecord, GatewayAPI, Identity, Session, Subscription

    from .directory import Directory, LoginResult

__all__ = ["RUNTIME", "AclRuntime"]

log = logging.getLogger("sessiongate.plugins.acl")

RUNTIME: StashKey[AclRuntime] = StashKey("acl.runtime")
REFUSED = "invalid username or password"
UNAVAILABLE = "the directory is unavailable; try again later"
#: the longest login name the failure table keeps (the directory refuses longer ones)
MAX_NAME = 256
#: how often the token watcher asks whether the token store changed (two integers)
STORE_CHECK_SECONDS = 0.25
#: tokens remembered as used since the last group refresh, at most (beyond: not noted;
#: those with a live stream are refreshed anyway)
MAX_IN_USE = 100_000
#: people whose groups one refresh reads at most (least recently refreshed first)
MAX_REFRESH = 256

Streams = dict[str, list[tuple["Session", "Subscription"]]]


def login_name(username: str) -> str:
    """The name a login counts against (and its token is issued to)."""
    return username[:MAX_NAME].strip().lower()


class AclRuntime:
    """Decision hooks, the login service, the token records and the watchers of one
    gateway."""

    def __init__(self, gateway: GatewayAPI) -> None:
        self.gateway = gateway
        self.metrics = gateway.metrics
        acl = gateway.settings.plugins.acl
        ldap = acl.ldap
        self.interval = float(acl.revocation_check_interval_seconds)
        self.refresh_interval = float(ldap.group_refresh_interval_seconds) or self.interval
        self.ttl = float(acl.token_ttl_seconds)
        self.key_file = str(acl.token_key_file)
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
        #: token id -> username of the tokens that authenticated a call since the last
        #: group refresh (bounded by MAX_IN_USE)
        self._used: dict[str, str] = {}
        #: username -> when (monotonic) their groups were last read
        self._refreshed: dict[str, float] = {}
        #: revoked, unexpired tokens already handled here (the token watcher handles and
        #: announces the others: revoked by another process)
        self._revoked_seen: set[str] = set()
        self._store_version: tuple[int, int] | None = None
        self._directory_down = False
        #: the group refresh runs (search-then-bind mode): tokens in use are noted
        self.refreshing = False

    async def start(self) -> None:
        if self.ldap_enabled:
            from .directory import Directory, LdapConfig  # ldap3 only when LDAP is on

            self.directory = Directory(LdapConfig.from_settings(self.gateway.settings))
            self.tokens = await asyncio.to_thread(TokenSigner.from_file, self.key_file,
                                                  self.gateway.state_dir, self.ttl)
            self.store = await TokenStore(self.gateway.state_dir / STORE_FILE).open()
            try:
                await self.store.prune()
                self._store_version = await self.store.version()
                self._revoked_seen = await self.store.revoked_ids()
            except BaseException:
                await self.stop()
                raise
            self.threads.start()
            # owned by the gateway: cancelled and awaited at shutdown
            self.gateway.spawn(self._every(STORE_CHECK_SECONDS, self.check_store_once,
                                           "token watch"), "acl-token-watcher")
            if self.directory.config.search_then_bind:
                self.refreshing = True
                self.gateway.spawn(self._every(self.refresh_interval, self.refresh_once,
                                               "group refresh"), "acl-group-refresh")
        self.gateway.spawn(self._every(self.interval, self.check_once, "revocation check"),
                           "acl-revocation-watcher")
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
        """A sign-in token of ours: who holds it and what its groups grant now, or
        ``Unauthenticated``."""
        try:
            if self.tokens is None or self.store is None:
                raise Unauthenticated("sign-in tokens are not accepted: LDAP login is off "
                                      "(plugins.acl.ldap.enabled)")
            identity = self.tokens.verify(credential)
            row = await self._recorded(identity)
        except Unauthenticated as exc:
            self.metrics.inc("acl_tokens", outcome="refused")
            log.info("acl: token refused: %s", exc.message)
            raise
        self.metrics.inc("acl_tokens", outcome="accepted")
        if self.refreshing and len(self._used) < MAX_IN_USE:
            self._used[row.token_id] = row.username
        return self._current(identity, row)

    async def _recorded(self, identity: TokenIdentity) -> TokenRow:
        """Only a token the store holds as live is accepted (revocable, see tokenstore)."""
        assert self.store is not None
        try:
            row = await self.store.get(identity.token_id)
        except Exception:
            log.exception("acl: the token store cannot be read; token refused")
            raise Unavailable("sign-in tokens cannot be checked now; try again later") from None
        if row is None:
            raise Unauthenticated(f"the sign-in token {identity.token_id} is unknown to this "
                                  "gateway; log in again")
        if row.revoked:
            raise Unauthenticated(f"the sign-in token {identity.token_id} has been revoked; "
                                  "log in again")
        return row

    def _current(self, identity: TokenIdentity, row: TokenRow) -> TokenIdentity:
        """``identity`` with what its recorded groups grant under the current mapping (a
        row from before groups were recorded keeps the grants it was issued with)."""
        if row.groups is None or self.directory is None:
            admin, tags = row.admin, frozenset(row.tags)
        else:
            admin, tags = self.directory.config.grants(row.groups)
        return dataclasses.replace(identity, tags=tags,
                                   scopes=frozenset({ADMIN_SCOPE}) if admin else frozenset())

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
        minted = await self.issue(name, groups=result.groups)
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

    async def issue(self, username: str, *, groups: Sequence[str],
                    ttl: float | None = None) -> MintedToken:
        """Mint a token granting what ``groups`` grant now, record it (a token the store
        does not hold is refused) and announce it (other nodes learn it)."""
        assert self.tokens is not None and self.store is not None
        assert self.directory is not None
        admin, tags = self.directory.config.grants(groups)
        minted = self.tokens.mint(username, admin=admin, tags=tags, ttl=ttl)
        try:
            row = await self.store.record(minted, groups)
        except Exception:
            log.exception("acl: the token store cannot be written; login refused")
            self.metrics.inc("acl_logins", outcome="unavailable")
            raise Unavailable("the sign-in token could not be recorded; try again "
                              "later") from None
        await self.gateway.announce_credential(row.record())
        return minted

    # -- records shared with other nodes (cluster) -----------------------------------------

    async def credential_records(self) -> list[CredentialRecord]:
        """Every unexpired token's record (``sg_credential_records``). Rows from before
        groups were recorded are left out: other nodes could not compute their grants."""
        if self.store is None:
            return []
        return [row.record() for row in await self.store.unexpired()
                if row.groups is not None]

    async def apply_record(self, record: CredentialRecord) -> str | None:
        """A token record from another node (``sg_apply_credential_record``): merged into
        the store, what it grants computed here; a revoked token's streams end, and
        those its groups no longer allow, before this returns."""
        if record.kind != TOKEN_KIND:
            return None  # another plugin's credential
        if self.store is None or self.directory is None:
            return None  # LDAP login is off here: no token is accepted anyway
        if (not TOKEN_ID.fullmatch(record.credential_id)
                or record.subject != SUBJECT_PREFIX + record.name):
            return CONFLICT
        admin, tags = self.directory.config.grants(record.groups)
        outcome, row = await self.store.apply(record, admin, tags)
        if outcome in (ADDED, UPDATED, REVOKED) and row is not None:
            if row.revoked:
                self._revoked_seen.add(row.token_id)
            if outcome == REVOKED:
                log.info("acl: sign-in token %s was revoked on another node: applied",
                         row.token_id)
            await self._changed([row])
        return outcome

    async def _changed(self, rows: Sequence[TokenRow]) -> None:
        """Tokens changed here: check their live streams now, then announce them."""
        await self._check_tokens(self._streams({row.token_id for row in rows}))
        for row in rows:
            await self.gateway.announce_credential(row.record())

    # -- revocation ------------------------------------------------------------------------

    async def revoke_credential(self, credential: str) -> bool:
        """Sign-out (``sg_revoke_credential``): revoke the token ``credential`` itself.

        It is verified first, so only its holder can revoke it; an expired or invalid
        token has nothing left to revoke (False). Its live streams end at once, and the
        revocation is announced (other nodes refuse it too).
        """
        if self.tokens is None or self.store is None:
            return False
        try:
            identity = self.tokens.verify(credential)
            row = await self.store.revoke(identity.token_id)
        except (Unauthenticated, NotFound):
            return False
        log.info("acl: sign-in token %s revoked by its holder (signed out)", identity.token_id)
        self._revoked_seen.add(row.token_id)
        await self._changed([row])
        return True

    async def _every(self, seconds: float, check: Callable[[], Awaitable[object]],
                     what: str) -> None:
        """Run ``check`` every ``seconds`` until cancelled; a failed run is logged."""
        while True:
            await asyncio.sleep(seconds)
            try:
                await check()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("acl: %s failed; retrying", what)

    def _live_streams(self) -> Iterator[tuple[Session, Subscription, Identity]]:
        """Every live external stream with its caller."""
        for session in self.gateway.sessions():
            for sub in session.subscriptions():
                if sub.external and sub.identity is not None and not sub.ended:
                    yield session, sub, sub.identity

    def _streams(self, token_ids: Collection[str]) -> Streams:
        """The live streams of these tokens, by token id."""
        found: Streams = {}
        for session, sub, identity in self._live_streams():
            if isinstance(identity, TokenIdentity) and identity.token_id in token_ids:
                found.setdefault(identity.token_id, []).append((session, sub))
        return found

    async def check_once(self) -> int:
        """End the streams of revoked API keys, of revoked and expired tokens and of
        tokens whose groups no longer allow them; returns how many. Also forgets old
        failed logins."""
        self.user_failures.prune()
        self.peer_failures.prune()
        by_key: dict[str, list[tuple[Session, Subscription]]] = {}
        by_token: Streams = {}
        ended = 0
        now = time.time()
        for session, sub, identity in self._live_streams():
            if identity.expires_at is not None and identity.expires_at <= now:
                self._end(session, sub, Unauthenticated(
                    f"the sign-in token of {identity.key_id} has expired; log in again"),
                    "token expired")
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
                self._end(session, sub, Unauthenticated(f"API key {key_id} has been revoked"),
                          "key revoked")
                ended += 1
        return ended + await self._check_tokens(by_token)

    async def _check_tokens(self, by_token: Streams) -> int:
        """End the streams of tokens revoked (or no longer on record), and those whose
        token's groups no longer allow streaming their session; returns how many."""
        if not by_token or self.store is None:
            return 0
        rows = await self.store.rows(by_token)
        ended = 0
        for token_id, streams in sorted(by_token.items()):
            row = rows.get(token_id)
            if row is None or row.revoked:
                log.info("acl: sign-in token %s is revoked: ending its %d live stream(s)",
                         token_id, len(streams))
                for session, sub in streams:
                    self._end(session, sub, Unauthenticated(
                        f"the sign-in token {token_id} has been revoked; log in again"),
                        "token revoked")
                    ended += 1
                continue
            for session, sub in streams:
                assert isinstance(sub.identity, TokenIdentity)
                identity = self._current(sub.identity, row)
                allowed, why = policy.decide(identity, "stream", session)
                if allowed:
                    continue
                log.info("acl: %s may no longer stream session %s (%s): stream ended",
                         identity.key_id, session.session_id, why)
                self._end(session, sub, PermissionDenied(
                    f"{identity.key_id} may no longer stream session {session.session_id}: "
                    "its directory groups changed"), "access withdrawn")
                ended += 1
        return ended

    def _end(self, session: Session, sub: Subscription, error: GatewayError,
             reason: str) -> None:
        if sub.end(error, reason=reason):
            self.metrics.inc("acl_streams_ended", reason=reason)
        session.unsubscribe(sub, reason)

    async def check_store_once(self) -> int:
        """Find the tokens revoked in the store by another process since the last look
        (``sessiongate tokens revoke``): end their streams now and announce them.
        Returns how many. A look that finds the store unchanged costs two integers."""
        assert self.store is not None
        version = await self.store.version()
        if version == self._store_version:
            return 0
        self._store_version = version
        revoked = await self.store.revoked_ids()
        new = revoked - self._revoked_seen
        self._revoked_seen = revoked  # bounded: unexpired tokens only
        if not new:
            return 0
        rows = await self.store.rows(new)
        log.info("acl: %d sign-in token(s) revoked in the token store: %s", len(rows),
                 ", ".join(sorted(rows)))
        await self._changed(list(rows.values()))
        return len(rows)

    # -- group refresh (search-then-bind) ---------------------------------------------------

    def _people_in_use(self) -> list[str]:
        """Whose tokens are in use: a live stream, or a call since their last refresh;
        least recently refreshed first, at most MAX_REFRESH."""
        people = set(self._used.values())
        for _session, _sub, identity in self._live_streams():
            if isinstance(identity, TokenIdentity):
                people.add(identity.key_id.removeprefix(SUBJECT_PREFIX))
        self._refreshed = {u: t for u, t in self._refreshed.items() if u in people}
        chosen = sorted(people, key=lambda u: (self._refreshed.get(u, 0.0), u))[:MAX_REFRESH]
        picked = set(chosen)
        self._used = {t: u for t, u in self._used.items() if u not in picked}
        return chosen

    async def refresh_once(self) -> int:
        """Read the groups of the people whose tokens are in use again (on a login
        thread, with the service account) and record changes on their tokens: streams
        checked and changes announced at once; a person no longer in the directory has
        their tokens revoked. Returns how many tokens changed. With every login thread
        busy, or the directory away, the recorded groups stand until the next round."""
        from .directory import DirectoryUnavailable

        assert self.directory is not None and self.store is not None
        people = self._people_in_use()
        if not people:
            return 0
        future = self.threads.submit(self.directory.refresh, people)
        if future is None:
            self.metrics.inc("acl_group_refreshes", outcome="busy")
            log.debug("acl: group refresh skipped: every login thread is busy")
            return 0
        try:
            found = await asyncio.wrap_future(future)
        except DirectoryUnavailable as exc:
            self.metrics.inc("acl_group_refreshes", outcome="unavailable")
            if not self._directory_down:  # once per outage
                self._directory_down = True
                log.warning("acl: cannot refresh the groups of token holders (%s); their "
                            "recorded groups stand until the directory answers", exc)
            return 0
        if self._directory_down:
            self._directory_down = False
            log.info("acl: the directory answers again: group refresh resumed")
        self.metrics.inc("acl_group_refreshes", outcome="ok")
        now = time.monotonic()
        changed: list[TokenRow] = []
        config = self.directory.config
        for username, groups in found.items():
            self._refreshed[username] = now
            if groups is None:
                rows = await self.store.revoke_user(username)
                self._revoked_seen.update(row.token_id for row in rows)
                if rows:
                    log.info("acl: %r is no longer found in the directory: revoked their %d "
                             "sign-in token(s)", username[:64], len(rows))
            else:
                admin, tags = config.grants(groups)
                rows = await self.store.set_groups(username, groups, admin, tags)
                if rows:
                    log.info("acl: the directory groups of %r changed: now admin=%s, %d "
                             "tag(s), on %d sign-in token(s)", username[:64], admin,
                             len(tags), len(rows))
            changed += rows
        if changed:
            await self._changed(changed)
        return len(changed)
