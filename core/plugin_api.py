"""The gateway as a plugin sees it: :class:`GatewayAPI`, the ``gateway`` argument of hooks.

Modelled on the objects pytest (``config``) and datasette (``datasette``) hand their
plugins: documented, stable methods, and nothing else. A plugin keeps its own
gateway-wide state in :attr:`GatewayAPI.stash` and per-session state in
``session.stash`` (typed keys, :mod:`sessiongate.core.stash`); core reads neither.
"""

from __future__ import annotations

import dataclasses
import logging
import pathlib
from collections.abc import Callable, Coroutine, Mapping
from typing import TYPE_CHECKING, Any

import psutil

from sessiongate.core import logfields
from sessiongate.core.stash import Stash

if TYPE_CHECKING:
    import asyncio

    from sessiongate.core.config.settings import Settings
    from sessiongate.core.gateway import Gateway
    from sessiongate.core.identity import Identity, KeyRecord, LoginGrant
    from sessiongate.core.metrics import Metrics
    from sessiongate.core.sessions.manager import AdoptionRecord
    from sessiongate.core.sessions.session import EndedSession, Session
    from sessiongate.core.streaming.events import Subscription
    from sessiongate.v1 import worker_pb2

__all__ = ["CredentialRecord", "GatewayAPI", "InternalConsumer"]

log = logging.getLogger("sessiongate.gateway")

#: an internal subscriber: ``await consumer(session, subscription)`` reads the events
InternalConsumer = Callable[["Session", "Subscription"], Coroutine[Any, Any, None]]


@dataclasses.dataclass(frozen=True)
class CredentialRecord:
    """A sign-in credential (an acl login token, ...) as another gateway node needs it to
    accept or refuse it: never the credential itself, nor anything it can be rebuilt from.

    The plugin that issues credentials of ``kind`` announces each change
    (``sg_credential_changed``); a replicating plugin (cluster) carries records to the
    other nodes, which apply them (``GatewayAPI.apply_credential_record``). Versions of
    one credential are ordered by ``updated_at``: the newest wins and an older one never
    rolls it back. A revocation is sticky: once ``revoked_at`` is set, no record makes
    the credential live again. Times are Unix seconds, in whole milliseconds.
    """

    #: names the credential (a token's ``jti``; not a secret)
    credential_id: str
    #: what kind of credential, as the issuing plugin names it (``"token"``: acl)
    kind: str
    #: the identity's ``key_id`` (``ldap:alice``): what sessions record as their owner
    subject: str
    #: for people (the username)
    name: str
    #: what it grants, as the node that last changed it computed it
    admin: bool
    tags: tuple[str, ...]
    #: the directory groups (DNs) the grants are computed from, for kinds that have them
    groups: tuple[str, ...]
    issued_at: float
    expires_at: float
    revoked_at: float | None
    updated_at: float

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None


