"""The gRPC API (grpc.aio): a thin translation of :class:`Gateway` to CONTRACT §2-3.

Every handler authenticates, looks the session up, asks for authorisation, and
maps :class:`GatewayError` to ``context.abort(code, message)``. Health checking
and reflection are served too. ``serve()`` runs until SIGINT/SIGTERM and then
shuts down gracefully: new calls are refused, streams end ``UNAVAILABLE`` after
their backlog, workers are stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import logging
import math
import re
import signal
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf.message import DecodeError
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from sessiongate.core import logfields
from sessiongate.core.config.tls import TlsFileError, server_tls
from sessiongate.core.errors import (
    FailedPrecondition,
    GatewayError,
    InvalidArgument,
    NotFound,
    OutOfRange,
    StartupError,
    WrongNode,
)
from sessiongate.core.gateway import Gateway
from sessiongate.core.http import HttpServer
from sessiongate.core.identity import Identity
from sessiongate.core.rpc.metrics_interceptor import MetricsInterceptor
from sessiongate.core.sessions.session import EndedSession, Session, SessionState
from sessiongate.core.streaming.events import Subscription, encode_response
from sessiongate.v1 import gateway_pb2, gateway_pb2_grpc

__all__ = ["GatewayService", "GrpcServer", "serve"]

log = logging.getLogger("sessiongate.server")

T = TypeVar("T")
SERVICE_NAME = gateway_pb2.DESCRIPTOR.services_by_name["Gateway"].full_name
MAX_RESPONSE_BYTES = 1 << 20  # event bytes per StreamEventsResponse, about
#: gRPC's default limit on a received message, kept as the floor of ours
GRPC_DEFAULT_MAX_RECEIVE = 4 << 20
#: room beyond workers.max_frame_bytes for the rest of an InvokeRequest: a request
#: whose command could fit a worker frame always arrives, so the gateway can name the
#: setting when the command does not fit
INVOKE_OVERHEAD = 64 << 10
#: the most characters a request's text field (an id, a name, a command) may hold
MAX_TEXT_FIELD = 256
_CONTROL_CHARACTER = re.compile(r"[\x00-\x1f\x7f-\x9f]")

#: Call metadata that Invoke forwards to the worker with the command (the backend reads
#: it as ``Backend.metadata``): ``x-request-id`` and the application's ``x-session-*``
#: headers, as the handler sees them (an interceptor that consumes a header strips it
#: first: the activity plugin's ``x-session-track`` and ``x-session-operation``).
#: Binary (``-bin``) values are not forwarded.
FORWARDED_METADATA = frozenset({"x-request-id"})
FORWARDED_METADATA_PREFIX = "x-session-"


def forwarded_metadata(metadata: Any) -> dict[str, str]:
    """What of a call's metadata travels to the worker (:data:`FORWARDED_METADATA`)."""
    return {key: value for key, value in metadata or ()
            if (key in FORWARDED_METADATA or key.startswith(FORWARDED_METADATA_PREFIX))
            and isinstance(value, str)}


def _status(code: str) -> grpc.StatusCode:
    return getattr(grpc.StatusCode, code, grpc.StatusCode.INTERNAL)


async def _abort(context: grpc.aio.ServicerContext, exc: GatewayError) -> None:
    """End the call with ``exc``'s status and message (and its ``retry-after`` hint and
    other trailers, e.g. ``sessiongate-node``)."""
    trailers = exc.trailers
    if exc.retry_after is not None:
        trailers = (("retry-after", str(max(1, math.ceil(exc.retry_after)))), *trailers)
    if trailers:
        context.set_trailing_metadata(trailers)
    await context.abort(_status(exc.code), exc.message)


class MalformedRequest:
    """What a request whose bytes do not decode becomes (see :func:`_lenient`)."""

    def __init__(self, message_name: str) -> None:
        self.message_name = message_name


