"""cluster: gateways share their session directory, API keys and sign-in tokens over Redis.

Off by default (``plugins.cluster.enabled``). With it on, every node publishes a full
snapshot of each of its sessions at every change (``XADD <stream> MAXLEN ~``, the
latest also in an expiring hash) and reads every node's through its own consumer
group into a local directory, strictly (a malformed entry is dropped, counted, and the
session it names leaves the directory: fail closed). Then:

* a call that names a session another node holds is refused ``FAILED_PRECONDITION``
  with trailing metadata ``sessiongate-node: <its advertise address>``
  (``sg_locate_session``); the Python client and the CLI follow it once;
* ``ListSessions`` lists every node's sessions the caller may see, with their node
  (``sg_list_remote_sessions``);
* API keys (digest, scopes, tags, revocation; never a secret) are replicated: a key
  created on any node works on every node, a revocation anywhere is applied
  everywhere within a second and ends the key's live streams; each node keeps its
  SQLite copy and serves on while Redis is away (``/readyz`` then says degraded);
* sign-in credentials (acl's LDAP tokens: id, person, groups, grants, times,
  revocation; never the token) are replicated the same way, through core's
  credential hooks: with one signing key shared by every node
  (``plugins.acl.token_key_file``) a token works on every node, and its revocation
  anywhere ends its streams everywhere within a second;
* with the activity plugin on, its events are also written to ``<stream>:activity``.

Module layout: :mod:`.rules` (settings), :mod:`.records` (the entries and their strict
reading), :mod:`.directory` (the session directory), :mod:`.runtime` (one gateway's
Redis client and tasks). See docs/plugins/cluster.md.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from sessiongate.core import hookimpl

from .rules import SECRET_KEYS, rules
from .runtime import METRICS, RUNTIME, ClusterRuntime

if TYPE_CHECKING:
    from sessiongate.core import (
        CredentialRecord,
        GatewayAPI,
        Identity,
        Metric,
        RemoteSession,
        Session,
        Setting,
        Settings,
    )

__all__ = ["ClusterRuntime", "runtime_of"]

#: the states a session is published in as they happen (ends come from sg_session_closed:
#: a session released at shutdown for reattach is not ended for the cluster)
PUBLISHED_STATES = frozenset({"READY", "DETACHED"})


def runtime_of(gateway: GatewayAPI) -> ClusterRuntime | None:
    """The cluster runtime of ``gateway`` (None before startup)."""
    return gateway.stash.get(RUNTIME)


@hookimpl
def sg_add_validators(settings: Settings) -> Sequence[Setting]:
    return rules(settings)


@hookimpl
def sg_secret_settings() -> Sequence[str]:
    return list(SECRET_KEYS)


@hookimpl
def sg_metrics() -> Sequence[Metric]:
    return list(METRICS)


@hookimpl(trylast=True)
def sg_startup(gateway: GatewayAPI) -> None:
    """Last: the sessions other plugins adopt at startup (reattach) are live by then, so
    the first resync publishes them and ends the ones this node lost."""
    runtime = ClusterRuntime(gateway)
    gateway.stash[RUNTIME] = runtime
    runtime.start()


@hookimpl
async def sg_shutdown(gateway: GatewayAPI) -> None:
    runtime = gateway.stash.pop(RUNTIME, None)
    if runtime is not None:
        await runtime.stop()


# -- this node's sessions and keys, published ----------------------------------------------


@hookimpl
def sg_session_state_changed(gateway: GatewayAPI, session: Session, old: str, new: str,
                             reason: str) -> None:
    runtime = runtime_of(gateway)
    if runtime is not None and new in PUBLISHED_STATES:
        runtime.publish_session(session)


@hookimpl
def sg_session_adopted(gateway: GatewayAPI, session: Session) -> None:
    runtime = runtime_of(gateway)
    if runtime is not None:
        runtime.publish_session(session)


@hookimpl
def sg_session_closed(gateway: GatewayAPI, session: Session, reason: str) -> None:
    runtime = runtime_of(gateway)
    if runtime is not None:
        runtime.publish_session(session)


@hookimpl
async def sg_key_created(gateway: GatewayAPI, key_id: str) -> None:
    runtime = runtime_of(gateway)
    if runtime is not None:
        await runtime.key_changed(key_id)


@hookimpl
async def sg_key_revoked(gateway: GatewayAPI, key_id: str) -> None:
    runtime = runtime_of(gateway)
    if runtime is not None:
        await runtime.key_changed(key_id)


@hookimpl
def sg_credential_changed(gateway: GatewayAPI, record: CredentialRecord) -> None:
    runtime = runtime_of(gateway)
    if runtime is not None:
        runtime.credential_changed(record)


@hookimpl
def sg_activity(gateway: GatewayAPI, event: Mapping[str, Any]) -> None:
    runtime = runtime_of(gateway)
    if runtime is not None:
        runtime.queue_activity(event)


# -- other nodes' sessions, from the directory ---------------------------------------------


@hookimpl
def sg_locate_session(gateway: GatewayAPI, session_id: str) -> str | None:
    runtime = runtime_of(gateway)
    return runtime.locate(session_id) if runtime is not None else None


@hookimpl
def sg_list_remote_sessions(gateway: GatewayAPI, identity: Identity) -> Sequence[RemoteSession]:
    runtime = runtime_of(gateway)
    return runtime.remote_sessions() if runtime is not None else []