class GatewayAPI:
    """One running gateway, for its plugins. Valid from ``sg_startup`` to ``sg_shutdown``
    (the settings and paths from creation on)."""

    def __init__(self, gateway: Gateway) -> None:
        self._gateway = gateway
        #: the plugins' gateway-wide state, under their own :class:`StashKey`\\ s
        self.stash = Stash()

    # -- what it is --------------------------------------------------------------------

    @property
    def settings(self) -> Settings:
        """The validated settings (read-only by convention)."""
        return self._gateway.settings

    @property
    def state_dir(self) -> pathlib.Path:
        """The gateway's private folder (0700, locked by this gateway)."""
        return self._gateway.state_dir

    @property
    def instance_id(self) -> str:
        """Random per gateway process; core's worker socket names start with it."""
        return self._gateway.instance_id

    @property
    def metrics(self) -> Metrics:
        """The gateway's metrics: ``gateway.metrics.inc(name, **labels)`` (``set`` a
        gauge, ``observe`` a histogram, ``get`` a value back) for the metrics the plugin
        declared with ``sg_metrics`` (exported on ``/metrics``, docs/metrics.md)."""
        return self._gateway.metrics

    # -- sessions ----------------------------------------------------------------------

    def session(self, session_id: str) -> Session | None:
        """The live session with this id, or None (ended or unknown)."""
        return self._gateway.sessions.live.get(session_id)

    def sessions(self) -> list[Session]:
        """Every live session (a copy: safe to iterate across awaits)."""
        return list(self._gateway.sessions.live.values())

    async def close_session(self, session: Session, reason: str) -> None:
        """Close ``session`` (idempotent): its streams end OK after their backlog, its
        worker stops; returns when it has ended. ``reason`` is for people."""
        await self._gateway.sessions.close(session, reason)

    def attach_internal(self, session: Session, consumer: InternalConsumer,
                        name: str | None = None, *, skip: bool = False) -> Subscription | None:
        """Feed ``consumer`` the session's events through an internal subscription (it
        never counts toward caps, leases or attachment, and never paces the worker), run
        as a task the session owns. None if the session cannot take subscribers (it is
        ending). More than ``events.queue_capacity`` events behind, it is disconnected
        (``next`` raises ``ResourceExhausted``); with ``skip``, it skips ahead instead and
        reads a ``SLOW_SUBSCRIBER`` gap naming what it missed (a mirror that must live
        as long as its session)."""
        return self._gateway.sessions.attach_internal(session, consumer, name, skip=skip)

    def distributor_options(self, session: Session, **extra: Any) -> dict[str, Any]:
        """The keyword arguments a :class:`~sessiongate.core.streaming.events.Distributor`
        of ``session`` needs (for ``sg_make_distributor``), with ``extra`` added."""
        return self._gateway.sessions.distributor_options(session, **extra)

    # -- identity ----------------------------------------------------------------------

    async def key_is_active(self, key_id: str) -> bool:
        """Is this API key known and not revoked (read from the shared key store)?"""
        return await self._gateway.keys.is_active(key_id)

    async def authenticate(self, metadata: Any) -> Identity:
        """Who makes a call, from its metadata (``context.invocation_metadata()``): the
        bearer credential, as core's own handlers take it (a plugin's token at
        ``sg_authenticate``, else an API key). For a plugin's own gRPC services
        (``sg_grpc_services``); the caller checks the scopes it needs.

        :raises Unauthenticated: no credential, or one that is unknown or revoked.
        """
        return await self._gateway.authenticate(metadata)

    # -- calls -------------------------------------------------------------------------

    def call_ids(self) -> Mapping[str, str]:
        """The ids core's gRPC handler bound to the call running in this task once it had
        authenticated the caller and checked the request (``key_id``, ``session_id``,
        ``subscriber_id``: those known; empty outside a call). For an interceptor
        (:func:`~sessiongate.core.hookspecs.sg_grpc_interceptors`), read after the
        handler it wraps has returned: the handler runs in the interceptor's task."""
        return logfields.current()

    async def publish_activity(self, event: Mapping[str, Any]) -> None:
        """Hand one session-activity event to every ``sg_activity`` implementation (other
        plugins' sinks), awaited in order; one that raises is logged and skipped. Called
        by the activity plugin's publishing task, which bounds how long it waits."""
        await self._gateway.hooks.notify("sg_activity", event=event)

    async def report_webhook_failure(self, delivery: Mapping[str, Any]) -> None:
        """Hand a webhook delivery that failed for good to every ``sg_webhook_failed``
        implementation, awaited in order; one that raises is logged and skipped. Called
        by the webhooks plugin."""
        await self._gateway.hooks.notify("sg_webhook_failed", delivery=delivery)

    # -- tasks -------------------------------------------------------------------------

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """Run ``coro`` as a task the gateway owns: cancelled and awaited at shutdown,
        after every session has ended and before ``sg_shutdown``."""
        return self._gateway.tasks.spawn(coro, name)

    # -- workers that outlive their gateway -----------------------------------------------

    def adoption_record(self, session: Session) -> AdoptionRecord | None:
        """What a later gateway needs to adopt this session's worker (None if it has no
        running worker). Valid for a released session too (its worker runs on)."""
        from sessiongate.core.sessions.manager import AdoptionRecord

        worker = session.worker
        if worker is None or worker.pid is None:
            return None
        if not (worker.alive or (session.released and worker.returncode is None)):
            return None
        try:
            create_time = psutil.Process(worker.pid).create_time()
        except psutil.Error:
            return None  # already gone: the session is faulting
        return AdoptionRecord(
            session_id=session.session_id, owner_key_id=session.owner_key_id,
            client_name=session.client_name, backend=session.backend, tag=session.tag,
            lease_seconds=session.lease_seconds, pid=worker.pid, create_time=create_time,
            socket_path=worker.socket_path, nonce_digest=worker.nonce_digest)

    async def adopt_session(
            self, record: AdoptionRecord, *, window: float,
            on_frame: Callable[[Session, worker_pb2.WorkerFrame], None]) -> Session | None:
        """Adopt the running worker ``record`` describes (see
        :meth:`~sessiongate.core.sessions.manager.SessionManager.adopt`): the session is
        READY again, or None (the worker was not ours, or did not phone home in
        ``window`` seconds, and is stopped). ``on_frame`` gets its adopt and history
        frames. ``sg_session_adopted`` fires on success."""
        return await self._gateway.sessions.adopt(record, window=window, on_frame=on_frame)

    # -- cluster: several gateways as one (mechanisms for the cluster plugin) -------------

    @property
    def node_address(self) -> str:
        """This gateway's gRPC address as other nodes' clients dial it ("" when it is not
        part of a cluster); ``ListSessions`` shows it as the ``node`` of local sessions."""
        return self._gateway.node_address

    @node_address.setter
    def node_address(self, address: str) -> None:
        self._gateway.node_address = address

    def set_degraded(self, component: str, reason: str | None) -> None:
        """Say that ``component`` (a plugin's name) works in a degraded way (``reason``:
        one line for people, never a secret), or no longer (``None``). While any
        component is degraded, ``/readyz`` answers 503 naming each; calls are still
        served."""
        if reason is None:
            self._gateway.degraded.pop(component, None)
        else:
            self._gateway.degraded[component] = reason

    async def key_records(self, key_id: str | None = None) -> list[KeyRecord]:
        """Every API key of the key store (or the one named) as a
        :class:`~sessiongate.core.identity.KeyRecord`: id, name, the secret's digest
        (never the secret), scopes, tags, times. For replicating keys to other nodes."""
        return await self._gateway.keys.records(key_id)

    async def apply_key_record(self, record: KeyRecord) -> str:
        """Bring a key another node holds into the local key store (kept on disk: it
        verifies while the other node or the network is away). A new key is added, a
        revocation applied; a revoked key stays revoked. The key is accepted, or refused,
        from the moment this returns. ``sg_key_created`` / ``sg_key_revoked`` then fire
        here as for a local change.

        :returns: ``added``, ``revoked``, ``unchanged`` or ``conflict`` (a local key of the
            same id with another digest: left alone).
        """
        return await self._gateway.keys.apply(record)

    def end_streams_of_key(self, key_id: str, message: str) -> int:
        """End every live client stream authenticated by API key ``key_id`` with
        ``UNAUTHENTICATED`` (``message``: for people); returns how many. For applying a
        revocation that arrived from elsewhere at once (the acl plugin's own watcher ends
        them too, at its interval)."""
        from sessiongate.core.errors import Unauthenticated

        ended = 0
        for session in list(self._gateway.sessions.live.values()):
            for sub in session.subscriptions():
                identity = sub.identity
                if (not sub.external or sub.ended or identity is None
                        or identity.kind != "api_key" or identity.key_id != key_id):
                    continue
                if sub.end(Unauthenticated(message), reason="key revoked"):
                    ended += 1
                session.unsubscribe(sub, "key revoked")
        return ended

    async def announce_credential(self, record: CredentialRecord) -> None:
        """Tell every ``sg_credential_changed`` implementation that a sign-in credential
        was issued, changed or revoked here (awaited in order; one that raises is logged
        and skipped). Called by the plugin that issues credentials, once the change is
        stored."""
        await self._gateway.hooks.notify("sg_credential_changed", record=record)

    async def credential_records(self) -> list[CredentialRecord]:
        """Every sign-in credential this node holds and that has not expired, revoked ones
        included (``sg_credential_records``): for a full sync with other nodes."""
        found = await self._gateway.hooks.gather("sg_credential_records")
        return [record for records in found for record in records]

    async def apply_credential_record(self, record: CredentialRecord) -> str | None:
        """Bring a sign-in credential another node holds into this node
        (``sg_apply_credential_record``): the plugin of its ``kind`` merges it into its
        own store; from the moment this returns the credential is accepted or refused
        accordingly, and its live streams that are no longer allowed have ended.

        :returns: ``added``, ``updated``, ``revoked``, ``unchanged`` or ``conflict``;
            None when no plugin here issues credentials of that kind.
        """
        return await self._gateway.hooks.decide("sg_apply_credential_record", record=record)

    # -- sign-in for web front ends (mechanisms the dashboard plugin uses) ----------------

    async def login(self, username: str, password: str, peer: str) -> LoginGrant | None:
        """Check a person's username and password as the ``Login`` RPC does
        (``sg_login``): a grant, or None when no plugin offers logins.

        :param peer: the client's address in gRPC's form (``ipv4:192.0.2.7:5312``,
            ``ipv6:[2001:db8::1]:5312``), for the per-client limits.
        :raises Unauthenticated: wrong username or password.
        :raises ResourceExhausted: too many failures (``retry_after`` set) or logins.
        :raises Unavailable: the directory cannot answer now.
        """
        return await self._gateway.hooks.decide("sg_login", username=username,
                                                password=password, peer=peer)

    async def authenticate_credential(self, credential: str) -> Identity:
        """Who holds ``credential`` (a sign-in token or an API key), checked as a call's
        bearer credential is (``sg_authenticate``, else the key store).

        :raises Unauthenticated: unknown, revoked, expired or malformed.
        """
        return await self._gateway.authenticate([("authorization", f"Bearer {credential}")])

    async def revoke_credential(self, credential: str) -> bool:
        """Revoke a sign-in credential at once (``sg_revoke_credential``): True if a plugin
        revoked it; False if none could (an API key: revoke those with ``sessiongate keys
        revoke``)."""
        return bool(await self._gateway.hooks.decide("sg_revoke_credential",
                                                     credential=credential))

    async def is_allowed(self, identity: Identity, action: str,
                         session: Session | EndedSession | None) -> bool:
        """May ``identity`` do ``action`` on ``session``, as the gRPC API decides it
        (``sg_authorize``; counted in ``authz_decisions``)? A plugin that fails to
        decide refuses (fail closed). Ask for ``list`` when filtering what to show (a
        refusal is not a denial then), for the action itself before doing it."""
        from sessiongate.core.errors import GatewayError

        try:
            await self._gateway.authorize(identity, action, session)
        except GatewayError:
            return False
        return True