def _lenient(deserialize: Callable[[bytes], Any], message_name: str) -> Callable[[bytes], Any]:
    """A request decoder that hands the handler a :class:`MalformedRequest` rather than
    raising: left to gRPC, a request that does not decode ends UNKNOWN with the
    decoder's exception as the message, and a traceback in the log."""

    def decode(data: bytes) -> Any:
        try:
            return deserialize(data)
        except DecodeError:
            return MalformedRequest(message_name)

    return decode


def check_request(request: Any, *, text_fields: bool = True) -> None:
    """Refuse a request that did not decode; and (``text_fields``) one whose text fields
    (ids, names, commands) are too long or hold control characters, before anything
    echoes them: an error message travels in a trailer that clients cap at 16 KiB (a
    longer one reaches them as RESOURCE_EXHAUSTED, not the code meant), and a log line
    must not carry megabytes or forged line breaks.
    """
    if isinstance(request, MalformedRequest):
        raise InvalidArgument(f"malformed request: the bytes received are not a valid "
                              f"{request.message_name}")
    if not text_fields:
        return
    for field, value in request.ListFields():
        if field.type != field.TYPE_STRING:
            continue
        if len(value) > MAX_TEXT_FIELD:
            raise InvalidArgument(f"{field.name} is longer than {MAX_TEXT_FIELD} characters")
        if _CONTROL_CHARACTER.search(value):
            raise InvalidArgument(f"{field.name} contains a control character")


