"""acl: session ownership, the admin scope, read-only tags, LDAP logins, signed tokens.

Switched by ``plugins.acl.enabled`` (default on). With it on:

* ``Invoke``, ``CloseSession`` and resuming a stream need the session's owner or
  ``sessions:admin``; ``GetSession``, ``ListSessions`` and ``StreamEvents`` also
  allow holders of the session's tag (read-only viewers). Everything else is
  ``PERMISSION_DENIED``; a session without owner is for admins only.
* Streams of viewers are *watchers*: they neither keep a session's lease alive nor
  count as attached for detach-grace.
* Revoking an API key (or a sign-in token) ends its live streams with
  ``UNAUTHENTICATED`` within about ``plugins.acl.revocation_check_interval_seconds``.
* With ``plugins.acl.ldap.enabled``, people log in with their directory account
  (``Login`` RPC, ``sessiongate login``) and get a short-lived Ed25519-signed JWT,
  accepted as ``authorization: Bearer <token>``; directory groups grant the admin
  scope (``admin_groups``) and tags (``group_tags``), computed from the groups recorded
  with the token under the current settings each time it is presented (and, with a
  service account, the groups of people using tokens are read again regularly). Logins
  are limited (threads in flight, failures per username and per client address, with
  backoff); every token is recorded and can be revoked alone (``sessiongate tokens
  revoke ID``, or by its holder signing out: ``sg_revoke_credential``).
* Token records are announced (``sg_credential_changed``), listed
  (``sg_credential_records``) and taken from other nodes
  (``sg_apply_credential_record``): with the cluster plugin and one signing key
  (``plugins.acl.token_key_file``) shared by every node, a token works on every node
  and a revocation anywhere is applied everywhere.

Module layout: :mod:`.rules` (settings), :mod:`.policy` (the decision, pure),
:mod:`.tokens` (JWTs), :mod:`.tokenstore` (issued and revoked tokens),
:mod:`.directory` (ldap3), :mod:`.limits` (login threads and backoff),
:mod:`.runtime` (the per-gateway hooks, login service and revocation watcher),
:mod:`.cli` (``sessiongate tokens``). See docs/plugins/acl.md.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from sessiongate.core import Metric, counter, histogram, hookimpl
from sessiongate.core.errors import Unauthenticated

from .cli import TOKENS_COMMAND
from .policy import decide, keeps_alive
from .rules import SECRET_KEYS, rules
from .runtime import RUNTIME, AclRuntime
from .tokens import TokenSigner, is_ours

if TYPE_CHECKING:
    from sessiongate.core import (
        CredentialRecord,
        GatewayAPI,
        Identity,
        LoginGrant,
        PluginCommand,
        Session,
        Setting,
        Settings,
    )

__all__ = ["AclRuntime", "TokenSigner", "decide", "keeps_alive", "runtime_of"]

log = logging.getLogger("sessiongate.plugins.acl")


def runtime_of(gateway: GatewayAPI) -> AclRuntime | None:
    """The acl runtime serving ``gateway`` (None before startup, or if it failed)."""
    return gateway.stash.get(RUNTIME)


@hookimpl
def sg_add_validators(settings: Settings) -> Sequence[Setting]:
    return rules(settings)


@hookimpl
def sg_metrics() -> Sequence[Metric]:
    return [
        counter("acl_tokens", "Sign-in tokens presented, by outcome.",
                {"outcome": ("accepted", "refused")}),
        counter("acl_decisions", "acl's authorization decisions, by action and outcome.",
                {"action": None, "outcome": ("allow", "deny")}),
        counter("acl_logins", "LDAP logins by outcome (throttled: by which limit).",
                {"outcome": ("ok", "refused", "busy", "cancelled", "unavailable",
                             "throttled"),
                 "limit": ("username", "peer")}),
        histogram("acl_login_seconds", "Time of an LDAP login's directory exchange "
                  "(connect, searches, binds), whatever its outcome.",
                  (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)),
        counter("acl_streams_ended", "Live streams acl ended: their key or token was "
                "revoked (revocations applied), their token expired, or their token's "
                "directory groups no longer allow the session (access withdrawn).",
                {"reason": ("key revoked", "token expired", "token revoked",
                            "access withdrawn")}),
        counter("acl_group_refreshes", "Rounds of reading token holders' directory groups "
                "again (search-then-bind mode), by outcome: ok, busy (every login thread "
                "taken: skipped), unavailable (the directory did not answer).",
                {"outcome": ("ok", "busy", "unavailable")}),
    ]


@hookimpl
def sg_secret_settings() -> Sequence[str]:
    return list(SECRET_KEYS)


@hookimpl
def sg_cli_commands() -> Sequence[PluginCommand]:
    return [TOKENS_COMMAND]


@hookimpl
async def sg_startup(gateway: GatewayAPI) -> None:
    runtime = AclRuntime(gateway)
    await runtime.start()
    gateway.stash[RUNTIME] = runtime


@hookimpl
async def sg_shutdown(gateway: GatewayAPI) -> None:
    runtime = gateway.stash.pop(RUNTIME, None)
    if runtime is not None:
        await runtime.stop()


@hookimpl
def sg_stream_keeps_alive(session: Session, identity: Identity) -> bool:
    """Owner's and admins' streams keep the session alive; viewers only watch."""
    return keeps_alive(identity, session)


# The runtime answers once started. Without it - its startup failed (logged by the
# plugin host) - nothing is allowed and no sign-in token is accepted (fail closed).


@hookimpl
def sg_authorize(gateway: GatewayAPI, identity: Identity, action: str,
                 session: Session | None) -> bool:
    runtime = runtime_of(gateway)
    if runtime is None:
        log.error("acl: not started (see the startup error above): %s refused", action)
        return False
    return runtime.authorize(identity, action, session)


@hookimpl
async def sg_authenticate(gateway: GatewayAPI, credential: str) -> Identity | None:
    if not is_ours(credential):
        return None  # an API key, or another plugin's token: not ours to judge
    runtime = runtime_of(gateway)
    if runtime is None:
        raise Unauthenticated("sign-in tokens are not accepted: the acl plugin did not start")
    return await runtime.authenticate(credential)


@hookimpl
async def sg_revoke_credential(gateway: GatewayAPI, credential: str) -> bool | None:
    if not is_ours(credential):
        return None  # an API key, or another plugin's token
    runtime = runtime_of(gateway)
    return False if runtime is None else await runtime.revoke_credential(credential)


@hookimpl
async def sg_login(gateway: GatewayAPI, username: str, password: str,
                   peer: str) -> LoginGrant | None:
    runtime = runtime_of(gateway)
    if runtime is None or not runtime.ldap_enabled:
        return None  # Login is not offered
    return await runtime.login(username, password, peer)


@hookimpl
async def sg_apply_credential_record(gateway: GatewayAPI,
                                     record: CredentialRecord) -> str | None:
    runtime = runtime_of(gateway)
    return None if runtime is None else await runtime.apply_record(record)


@hookimpl
async def sg_credential_records(gateway: GatewayAPI) -> Sequence[CredentialRecord]:
    runtime = runtime_of(gateway)
    return [] if runtime is None else await runtime.credential_records()
