"""acl: session ownership, the admin scope, read-only tags, LDAP logins, signed tokens.

Switched by ``plugins.acl.enabled`` (default on). With it on:

* ``Invoke``, ``CloseSession`` and resuming a stream need the session's owner or
  ``sessions:admin``; ``GetSession``, ``ListSessions`` and ``StreamEvents`` also
  allow holders of the session's tag (read-only viewers). Everything else is
  ``PERMISSION_DENIED``; a session without owner is for admins only.
* Streams of viewers are *watchers*: they neither keep a session's lease alive nor
  count as attached for detach-grace.
* Revoking an API key ends its live streams with ``UNAUTHENTICATED`` within about
  ``plugins.acl.revocation_check_interval_seconds``.
* With ``plugins.acl.ldap.enabled``, people log in with their directory account
  (``Login`` RPC, ``sessiongate login``) and get a short-lived Ed25519-signed JWT,
  accepted as ``authorization: Bearer <token>``; directory groups grant the admin
  scope (``admin_groups``) and tags (``group_tags``).

Module layout: :mod:`.rules` (settings), :mod:`.policy` (the decision, pure),
:mod:`.tokens` (JWTs), :mod:`.directory` (ldap3), :mod:`.runtime` (the per-gateway
hooks, login service and revocation watcher). See docs/plugins/acl.md.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from sessiongate.core import hookimpl
from sessiongate.core.errors import Unauthenticated

from .policy import decide, keeps_alive
from .rules import SECRET_KEYS, rules
from .runtime import RUNTIME_NAME, AclRuntime
from .tokens import TokenSigner, is_ours

if TYPE_CHECKING:
    from sessiongate.core.auth import Identity
    from sessiongate.core.gateway import Gateway
    from sessiongate.core.session import Session
    from sessiongate.core.settings import Setting, Settings

__all__ = ["AclRuntime", "TokenSigner", "decide", "keeps_alive", "runtime_of"]

log = logging.getLogger("sessiongate.plugins.acl")


def runtime_of(gateway: Gateway) -> AclRuntime | None:
    """The acl runtime serving ``gateway`` (None before startup or with acl off)."""
    plugin = gateway.pm.get_plugin(RUNTIME_NAME)
    return plugin if isinstance(plugin, AclRuntime) else None


@hookimpl
def sg_add_validators(settings: Settings) -> Sequence[Setting]:
    return rules(settings)


@hookimpl
def sg_secret_settings() -> Sequence[str]:
    return list(SECRET_KEYS)


@hookimpl
async def sg_startup(gateway: Gateway) -> None:
    runtime = runtime_of(gateway)
    if runtime is None:
        runtime = AclRuntime(gateway)
        await runtime.start()
        try:
            gateway.pm.register(runtime, name=RUNTIME_NAME)
        except BaseException:
            await runtime.stop()
            raise
    else:  # started again after a stop: same gateway, same runtime
        await runtime.start()


@hookimpl
async def sg_shutdown(gateway: Gateway) -> None:
    # The runtime stays registered: calls still draining keep being decided by it.
    runtime = runtime_of(gateway)
    if runtime is not None:
        await runtime.stop()


@hookimpl
def sg_stream_keeps_alive(session: Session, identity: Identity) -> bool:
    """Owner's and admins' streams keep the session alive; viewers only watch."""
    return keeps_alive(identity, session)


# -- fail-closed fallbacks -------------------------------------------------------------------
# The runtime registered at startup answers first. These answer only if it is missing -
# its startup failed (logged by the plugin host) - and then nothing is allowed.


@hookimpl(trylast=True)
def sg_authorize(identity: Identity, action: str, session: Session | None) -> bool:
    log.error("acl: not started (see the startup error above): %s refused", action)
    return False


@hookimpl(trylast=True)
def sg_authenticate(credential: str) -> Identity | None:
    if is_ours(credential):
        raise Unauthenticated("sign-in tokens are not accepted: the acl plugin did not start")
    return None