def unary(method: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
    """Authenticate, check the request (:func:`check_request`), run, and turn
    GatewayError into the contract's status codes."""

    @functools.wraps(method)
    async def handler(self: GatewayService, request: Any, context: grpc.aio.ServicerContext) -> T:
        try:
            identity = await self.gateway.authenticate(context.invocation_metadata())
            check_request(request)
            logfields.bind(key_id=identity.key_id,
                           session_id=str(getattr(request, "session_id", "")))
            return await method(self, request, context, identity)
        except GatewayError as exc:
            await _abort(context, exc)
            raise  # unreachable: abort raises
        except grpc.aio.AbortError:
            raise
        except Exception:
            log.exception("%s failed", method.__name__)
            await context.abort(grpc.StatusCode.INTERNAL, "internal error (see the gateway log)")
            raise

    return handler


def _ended(session: Session | EndedSession, ok_states: tuple[str, ...]) -> bool:
    """True if a stream attaching to ``session`` ends OK now (its state is in
    ``ok_states``); raise UNAVAILABLE, naming the cause, if the session faulted."""
    if session.state == SessionState.FAULTED:
        raise GatewayError(f"session {session.session_id} faulted: {session.reason}",
                           code="UNAVAILABLE")
    return session.state in ok_states


class GatewayService(gateway_pb2_grpc.GatewayServicer):
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.sessions = gateway.sessions
        self.default_batch = int(gateway.settings.events.max_batch)

    async def _session(self, identity: Identity, session_id: str,
                       action: str) -> Session | EndedSession:
        try:
            session = self.sessions.get(session_id)
        except NotFound:
            # -- cluster: a session another gateway node holds (sg_locate_session) --
            node = await self.gateway.hooks.decide("sg_locate_session", session_id=session_id)
            if node:
                raise WrongNode(session_id, str(node)) from None
            raise
        await self.gateway.authorize(identity, action, session)
        return session

    @unary
    async def OpenSession(self, request: Any, context: Any, identity: Identity) -> Any:
        session = await self.sessions.open(
            identity, client_name=request.client_name, backend=request.backend,
            tag=request.tag, lease_seconds=float(request.lease_seconds))
        return session.info()

    @unary
    async def CloseSession(self, request: Any, context: Any, identity: Identity) -> Any:
        session = await self._session(identity, request.session_id, "close")
        await self.sessions.close(session, f"closed by {identity.key_id}")
        return session.info()

    @unary
    async def GetSession(self, request: Any, context: Any, identity: Identity) -> Any:
        return (await self._session(identity, request.session_id, "get")).info()

    @unary
    async def ListSessions(self, request: Any, context: Any, identity: Identity) -> Any:
        visible = [s.info() for s in list(self.sessions.live.values())
                   if await self.gateway.visible(identity, s, "list")]
        # -- cluster: every node's sessions (sg_list_remote_sessions), with their node --
        node = self.gateway.node_address
        for info in visible:
            info.node = node
        listed = {info.session_id for info in visible}
        for remote in await self.gateway.hooks.gather("sg_list_remote_sessions",
                                                      identity=identity):
            for session in remote:
                if session.session_id not in listed and \
                        await self.gateway.visible(identity, session, "list"):
                    listed.add(session.session_id)
                    visible.append(session.info())
        return gateway_pb2.ListSessionsResponse(sessions=visible)

    @unary
    async def Invoke(self, request: Any, context: Any, identity: Identity) -> Any:
        if not request.command:
            raise InvalidArgument("command is empty")
        session = await self._session(identity, request.session_id, "invoke")
        session.require_ready("invoke")
        assert isinstance(session, Session) and session.worker is not None
        session.touch()
        timeout = request.timeout_ms / 1000 if request.timeout_ms else None
        payload = await session.worker.invoke(
            request.command, request.payload, timeout,
            forwarded_metadata(context.invocation_metadata()))
        session.touch()
        return gateway_pb2.InvokeResponse(payload=payload)

    async def Login(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        """Unauthenticated by nature: a plugin (``sg_login``) checks the password."""
        try:
            check_request(request, text_fields=False)  # the plugin bounds what it echoes
            grant = await self.gateway.hooks.decide("sg_login", username=str(request.username),
                                                    password=str(request.password),
                                                    peer=str(context.peer()))
        except GatewayError as exc:
            await _abort(context, exc)
            raise  # unreachable: abort raises
        if grant is None:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED,
                                "Login is not offered by this gateway: no plugin serves "
                                "sg_login (see the deployer's guide)")
        expires_at = Timestamp()
        expires_at.FromSeconds(int(grant.expires_at))
        return gateway_pb2.LoginResponse(token=grant.token, token_id=grant.token_id,
                                         expires_at=expires_at,
                                         admin=grant.admin, tags=sorted(grant.tags))

    async def StreamEvents(self, request: Any,
                           context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        sub: Subscription | None = None
        session: Session | None = None
        try:
            identity = await self.gateway.authenticate(context.invocation_metadata())
            check_request(request)
            logfields.bind(key_id=identity.key_id, session_id=request.session_id,
                           subscriber_id=request.subscriber_id)
            resume = request.HasField("after_sequence")
            session = await self._session(identity, request.session_id,
                                    "resume" if resume else "stream")
            if _ended(session, (SessionState.CLOSING, SessionState.CLOSED)):
                # a session closing or closed: the stream ends as its others did (OK), at
                # once; a resume gets no replay of what it had not read before the close
                return
            session.require_ready("stream events")
            assert isinstance(session, Session)
            after = request.after_sequence if resume else None
            if resume:
                if not await self.gateway.hooks.decide("sg_replay_supported",
                                                       session=session):
                    raise FailedPrecondition(
                        "after_sequence: this gateway does not resume streams (no plugin "
                        "answers sg_replay_supported; see the deployer's guide)")
                if after > session.last_sequence:
                    raise OutOfRange(
                        f"after_sequence {after} is beyond the newest sequence "
                        f"{session.last_sequence} of session {session.session_id} "
                        "(a cursor from another session?)")
            await self.gateway.hooks.veto("sg_subscriber_attach", session=session,
                                          identity=identity, request=request)
            skip = request.on_overflow == gateway_pb2.SKIP
            keeps_alive = await self.gateway.hooks.decide("sg_stream_keeps_alive",
                                                          session=session, identity=identity)
            sub = Subscription(
                subscriber_id=request.subscriber_id, identity=identity,
                skip=skip, keeps_alive=keeps_alive is not False,
                policy="disconnect_subscriber"
                if request.on_overflow == gateway_pb2.DISCONNECT else None)
            if _ended(session, (SessionState.CLOSING, SessionState.CLOSED)):
                # closed while this attach was being decided: it ends as every stream of
                # the session did (OK), as if it had been attached a moment earlier
                return
            session.subscribe(sub, after_sequence=after)
            log.info("session %s: subscriber %s attached (key %s%s)", session.session_id,
                     request.subscriber_id or "-", identity.key_id,
                     f", after {after}" if resume else "")
            self.gateway.hooks.notify_sync("sg_subscriber_attached", session=session,
                                           subscription=sub)
            max_batch = min(request.max_batch or self.default_batch, self.default_batch)
            async for response in self._responses(sub, max_batch, replaying=resume):
                try:
                    await context.write(response)
                except Exception:
                    if context.cancelled():  # the client left while a write was under way
                        log.debug("session %s: stream cancelled by the client",
                                  session.session_id)
                        return
                    raise
        except GatewayError as exc:
            await _abort(context, exc)
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception:
            log.exception("StreamEvents failed")
            await context.abort(grpc.StatusCode.INTERNAL, "internal error (see the gateway log)")
        finally:
            if sub is not None and session is not None:
                session.unsubscribe(sub, sub.end_reason if sub.ended else "client gone")

    @staticmethod
    async def _responses(sub: Subscription, max_batch: int,
                         replaying: bool) -> AsyncIterator[bytes]:
        """Serialized responses: the first at once (attached); ``caught_up`` where history
        ends. Each carries up to ``max_batch`` events and about ``MAX_RESPONSE_BYTES`` at
        most (gRPC clients refuse messages over 4 MiB), joined from the events' bytes.
        """
        # A resumed stream's history ends where the log ended when it attached.
        history_end = sub.replay_end if replaying else None
        if history_end is None or (sub.cursor >= history_end and sub.pending_gap is None):
            history_end = None
            yield encode_response((), caught_up=True)
        next_ = sub.next
        while True:
            item = await next_(max_batch)
            if item is None:
                return
            gap, events = item
            # Encode the whole batch; only a batch over the size limit (rare) is cut up,
            # so the common case costs no per-event work here.
            whole = encode_response(events)
            chunks = ((events,) if len(whole) <= MAX_RESPONSE_BYTES or len(events) < 2
                      else _by_size(events))
            position = sub.cursor - len(events)  # the log index of the first event
            for i, chunk in enumerate(chunks):
                caught_up = False
                if history_end is not None:
                    position += len(chunk)
                    if position >= history_end:
                        caught_up, history_end = True, None
                if len(chunks) == 1:
                    yield whole + encode_response((), gap, caught_up)
                else:
                    yield encode_response(chunk, gap if i == 0 else None, caught_up)


def _by_size(events: list[Any]) -> list[list[Any]]:
    """``events`` cut into runs of about ``MAX_RESPONSE_BYTES`` each."""
    chunks: list[list[Any]] = []
    start = total = 0
    for i, event in enumerate(events):
        size = len(event.data)
        if total + size > MAX_RESPONSE_BYTES and i > start:
            chunks.append(events[start:i])
            start, total = i, 0
        total += size
    chunks.append(events[start:])
    return chunks


def _passthrough(response: Any) -> bytes:
    """StreamEvents yields ready-made bytes; anything else is a message."""
    return response if isinstance(response, bytes) else response.SerializeToString()


def add_service(servicer: GatewayService, server: grpc.aio.Server) -> None:
    """The generated registration, with StreamEvents' serializer passing bytes through."""
    handlers: dict[str, Any] = {}

    class Capture:
        def add_generic_rpc_handlers(self, generic: Any) -> None:
            pass

        def add_registered_method_handlers(self, name: str, found: dict[str, Any]) -> None:
            handlers.update(found)

    gateway_pb2_grpc.add_GatewayServicer_to_server(servicer, Capture())
    stream = handlers["StreamEvents"]
    handlers["StreamEvents"] = grpc.unary_stream_rpc_method_handler(
        servicer.StreamEvents, request_deserializer=stream.request_deserializer,
        response_serializer=_passthrough)
    methods = gateway_pb2.DESCRIPTOR.services_by_name["Gateway"].methods_by_name
    for name, handler in list(handlers.items()):
        handlers[name] = handler._replace(request_deserializer=_lenient(
            handler.request_deserializer, methods[name].input_type.full_name))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME,
                                                                          handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)


#: how long a call may wait to be taken in by the server (see GrpcServer)
MAX_CALL_QUEUE_SECONDS = 600


class GrpcServer:
    """The grpc.aio server around a started :class:`Gateway`."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        max_frame = int(gateway.settings.workers.max_frame_bytes)
        # core's interceptors first (outermost), then the plugins', in hook order
        interceptors = [MetricsInterceptor(gateway.metrics)] + [
            interceptor for found in gateway.hooks.collect("sg_grpc_interceptors")
            for interceptor in found]
        self.server = grpc.aio.server(interceptors=interceptors, options=[
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.keepalive_timeout_ms", 10_000),
            ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
            ("grpc.keepalive_permit_without_calls", 1),
            # one gateway per address: a second one must fail to bind, not share the
            # port (the kernel would spread connections over both)
            ("grpc.so_reuseport", 0),
            # gRPC cancels a call the server has not taken in within 30 s. This server
            # takes in one call per turn of its event loop, and under a heavy event load
            # turns are long (events.max_loop_lag_ms keeps them short, not instant):
            # calls then wait in line - a client bounds that with its deadline - rather
            # than ending CANCELLED for no reason they can see.
            ("grpc.server_max_unrequested_time_in_server", MAX_CALL_QUEUE_SECONDS),
            ("grpc.max_receive_message_length",
             max(GRPC_DEFAULT_MAX_RECEIVE, max_frame + INVOKE_OVERHEAD)),
        ])
        add_service(GatewayService(gateway), self.server)
        # plugins' own services (an admin API), listed by reflection with core's
        plugin_services = [name for names in gateway.hooks.collect(
            "sg_grpc_services", server=self.server) for name in names]
        self.health = health.aio.HealthServicer() if hasattr(health, "aio") else \
            health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, *plugin_services, health.SERVICE_NAME, reflection.SERVICE_NAME),
            self.server)
        self.port = 0
        self.address = ""
        self.tls_mode = ""  # "TLS" or "mTLS" once bound with server.tls.cert_file
        #: the HTTP side port (server.http_address), started and stopped with this server
        self.http = HttpServer(gateway, self.readiness)
        self._serving = False
        self._stopping = False

    def bind(self) -> None:
        """Take the configured address (idempotent); nothing is served until :meth:`start`.

        :raises StartupError: the address is in use or cannot be listened on, or a TLS
            file of ``server.tls.*`` cannot be used.
        """
        if self.port:
            return
        address = str(self.gateway.settings.server.grpc_address)
        host = address.rpartition(":")[0]
        credentials = self._credentials()
        # Probed first, so a busy port gives one clear line rather than gRPC's log noise.
        problem = _bind_problem(address)
        if problem is None:
            try:
                self.port = (self.server.add_secure_port(address, credentials)
                             if credentials is not None
                             else self.server.add_insecure_port(address))
            except RuntimeError:
                self.port = 0
            if self.port == 0:
                problem = _bind_problem(address) or (
                    f"cannot listen on {address}; set server.grpc_address to an address "
                    "of this host")
        if problem is not None:
            raise StartupError(problem)
        self.address = f"{host}:{self.port}"

    def _credentials(self) -> grpc.ServerCredentials | None:
        """TLS from ``server.tls.*`` (files read now), or None: plaintext.

        :raises StartupError: a TLS file is missing, unreadable or not PEM.
        """
        try:
            tls = server_tls(self.gateway.settings)
        except TlsFileError as exc:
            raise StartupError(str(exc)) from None
        if tls is None:
            return None
        self.tls_mode = tls.mode
        for warning in tls.warnings:
            log.warning("%s", warning)
        return grpc.ssl_server_credentials(
            [(tls.private_key, tls.certificate_chain)], root_certificates=tls.client_ca,
            require_client_auth=tls.client_ca is not None)

    def readiness(self) -> str | None:
        """None once the gateway's state is loaded and gRPC accepts calls, until shutdown
        begins; else why not, one line (the side port's ``/readyz``)."""
        if self._stopping:
            return "stopping: the gateway is shutting down"
        if not self.gateway.started:
            return "starting: the gateway is loading its state"
        if not self._serving:
            return "starting: the gRPC server does not accept calls yet"
        if self.gateway.degraded:  # GatewayAPI.set_degraded
            return "degraded: " + "; ".join(f"{component}: {why}" for component, why
                                            in sorted(self.gateway.degraded.items()))
        return None

    async def start(self) -> str:
        """Serve gRPC (binding first) and the HTTP side port (if not serving already)."""
        self.bind()
        await self.http.start()
        await self.server.start()
        await _set_health(self.health, health_pb2.HealthCheckResponse.SERVING)
        self._serving = True
        # the address is the first line's first word after "listening on" (tests and
        # scripts parse it): the side port's line comes after it
        log.info("listening on %s%s", self.address,
                 f" ({self.tls_mode})" if self.tls_mode else "")
        self.http.announce()
        return self.address

    async def stop(self) -> None:
        self._stopping = True
        await _set_health(self.health, health_pb2.HealthCheckResponse.NOT_SERVING)
        grace = float(self.gateway.settings.server.shutdown_grace_seconds)
        # Stop accepting, end streams (UNAVAILABLE after their backlog), stop workers;
        # then give the handlers `grace` seconds to finish writing before cancelling them.
        # The side port answers (/readyz: 503) until the end.
        self.gateway.sessions.accepting = False
        try:
            stopping = asyncio.create_task(self.server.stop(grace))
            await self.gateway.stop()
            await stopping
        finally:
            await self.http.stop()


def _bind_problem(address: str) -> str | None:
    """Why ``address`` (host:port) cannot be listened on, found by binding a plain
    socket (without port reuse, as the gateway's own); None if it can."""
    host, _, port_text = address.rpartition(":")
    host = host.strip("[]")
    try:
        port = int(port_text)
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    except (ValueError, OSError) as exc:
        return (f"cannot listen on {address} ({exc}); set server.grpc_address to "
                "host:port")
    for family, kind, proto, _name, sockaddr in infos:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC does
            try:
                probe.bind(sockaddr)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    return (f"address {address} is already in use; stop what listens "
                            "there or set server.grpc_address to another address")
                return (f"cannot listen on {address} ({exc.strerror}); set "
                        "server.grpc_address to an address of this host")
    return None


async def _set_health(servicer: Any, status: Any) -> None:
    result = servicer.set("", status)
    if asyncio.iscoroutine(result):
        await result
    result = servicer.set(SERVICE_NAME, status)
    if asyncio.iscoroutine(result):
        await result


async def serve(gateway: Gateway, *, ready: Callable[[str], None] | None = None) -> None:
    """Start, run until SIGINT/SIGTERM, then shut down gracefully."""
    # handlers first: a signal right after "listening on" must not kill the process
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    # state_dir first (one gateway per folder), then the address: both before anything
    # starts, so a refused gateway touches no worker and creates nothing
    gateway.lock_state_dir()
    server = GrpcServer(gateway)
    try:
        server.bind()
        await server.http.start()  # /readyz answers 503 while the gateway starts
        await gateway.start()
        address = await server.start()
    except BaseException:
        await server.server.stop(None)
        await server.http.stop()
        await gateway.stop()
        raise
    if ready is not None:
        ready(address)
    try:
        await stop.wait()
        log.info("shutting down")
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)
        await server.stop()
        log.info("stopped")
