"""Hook specifications: every point where a plugin extends sessiongate.

Plugins implement these with ``from sessiongate.core import hookimpl`` and register
through the entry-point group ``sessiongate.plugins``.

How sessiongate calls hooks (see :mod:`sessiongate.core.pluginhost.host`):

* Implementations are called one at a time, last registered first (pluggy's order;
  ``tryfirst``/``trylast`` work as usual). Hook wrappers are not supported.
* **Observer** hooks: every implementation is called; an implementation may be a
  coroutine function (it is awaited). One that raises is logged with its plugin's
  name and the session concerned, and ignored.
* **Veto** hooks: an implementation refuses by raising
  :class:`sessiongate.core.errors.GatewayError` (its status code reaches the client).
  Any other exception also refuses (fail closed), logged, with ``INTERNAL``.
* **Decision** hooks (``firstresult``): the first non-``None`` result wins; an
  implementation may return an awaitable (a coroutine function's result), which is
  awaited first (datasette's ``await_me_maybe``). An exception is logged and refuses
  the request (fail closed).

Every hook that runs while the gateway runs takes ``gateway``, a
:class:`sessiongate.core.plugin_api.GatewayAPI`: look sessions up, close them, attach
internal subscribers, read settings, count metrics, spawn owned tasks, and keep the
plugin's own state in ``gateway.stash`` (per session: ``session.stash``). Like any
hook argument it may be left out of an implementation's signature.

Hooks are called through pluggy, so ``SESSIONGATE_TRACE_HOOKS=1`` traces every call.

Sections: boot, sessions, identity, events, workers, calls, webhooks, cluster,
sign-in and alarms.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from sessiongate.core import hookspec

if TYPE_CHECKING:
    import aiohttp.web
    import grpc

    from sessiongate.core.config.settings import Setting, Settings
    from sessiongate.core.identity import Identity, LoginGrant
    from sessiongate.core.metrics import Metric
    from sessiongate.core.plugin_api import CredentialRecord, GatewayAPI
    from sessiongate.core.plugin_cli import PluginCommand
    from sessiongate.core.sessions.manager import AdoptionRecord
    from sessiongate.core.sessions.session import Session
    from sessiongate.core.streaming.events import Distributor, Subscription

__all__ = [
    "sg_activity",
    "sg_add_validators",
    "sg_apply_credential_record",
    "sg_authenticate",
    "sg_authorize",
    "sg_cli_commands",
    "sg_credential_changed",
    "sg_credential_records",
    "sg_grpc_interceptors",
    "sg_grpc_services",
    "sg_http_routes",
    "sg_internal_subscribers",
    "sg_key_created",
    "sg_key_revoked",
    "sg_list_remote_sessions",
    "sg_locate_session",
    "sg_login",
    "sg_make_distributor",
    "sg_metrics",
    "sg_replay_supported",
    "sg_revoke_credential",
    "sg_secret_settings",
    "sg_session_adopted",
    "sg_session_adoption_failed",
    "sg_session_closed",
    "sg_session_open",
    "sg_session_opened",
    "sg_session_released",
    "sg_session_state_changed",
    "sg_shutdown",
    "sg_startup",
    "sg_stream_keeps_alive",
    "sg_subscriber_attach",
    "sg_subscriber_attached",
    "sg_subscriber_detached",
    "sg_webhook_failed",
    "sg_worker_backends",
    "sg_worker_endpoint",
    "sg_worker_exited",
    "sg_worker_launch",
    "sg_worker_options",
    "sg_worker_release",
]

# -------------------------------------------------------------------------------------
# Boot
# -------------------------------------------------------------------------------------


@hookspec
def sg_add_validators(settings: Settings) -> Sequence[Setting]:
    """Contribute the rules of a plugin's own settings.

    Called once at boot, after the core rules and the plugin switches passed, before
    anything starts. Each plugin validates only its own namespace
    (``plugins.<name>.*``); every failure of every plugin is reported together.

    :param settings: the loaded (phase-1 validated) settings.
    :returns: a list of :class:`sessiongate.core.config.settings.Setting`.

    Kind: observer, sync.
    """


@hookspec
def sg_secret_settings() -> Sequence[str]:
    """Name setting keys whose values are secrets (redacted by ``check-config``).

    :returns: dotted keys, e.g. ``["plugins.acl.ldap.bind_password"]``.

    Kind: observer, sync.
    """


@hookspec
def sg_cli_commands() -> Sequence[PluginCommand]:
    """Add subcommands to the ``sessiongate`` command line.

    Called when the command line is built, for every installed plugin (switched on or
    not: the settings are not read yet). Core adds ``--config`` to each command; when it
    runs, core loads and validates the settings, refuses (exit 2) if the plugin that
    added the command is switched off, then calls ``run``. A ``GatewayError`` raised by
    ``run`` is printed as one line (exit 1; 2 for ``INVALID_ARGUMENT``).

    :returns: :class:`~sessiongate.core.plugin_cli.PluginCommand` objects; a name core
        or another plugin already uses is refused with a warning.

    Kind: observer, sync.
    """


@hookspec
def sg_worker_backends() -> Mapping[str, str]:
    """Register worker backends by name.

    :returns: ``{name: "module:Class"}``; the class subclasses
        :class:`sessiongate.core.sdk.worker.Backend` and is imported inside the worker
        process only. Later registrations of the same name win.

    Kind: observer, sync.
    """


@hookspec
def sg_metrics() -> Sequence[Metric]:
    """Declare the plugin's own metrics, which it then counts through ``gateway.metrics``
    (``inc``, ``set``, ``observe``).

    Called once, when the gateway is created, for every plugin switched on. Build each
    with ``counter``, ``gauge`` or ``histogram`` from :mod:`sessiongate.core`. Names
    start with the plugin's name and ``_`` (``fanout_subscribers_replaced``) and are
    exported with the ``sessiongate_`` prefix (a counter's with ``_total`` added).
    Give each label its allowed values where they are few
    (``{"outcome": ("ok", "refused")}``), else ``None`` and say in the help what
    bounds it: never an id (a session, key or subscriber). Counting a metric that was
    not declared, or with a label or value it did not declare, counts nothing and is a
    ``MetricWarning`` (an error in the test suite). A declaration with a problem (a bad
    name, a name declared already) is logged as an error and left out.
    ``docs/metrics.md`` is generated from core's declarations and the built-in
    plugins'.

    :returns: :class:`~sessiongate.core.metrics.Metric` objects.

    Kind: observer, sync.
    """


@hookspec
def sg_startup(gateway: GatewayAPI) -> None:
    """The gateway is starting: storage is open, no client call is accepted yet.

    Plugins create their background tasks here (and own them until
    :func:`sg_shutdown`). Adoption of surviving workers happens here.

    :param gateway: the :class:`~sessiongate.core.plugin_api.GatewayAPI` of the gateway.

    Kind: observer, may be async; awaited in order.
    """


@hookspec
def sg_shutdown(gateway: GatewayAPI) -> None:
    """The gateway is stopping: no new calls are accepted, every session has ended
    (closed, or its worker released for adoption) and the tasks spawned with
    ``gateway.spawn`` have been cancelled and awaited.

    Plugins cancel and await any other task they own and close what they opened.
    Also called when the gateway fails to start after :func:`sg_startup` ran (then
    without sessions to end), so what a plugin opened there is closed either way.

    Kind: observer, may be async.
    """


# -------------------------------------------------------------------------------------
# Sessions
# -------------------------------------------------------------------------------------


@hookspec
def sg_session_open(gateway: GatewayAPI, session: Session, identity: Identity) -> None:
    """A client asks for a new session; it is not registered and its worker not connected.

    (The worker process may already run as a spare; a refused session's id is never
    reused.) Veto by raising a :class:`~sessiongate.core.errors.GatewayError` (e.g.
    ``InvalidArgument`` for a bad tag, ``PermissionDenied``). The session's fields
    (``tag``, ``client_name``, ``backend``, ``owner_key_id``) are set.

    Kind: veto, may be async.

    No shipped implementation: the built-in plugins decide who may open at
    :func:`sg_authorize`; ``examples/audit-plugin`` implements this veto.
    """


@hookspec
def sg_session_opened(gateway: GatewayAPI, session: Session) -> None:
    """The session's worker is Ready and the session is READY.

    Kind: observer, may be async.
    """


@hookspec
def sg_session_state_changed(gateway: GatewayAPI, session: Session, old: str, new: str,
                             reason: str) -> None:
    """The session moved from state ``old`` to ``new`` (names as in the proto).

    Called synchronously inside the state change: keep it quick and non-blocking.

    Kind: observer, sync.

    No shipped implementation: an observation point for deployment-specific
    plugins (audit trails, notifications); the hook contract test exercises it.
    """


@hookspec
def sg_session_closed(gateway: GatewayAPI, session: Session, reason: str) -> None:
    """The session reached CLOSED or FAULTED; its worker is gone or going.

    :param reason: words for people (``"closed by client"``, ``"lease expired"`` …).

    Kind: observer, may be async.
    """


@hookspec
def sg_session_released(gateway: GatewayAPI, session: Session) -> None:
    """At shutdown, the session's worker was left running for a later gateway to adopt
    (some plugin answered ``True`` to :func:`sg_worker_release`). The session has ended
    *in this gateway* (its state here is CLOSED, reason the shutdown) but not for its
    client: its worker runs on, and :func:`sg_session_closed` does not fire.
    ``gateway.adoption_record(session)`` still describes the worker.

    Kind: observer, may be async.

    No shipped implementation: reattach keeps the session's manifest entry by doing
    nothing here; ``examples/audit-plugin`` writes a ``released`` line.
    """


@hookspec
def sg_session_adopted(gateway: GatewayAPI, session: Session) -> None:
    """A session an earlier gateway released is READY again here: its worker phoned
    home and was adopted (``GatewayAPI.adopt_session``). Fires instead of
    :func:`sg_session_opened`, which fired once, in the gateway that opened it.

    Kind: observer, may be async.
    """


# -------------------------------------------------------------------------------------
# Identity and authorisation
# -------------------------------------------------------------------------------------


@hookspec(firstresult=True)
def sg_authenticate(gateway: GatewayAPI, credential: str) -> Identity | None:
    """Turn a bearer credential that is not a sessiongate API key into an identity.

    Stops at first non-None result. ``None`` means "not mine"; core then looks the
    credential up as an API key. Raise ``Unauthenticated`` for a credential that is
    yours but invalid (expired, tampered).

    :param credential: the text after ``Bearer`` in the ``authorization`` metadata.
        Never log it.

    Kind: decision, may be async.
    """


@hookspec(firstresult=True)
def sg_authorize(gateway: GatewayAPI, identity: Identity, action: str,
                 session: Session | None) -> bool | None:
    """May ``identity`` do ``action`` on ``session``?

    Stops at first non-None result. ``True`` allows, ``False`` refuses with
    ``PERMISSION_DENIED``; ``None`` abstains, and when every plugin abstains any
    authenticated identity is allowed (core has no policy).

    :param action: one of ``open``, ``get``, ``list``, ``invoke``, ``close``,
        ``stream``, ``resume``.
    :param session: the session concerned (``None`` for ``open``). For ``list`` it may
        be a :class:`~sessiongate.core.sessions.remote.RemoteSession`, a session another
        gateway node holds (:func:`sg_list_remote_sessions`): it has ``session_id``,
        ``owner_key_id``, ``tag``, ``state`` and ``node``, no worker or subscribers.

    Kind: decision, may be async.
    """


@hookspec(firstresult=True)
def sg_login(gateway: GatewayAPI, username: str, password: str,
             peer: str) -> LoginGrant | None:
    """Serve the ``Login`` RPC: check a person's username and password.

    Stops at first non-None result. Return a :class:`~sessiongate.core.identity.LoginGrant`
    (a token the same plugin accepts at :func:`sg_authenticate`); raise
    ``Unauthenticated`` for a wrong username or password, ``Unavailable`` or
    ``ResourceExhausted`` when it cannot answer now (give ``retry_after=`` seconds: the
    client gets it as trailing metadata ``retry-after``). With no implementation
    answering, ``Login`` is ``UNIMPLEMENTED``. Never log ``password``.

    :param peer: the caller's address as gRPC names it (``ipv4:127.0.0.1:5312``), for
        per-client limits.

    Kind: decision, may be async.
    """


@hookspec
def sg_key_revoked(gateway: GatewayAPI, key_id: str) -> None:
    """An API key was revoked while the gateway ran (``sessiongate keys revoke``, in any
    process sharing ``state_dir``).

    Core looks for newly revoked keys about once a second
    (:mod:`sessiongate.core.revocations`: a cheap check of the key store, a query only
    when it changed) and calls this once per key, from that watcher's task. Keys revoked
    before the gateway started are not announced. The key's own calls are refused from
    the moment it is revoked, whatever this hook does.

    :param key_id: the revoked key's public id (never its secret).

    Kind: observer, may be async; awaited in order.
    """


@hookspec
def sg_key_created(gateway: GatewayAPI, key_id: str) -> None:
    """An API key was added to the key store while the gateway ran (``sessiongate keys
    create`` in any process sharing ``state_dir``, or a key another gateway holds,
    brought in with ``GatewayAPI.apply_key_record``).

    Seen by the same watcher as :func:`sg_key_revoked`, from its task, once per key;
    keys that existed when the gateway started are not announced (read them with
    ``GatewayAPI.key_records``). A key created and revoked between two looks is
    announced here first, then to :func:`sg_key_revoked`.

    :param key_id: the key's public id (never its secret).

    Kind: observer, may be async; awaited in order.
    """


# -------------------------------------------------------------------------------------
# Events
# -------------------------------------------------------------------------------------


@hookspec(firstresult=True)
def sg_make_distributor(gateway: GatewayAPI, session: Session,
                        settings: Settings) -> Distributor | None:
    """Create the per-session distributor that delivers events to subscribers.

    Stops at first non-None result. Core's own implementation (``trylast``) returns
    the single-subscriber distributor; a plugin may return one of its own, built with
    ``gateway.distributor_options(session)``. Called once per session, before its
    worker connects, so no event is lost.

    Kind: decision, may be async.
    """


@hookspec(firstresult=True)
def sg_replay_supported(gateway: GatewayAPI, session: Session) -> bool | None:
    """May a stream of this session resume with ``after_sequence``?

    Stops at first non-None result. With no implementation answering ``True``,
    ``after_sequence`` gets ``FAILED_PRECONDITION``.

    Kind: decision, may be async.
    """


@hookspec(firstresult=True)
def sg_stream_keeps_alive(gateway: GatewayAPI, session: Session,
                          identity: Identity) -> bool | None:
    """Does a stream of ``identity`` keep ``session`` alive?

    Stops at first non-None result. ``True``/``None``: the stream keeps the lease from
    expiring and counts as attached for detach-grace; ``False``: it is a watcher
    (e.g. a read-only tag viewer under the acl plugin).

    Kind: decision, may be async.
    """


@hookspec
def sg_subscriber_attach(gateway: GatewayAPI, session: Session, identity: Identity,
                         request: Any) -> None:
    """A client asks to stream the session's events (the request is the proto message).

    Veto by raising a ``GatewayError``. Runs after the authorisation decision.

    Kind: veto, may be async.

    No shipped implementation: acl decides who may stream at :func:`sg_authorize`
    (``stream``, ``resume``); this veto is for other criteria (quotas, time windows).
    """


@hookspec
def sg_subscriber_attached(gateway: GatewayAPI, session: Session,
                           subscription: Subscription) -> None:
    """A subscription is registered with the session's distributor (a client's stream,
    or an internal subscriber from :func:`sg_internal_subscribers`).

    Kind: observer, sync (must not block).
    """


@hookspec
def sg_subscriber_detached(gateway: GatewayAPI, session: Session, subscription: Subscription,
                           reason: str) -> None:
    """A subscription ended (client gone, overflow, replaced, session ended).

    Kind: observer, sync.
    """


@hookspec
def sg_internal_subscribers(gateway: GatewayAPI, session: Session) -> Sequence[Any]:
    """Gateway-owned subscribers to attach to every session when it becomes Ready.

    :returns: callables ``consumer(session, subscription) -> Awaitable[None]``;
        core runs each as a task owned by the session, fed by an internal
        subscription (it never counts toward caps, leases or attachment).

    Kind: observer, sync.

    No shipped implementation yet: for gateway-side consumers (mirrors,
    recorders); the hook contract test and ``tests/plugins/fanout`` exercise it.
    """


# -------------------------------------------------------------------------------------
# Workers
# -------------------------------------------------------------------------------------


@hookspec
def sg_worker_options(gateway: GatewayAPI, session: Session) -> Mapping[str, Any]:
    """Options for the worker SDK of a worker about to start. Where two implementations
    set the same key, the one called first wins (``tryfirst``, else the last
    registered), as for :func:`sg_worker_backends`.

    The SDK reads ``history`` (events it keeps to hand over at adoption) and
    ``orphan_lifetime`` (seconds it keeps running with its gateway gone; 0: it exits at
    once); it ignores other keys. Called for spare workers too (see
    :func:`sg_worker_launch`).

    Kind: observer, sync.
    """


@hookspec(firstresult=True)
def sg_worker_endpoint(gateway: GatewayAPI, session: Session, runtime_dir: str) -> str | None:
    """Choose the Unix socket path for the session's worker.

    Stops at first non-None result. Core's default (``trylast``) derives it from the
    gateway's instance id and the session id. Also called for spare workers, whose
    session may never be opened.

    Kind: decision, may be async.
    """


@hookspec
def sg_worker_launch(gateway: GatewayAPI, session: Session, argv: list[str],
                     env: dict[str, str]) -> None:
    """The worker process is about to be started; ``argv`` and ``env`` may be changed.

    The worker may be started ahead of its session (a spare, ``workers.spare_workers``):
    then only ``session.session_id``, ``session.backend`` and the gateway are known;
    owner, tag and client name are set when a client opens the session. The worker's
    nonce is not in ``env`` (it comes over the worker's stdin); still, never log
    ``env``: a deployer's variables may hold secrets.

    Kind: observer, sync.

    No shipped implementation: options for the worker SDK go through
    :func:`sg_worker_options`; this is for deployment-specific wrappers (a
    different interpreter, a sandbox launcher, extra environment).
    """


@hookspec(firstresult=True)
def sg_worker_release(gateway: GatewayAPI, session: Session) -> bool | None:
    """The gateway is shutting down: leave this session's worker running?

    Asked only for sessions whose worker is alive. Stops at first non-None result.
    ``True``: the connection is closed without stopping the worker, so a later gateway
    can adopt it (``GatewayAPI.adopt_session``), and :func:`sg_session_released` fires;
    ``None``/``False``: the worker is stopped and :func:`sg_session_closed` fires.

    Kind: decision, may be async.
    """


@hookspec
def sg_worker_exited(gateway: GatewayAPI, session: Session, pid: int,
                     returncode: int | None) -> None:
    """The worker process of an opened or re-adopted session has exited (not called for
    unused spares, nor for a worker whose adoption failed).

    :param returncode: its exit status; ``None`` for a re-adopted worker, which is not
        this gateway's child (its exit is seen, its status cannot be read).

    Kind: observer, may be async.

    No shipped implementation: core reaps and reports workers itself; this is
    for plugins that act on exit statuses; the hook contract test exercises it.
    """


# -------------------------------------------------------------------------------------
# Calls
# -------------------------------------------------------------------------------------


@hookspec
def sg_grpc_interceptors(gateway: GatewayAPI) -> Sequence[grpc.aio.ServerInterceptor]:
    """Add ``grpc.aio.ServerInterceptor`` objects to the gateway's gRPC server.

    Collected once, when the gRPC server is built (before it binds; the gateway may not
    have started yet: an interceptor that needs running state gets it at
    :func:`sg_startup`). Core's own interceptors come first (outermost), then the
    plugins', in hook order (``tryfirst`` runs earlier, so wraps the later ones). An
    interceptor sees every call, health checks and reflection included; it must never
    change a call's outcome unless that is its documented purpose, and must not block.

    :returns: interceptors, in the order they wrap the call (first = outermost).

    Kind: observer, sync.
    """


@hookspec
def sg_grpc_services(gateway: GatewayAPI, server: grpc.aio.Server) -> Sequence[str]:
    """Serve a plugin's own gRPC services on the gateway's server (an admin API).

    Called once, when the gRPC server is built, before it binds (the gateway may not
    have started yet: a handler finds the plugin's running state at call time, in
    ``gateway.stash``, and answers ``UNAVAILABLE`` without it). Register with
    ``server.add_generic_rpc_handlers`` (or the generated ``add_*Servicer_to_server``).
    Handlers authenticate the caller themselves with ``await
    gateway.authenticate(context.invocation_metadata())`` and check its scopes (admin
    calls: ``identity.is_admin``).

    :returns: the full names of the services registered (``sessiongate.v1.Webhooks``):
        server reflection lists them.

    Kind: observer, sync.
    """


@hookspec
def sg_http_routes(gateway: GatewayAPI) -> Sequence[aiohttp.web.AbstractRouteDef]:
    """Serve the plugin's HTTP routes on the gateway's side port (``server.http_address``).

    Called once, when the side port is set up, before it listens (the gateway may not
    have started yet: a handler finds the plugin's running state at request time, in
    ``gateway.stash``, and answers 503 without it). Return aiohttp route definitions
    (``aiohttp.web.get("/status", handler)``, ``web.static(...)``, a
    ``web.RouteTableDef``). They are mounted under ``/plugins/<plugin name>``:
    ``/status`` is served at ``/plugins/<name>/status``. Only a built-in plugin named in
    ``sessiongate.core.http.ROOT_PLUGINS`` (the dashboard) has its routes added as given,
    at ``/``; core's ``/metrics``, ``/healthz`` and ``/readyz`` stay core's.

    Handlers run on the gateway's event loop: they must not block. One that raises
    (anything but an ``aiohttp.web.HTTPException``) answers 500 with a one-line body
    naming the plugin, never a traceback; the error is logged with the plugin's name.
    The side port has no authentication of its own: a handler that serves more than
    public information checks the caller itself.

    :returns: route definitions; routes that cannot be added (a path core serves, an
        object that is not a route definition) are logged with the plugin's name and
        left out, and the gateway starts without them.

    Kind: observer, sync.

    No shipped implementation: core serves ``/metrics``, ``/healthz`` and ``/readyz``
    itself; this is for plugins' pages and APIs (the dashboard's); the hook contract
    test exercises it.
    """


@hookspec
def sg_activity(gateway: GatewayAPI, event: Mapping[str, Any]) -> None:
    """A tracked call ended: one session-activity event for the sinks.

    Called by the activity plugin (through ``GatewayAPI.publish_activity``), one event
    at a time from its single publishing task, never from the call itself: a slow sink
    delays only later events. Every implementation of one event together is bounded by
    ``plugins.activity.sink_timeout_seconds`` (the rest is cancelled, counted and
    logged); a sink that raises is logged each time, so a sink should catch and count
    its own failures. Do blocking I/O in a thread. The activity plugin's own sink (the
    log or a file) is not an implementation: it is written first, directly.

    :param event: read-only; ``id``, ``time`` (RFC 3339, UTC), ``service``
        (``"sessiongate"``), ``action`` (the ``x-session-operation`` label, or the
        full method name), ``status`` (the gRPC code name, ``OK`` on success),
        ``duration_ms``, ``session_id``, ``key_id`` (each ``None`` when the call names
        none), ``peer`` (the client's address) and ``context`` (the caller's
        ``x-session-context``, as given). Never a payload, key or token.

    Kind: observer, may be async.
    """


# -------------------------------------------------------------------------------------
# Webhooks
# -------------------------------------------------------------------------------------


@hookspec
def sg_webhook_failed(gateway: GatewayAPI, delivery: Mapping[str, Any]) -> None:
    """A webhook delivery failed for good: its retry schedule is spent
    (``plugins.webhooks.retry_schedule_seconds``), or its endpoint answered
    ``410 Gone``.

    Called by the webhooks plugin (through ``GatewayAPI.report_webhook_failure``) from its
    delivery task, after the failure is recorded; the delivery can still be sent again
    (``sessiongate webhooks redeliver``).

    :param delivery: read-only; ``delivery_id`` (``dlv_…``), ``event_id`` (``evt_…``),
        ``event_type``, ``endpoint_id``, ``url``, ``attempts``, ``last_status_code``
        (0: no HTTP answer) and ``last_error``. Never a secret or the body.

    Kind: observer, may be async.

    No shipped implementation: for alerting and audit plugins; the webhooks plugin logs
    and counts each failure itself.
    """


# -------------------------------------------------------------------------------------
# Cluster (several gateways sharing sessions and sign-in credentials)
# -------------------------------------------------------------------------------------


@hookspec(firstresult=True)
def sg_locate_session(gateway: GatewayAPI, session_id: str) -> str | None:
    """Which gateway node holds a session this gateway does not know?

    Consulted when a call (``GetSession``, ``Invoke``, ``CloseSession``,
    ``StreamEvents``) names a session id that is neither live nor remembered here, just
    before core would answer ``NOT_FOUND``. Stops at first non-None result: the node's
    gRPC address, as clients should dial it; core then refuses the call with
    ``FAILED_PRECONDITION``, a message naming the address, and trailing metadata
    ``sessiongate-node: <address>``, which the Python client and the CLI follow once.
    ``None``: unknown everywhere (``NOT_FOUND``). Answer from memory (no network I/O on
    a call's path) and never with this gateway's own address.

    Kind: decision, may be async.
    """


@hookspec
def sg_list_remote_sessions(gateway: GatewayAPI, identity: Identity) -> Sequence[Any]:
    """Sessions other gateway nodes hold, for ``ListSessions``.

    Called once per ``ListSessions`` call, after the local sessions are listed. Return
    :class:`~sessiongate.core.sessions.remote.RemoteSession` objects (from memory: no
    network I/O on a call's path); core asks :func:`sg_authorize` (action ``list``)
    about each, as for its own sessions, and lists those the caller may see with their
    ``node`` set. A session id that is also live here is listed once, as the local one.

    :param identity: the caller (for an implementation that can narrow the list early).

    Kind: observer, may be async; awaited in order.
    """


@hookspec
def sg_credential_changed(gateway: GatewayAPI, record: CredentialRecord) -> None:
    """A sign-in credential was issued, changed (what it grants) or revoked on this
    gateway, or such a change made on another node was applied here.

    Called by the plugin that issues credentials (acl, for its login tokens), through
    ``GatewayAPI.announce_credential``, once the change is stored: from then on the
    credential is accepted, or refused, accordingly. A record applied from another node
    (:func:`sg_apply_credential_record`) is announced when it changed something here,
    so a replicating plugin sends a record out only when it is newer than the version it
    already knows (``updated_at``; or newly revoked): nothing echoes back and forth.

    :param record: the credential's whole current state
        (:class:`~sessiongate.core.plugin_api.CredentialRecord`), never the credential.

    Kind: observer, may be async; awaited in order, in the task of the change (a login,
    a sign-out, a watcher): keep it quick, queue any network I/O.
    """


@hookspec(firstresult=True)
def sg_apply_credential_record(gateway: GatewayAPI, record: CredentialRecord) -> str | None:
    """Bring a sign-in credential another gateway node holds into this node.

    Stops at first non-None result. The plugin that issues credentials of
    ``record.kind`` merges the record into its own store (on disk: it keeps working
    while the other node or the network is away): a new credential is added; what it
    grants is taken when the record is newer (``updated_at``) than what it holds; a
    revocation is applied and never undone. When it returns, the credential is accepted
    or refused accordingly and its live streams that are no longer allowed have ended
    (``UNAUTHENTICATED`` for a revoked one). ``None``: no plugin here issues
    credentials of that kind (the record is ignored). An effective change is then
    announced here with :func:`sg_credential_changed`.

    :returns: ``added``, ``updated``, ``revoked``, ``unchanged`` (nothing new: an older
        or equal version, or an expired credential) or ``conflict`` (a credential of
        that id held for someone else, or a record the plugin cannot take: left alone).

    Kind: decision, may be async.

    Called through ``GatewayAPI.apply_credential_record`` (by the cluster plugin, for
    each record it reads).
    """


@hookspec
def sg_credential_records(gateway: GatewayAPI) -> Sequence[CredentialRecord]:
    """Every sign-in credential this node holds that has not expired, revoked ones
    included: for a full sync, when a replicating plugin (re)connects and publishes what
    the other nodes may lack.

    :returns: :class:`~sessiongate.core.plugin_api.CredentialRecord` objects.

    Kind: observer, may be async; every implementation's records together, through
    ``GatewayAPI.credential_records``.
    """


# -------------------------------------------------------------------------------------
# Sign-in and alarms (mechanisms for web front ends such as the dashboard plugin)
# -------------------------------------------------------------------------------------


@hookspec(firstresult=True)
def sg_revoke_credential(gateway: GatewayAPI, credential: str) -> bool | None:
    """Revoke one sign-in credential at once: a person signing out.

    Stops at first non-None result. Return ``True`` once the credential is revoked
    (its next use is ``UNAUTHENTICATED``, in every process sharing ``state_dir``),
    ``False`` if it is yours but cannot be revoked (already expired, or unknown); ``None``
    means "not mine" (an API key, another plugin's token). Only the holder of a
    credential can ask (the credential itself is the proof); never log it.

    :param credential: what was issued at :func:`sg_login` (the bearer token).

    Kind: decision, may be async.

    Called through ``GatewayAPI.revoke_credential``.
    """


@hookspec
def sg_session_adoption_failed(gateway: GatewayAPI, record: AdoptionRecord,
                               outcome: str) -> None:
    """A worker an earlier gateway released was not adopted
    (``GatewayAPI.adopt_session`` returned None): it was gone, was another process, did
    not phone home in time, or refused; it is stopped if it was ours.

    :param record: what described the worker (session id, owner, tag, pid; never the
        nonce, only its digest).
    :param outcome: the ``session_adoptions`` metric's label (``gone``,
        ``pid_mismatch``, ``already_live``, ``expired``, ``failed`` or the worker's
        refusal).

    Kind: observer, may be async; awaited in order.
    """
