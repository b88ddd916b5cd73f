"""A small asyncio client for applications (also what the CLI uses).

``follow()`` is the part worth having: it streams a session's events and, when
the stream breaks (network cut, gateway restart, overflow), resumes after the
last sequence it yielded, with bounded exponential backoff and jitter. A replay
gap is yielded as a :class:`GapNotice` so the application knows to re-read the
state it depends on; it never sees a silent hole or a duplicate. A stream the
gateway ended because it shut down raises :class:`GatewayShutdown` when
``follow_restarts=False`` (the CLI's default); with ``True`` it is resumed like any
other break, which carries it across a restart with the reattach plugin.

With several gateways in a cluster (the cluster plugin), a call for a session another
node holds is refused ``FAILED_PRECONDITION`` with trailing metadata
``sessiongate-node: <address>``; every call of this client that names a session
(``get``, ``invoke``, ``close``, ``stream``/``follow``) follows it once, to that
address, with the same key and TLS settings.

    async with connect("127.0.0.1:50551", key) as gw:
        sid = (await gw.open(client_name="app")).session_id
        async for item in gw.follow(sid):
            ...
"""

from __future__ import annotations

import contextlib
import json
import random
import re
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, NamedTuple

import grpc

from sessiongate.core.config.tls import TlsFileError, client_tls
from sessiongate.core.errors import NODE_METADATA, SHUTDOWN_MESSAGE
from sessiongate.v1 import gateway_pb2, gateway_pb2_grpc

__all__ = ["GapNotice", "GatewayClient", "GatewayShutdown", "Reconnecting", "TlsFileError",
           "connect", "info_dict", "info_json", "is_gateway_shutdown", "redirect_target",
           "tls_credentials"]

#: Codes after which resuming can succeed (the gateway or the connection went away,
#: or this subscriber overflowed and may resume from where it was).
RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED,
                       grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN,
                       grpc.StatusCode.CANCELLED, grpc.StatusCode.ABORTED})
#: how a gateway refuses a resume it does not offer (no replay plugin) or allow (a viewer)
RESUME_REFUSED = frozenset({grpc.StatusCode.FAILED_PRECONDITION,
                            grpc.StatusCode.PERMISSION_DENIED})
ENDED_STATES = (gateway_pb2.CLOSED, gateway_pb2.FAULTED)
#: extra call metadata: ``(key, value)`` pairs, keys lower case
Metadata = Sequence[tuple[str, str]]
#: How a gateway that shuts down ends streams and refuses calls (UNAVAILABLE).
SHUTDOWN_DETAILS = re.compile(re.escape(SHUTDOWN_MESSAGE))


#: gateway nodes a client keeps a channel to at most (redirects, see ``redirect_target``)
MAX_NODE_CHANNELS = 64


def redirect_target(error: grpc.aio.AioRpcError) -> str | None:
    """The gateway node a refused call should go to (its ``sessiongate-node`` trailer on
    ``FAILED_PRECONDITION``), or None."""
    if error.code() != grpc.StatusCode.FAILED_PRECONDITION:
        return None
    for key, value in error.trailing_metadata() or ():
        if key == NODE_METADATA and isinstance(value, str) and value:
            return value
    return None


def is_gateway_shutdown(code: grpc.StatusCode, details: str | None) -> bool:
    """Did the gateway end this call because it is shutting down (not a network cut)?"""
    return code == grpc.StatusCode.UNAVAILABLE and bool(SHUTDOWN_DETAILS.search(details or ""))


class GatewayShutdown(grpc.aio.AioRpcError):
    """A stream ended because its gateway shut down (an ``AioRpcError``, UNAVAILABLE)."""

    def __init__(self, error: grpc.aio.AioRpcError, after_sequence: int | None) -> None:
        super().__init__(error.code(), error.initial_metadata(), error.trailing_metadata(),
                         error.details(), error.debug_error_string())
        #: the last sequence yielded (resume after it), or the cursor the stream started at
        self.after_sequence = after_sequence


class GapNotice(NamedTuple):
    """Events after ``requested_after`` and before ``oldest_available`` are lost."""

    requested_after: int
    oldest_available: int
    reason: str


class Reconnecting(NamedTuple):
    """The stream broke; ``follow`` resumes after ``after_sequence`` in ``delay`` s."""

    error: str
    delay: float
    after_sequence: int


def info_dict(info: Any) -> dict[str, Any]:
    """A message's every field, zero values included: numbers as numbers, enums by name,
    timestamps as RFC 3339 text (``None`` when unset). Unlike protobuf's JSON mapping,
    a 64-bit number is a JSON number, not a string."""
    row: dict[str, Any] = {}
    for field in info.DESCRIPTOR.fields:
        value = getattr(info, field.name)
        if field.is_repeated:
            value = [info_dict(v) if field.message_type is not None else v for v in value]
        elif field.enum_type is not None:
            enum = field.enum_type.values_by_number
            value = enum[value].name if value in enum else value
        elif field.message_type is not None:
            if not info.HasField(field.name):
                value = None
            elif field.message_type.full_name == "google.protobuf.Timestamp":
                value = value.ToJsonString()
            else:
                value = info_dict(value)
        elif isinstance(value, bytes):
            value = value.decode(errors="replace")
        row[field.name] = value
    return row


def info_json(info: Any) -> str:
    return json.dumps(info_dict(info))


class GatewayClient:
    """Calls to one gateway (``channel``) with one key.

    :param dial: opens a channel to another gateway node's address, to follow a
        ``sessiongate-node`` redirect (default: plaintext); :func:`connect` passes one with
        its own TLS settings. The channels it opens are closed by :meth:`close_nodes`.
    """

    def __init__(self, channel: grpc.aio.Channel, key: str, *,
                 dial: Callable[[str], grpc.aio.Channel] | None = None) -> None:
        self.channel = channel
        self.stub = gateway_pb2_grpc.GatewayStub(channel)
        self.metadata = (("authorization", f"Bearer {key}"),) if key else ()
        self._dial = dial or grpc.aio.insecure_channel
        self._nodes: dict[str, tuple[grpc.aio.Channel, gateway_pb2_grpc.GatewayStub]] = {}

    def _stub(self, node: str) -> gateway_pb2_grpc.GatewayStub:
        """The stub of gateway node ``node`` ("" : this client's gateway)."""
        if not node:
            return self.stub
        known = self._nodes.get(node)
        if known is None:
            if len(self._nodes) >= MAX_NODE_CHANNELS:
                raise ValueError(f"more than {MAX_NODE_CHANNELS} gateway nodes redirected to")
            channel = self._dial(node)
            known = self._nodes[node] = (channel, gateway_pb2_grpc.GatewayStub(channel))
        return known[1]

    async def close_nodes(self) -> None:
        """Close the channels opened to follow redirects."""
        nodes, self._nodes = self._nodes, {}
        for channel, _stub in nodes.values():
            await channel.close()

    async def _on_session(self, method: str, request: Any, metadata: Metadata = ()) -> Any:
        """A unary call about one session, following a ``sessiongate-node`` redirect once."""
        metadata = (*self.metadata, *metadata)
        try:
            return await getattr(self.stub, method)(request, metadata=metadata)
        except grpc.aio.AioRpcError as exc:
            node = redirect_target(exc)
            if node is None:
                raise
        return await getattr(self._stub(node), method)(request, metadata=metadata)

    async def open(self, *, client_name: str = "", backend: str = "", tag: str = "",
                   lease_seconds: int = 0) -> Any:
        return await self.stub.OpenSession(gateway_pb2.OpenSessionRequest(
            client_name=client_name, backend=backend, tag=tag, lease_seconds=lease_seconds),
            metadata=self.metadata)

    async def close(self, session_id: str) -> Any:
        return await self._on_session(
            "CloseSession", gateway_pb2.CloseSessionRequest(session_id=session_id))

    async def get(self, session_id: str) -> Any:
        return await self._on_session(
            "GetSession", gateway_pb2.GetSessionRequest(session_id=session_id))

    async def list(self) -> list[Any]:
        response = await self.stub.ListSessions(gateway_pb2.ListSessionsRequest(),
                                                metadata=self.metadata)
        return list(response.sessions)

    async def invoke(self, session_id: str, command: str, payload: bytes = b"", *,
                     timeout_ms: int = 0, metadata: Metadata = ()) -> bytes:
        """Run ``command`` in the session's worker. ``metadata``: extra call metadata
        (``x-request-id``, ``x-session-*``: the gateway forwards those to the worker;
        the activity plugin reads its ``x-session-track`` headers)."""
        response = await self._on_session("Invoke", gateway_pb2.InvokeRequest(
            session_id=session_id, command=command, payload=payload, timeout_ms=timeout_ms),
            metadata)
        return response.payload

    async def invoke_json(self, session_id: str, command: str, payload: Any = None, *,
                          metadata: Metadata = ()) -> Any:
        raw = await self.invoke(session_id, command,
                                b"" if payload is None else json.dumps(payload).encode(),
                                metadata=metadata)
        return json.loads(raw) if raw else None

    async def login(self, username: str, password: str) -> Any:
        return await self.stub.Login(gateway_pb2.LoginRequest(username=username,
                                                              password=password))

    def stream(self, session_id: str, *, after_sequence: int | None = None,
               subscriber_id: str = "", max_batch: int = 0, on_overflow: int = 0,
               metadata: Metadata = (), node: str = "") -> Any:
        """The raw ``StreamEvents`` call (:meth:`follow` follows redirects and resumes).

        :param node: the gateway node to call (a redirect's address); "": this client's.
        """
        request = gateway_pb2.StreamEventsRequest(
            session_id=session_id, subscriber_id=subscriber_id, max_batch=max_batch,
            on_overflow=on_overflow)
        if after_sequence is not None:
            request.after_sequence = after_sequence
        return self._stub(node).StreamEvents(request, metadata=(*self.metadata, *metadata))

    async def _ended(self, session_id: str) -> bool:
        try:
            return (await self.get(session_id)).state in ENDED_STATES
        except grpc.aio.AioRpcError as exc:
            return exc.code() == grpc.StatusCode.NOT_FOUND

    async def follow(self, session_id: str, *, after_sequence: int | None = None,
                     subscriber_id: str = "", reconnect: bool = True,
                     follow_restarts: bool = True, initial_delay: float = 0.1,
                     max_delay: float = 5.0, give_up_after: float = 300.0
                     ) -> AsyncIterator[Any]:
        """Events (``Event``), gaps (``GapNotice``) and, when resuming, ``Reconnecting``.

        Ends when the session closes; raises ``grpc.aio.AioRpcError`` for a
        non-retryable status or when the gateway stays away ``give_up_after`` s, and
        :class:`GatewayShutdown` when the gateway shut down and ``follow_restarts`` is
        false (or ``reconnect`` is).
        """
        async for batch in self.follow_batches(
                session_id, after_sequence=after_sequence, subscriber_id=subscriber_id,
                reconnect=reconnect, follow_restarts=follow_restarts,
                initial_delay=initial_delay, max_delay=max_delay,
                give_up_after=give_up_after):
            for item in batch:
                yield item

    async def follow_batches(self, session_id: str, *, after_sequence: int | None = None,
                             subscriber_id: str = "", reconnect: bool = True,
                             follow_restarts: bool = True, initial_delay: float = 0.1,
                             max_delay: float = 5.0, give_up_after: float = 300.0
                             ) -> AsyncIterator[list[Any]]:
        """:meth:`follow`, one list per response: for consumers that write in batches.

        After a ``Reconnecting``, the first response of the resumed stream is yielded
        even when it carries nothing (an empty list): the stream is back.

        Without ``after_sequence`` and with ``reconnect``, "from now on" means from the
        session's position read by ``GetSession``: the first attach resumes after it, so
        an event emitted meanwhile is not skipped. A gateway that does not resume (no
        replay plugin; a viewer under acl) gets a live attach instead.
        """
        cursor = after_sequence
        resume_first = after_sequence is not None
        #: the first attach resumes from GetSession's position, which the gateway may
        #: refuse (no replay support, or a viewer, who may not resume): then attach live
        live_fallback = False
        if cursor is None and reconnect:
            # "From now on" is from our GetSession: the first attach resumes after it, so
            # an event emitted between the two calls is not skipped.
            cursor = (await self.get(session_id)).last_sequence
            resume_first = live_fallback = True
        delay = initial_delay
        broken_for = 0.0
        resuming = False
        node = ""  # the gateway node holding the session, once redirected (once)
        while True:
            call = self.stream(session_id, subscriber_id=subscriber_id,
                               after_sequence=cursor if resume_first else None, node=node)
            try:
                async for response in call:
                    live_fallback = False
                    delay, broken_for = initial_delay, 0.0
                    batch: list[Any] = []
                    if response.HasField("gap"):
                        gap = response.gap
                        batch.append(GapNotice(gap.requested_after, gap.oldest_available,
                                               gateway_pb2.GapReason.Name(gap.reason)))
                    events = list(response.events)
                    if events and resume_first and cursor is not None \
                            and events[0].sequence <= cursor:
                        # defensive: never yield a duplicate
                        events = [e for e in events if e.sequence > cursor]
                    if events:
                        cursor = events[-1].sequence
                        batch.extend(events)
                    if batch or resuming:
                        resuming = False
                        yield batch
                return  # the session closed: the stream ended OK
            except grpc.aio.AioRpcError as exc:
                redirect = None if node else redirect_target(exc)
                if redirect is not None:
                    node = redirect
                    continue
                if live_fallback and exc.code() in RESUME_REFUSED:
                    live_fallback = resume_first = False
                    continue
                if is_gateway_shutdown(exc.code(), exc.details()) and not (
                        reconnect and follow_restarts):
                    raise GatewayShutdown(exc, cursor) from None
                if not reconnect or exc.code() not in RETRYABLE:
                    raise
                if broken_for >= give_up_after:
                    raise
                if exc.code() == grpc.StatusCode.UNAVAILABLE and await self._ended(session_id):
                    raise  # the session faulted or closed: nothing to resume
                resume_first = True
                cursor = cursor or 0
                pause = delay * random.uniform(0.5, 1.0)
                resuming = True
                yield [Reconnecting(f"{exc.code().name}: {exc.details()}", pause, cursor)]
                await _sleep(pause)
                broken_for += pause
                delay = min(delay * 2, max_delay)
            finally:
                call.cancel()


async def _sleep(seconds: float) -> None:
    import asyncio

    await asyncio.sleep(seconds)


def tls_credentials(ca_file: str | None = None, cert_file: str | None = None,
                    key_file: str | None = None, *,
                    names: tuple[str, str, str] = ("ca_file", "cert_file", "key_file"),
                    ) -> grpc.ChannelCredentials | None:
    """TLS credentials from PEM files, read and checked now; None when none is given.

    ``ca_file``: the CA(s) that signed the gateway's certificate (without it, the
    system's CAs); ``cert_file`` and ``key_file`` (together): this client's certificate
    for a gateway that wants one (``server.tls.client_ca_file``).

    :param names: what the caller calls the three, for messages (``--ca-file``...).
    :raises TlsFileError: (a ``ValueError``) a file is missing, unreadable or not PEM,
        the key is not the certificate's, or only one of the two is given.
    """
    tls = client_tls(ca_file, cert_file, key_file, names=names)
    if tls is None:
        return None
    return grpc.ssl_channel_credentials(tls.root_certificates, tls.private_key,
                                        tls.certificate_chain)


@contextlib.asynccontextmanager
async def connect(target: str, key: str, *, ca_file: str | None = None,
                  cert_file: str | None = None, key_file: str | None = None,
                  credentials: grpc.ChannelCredentials | None = None,
                  ) -> AsyncIterator[GatewayClient]:
    """A client of the gateway at ``target`` (host:port), over TLS when a file (see
    :func:`tls_credentials`) or ``credentials`` (e.g. ``grpc.ssl_channel_credentials``
    with root certificates in memory) is given, else plaintext."""
    if credentials is not None and (ca_file or cert_file or key_file):
        raise ValueError("give credentials or ca_file/cert_file/key_file, not both")
    if credentials is None:
        credentials = tls_credentials(ca_file, cert_file, key_file)
    channel = (grpc.aio.secure_channel(target, credentials) if credentials is not None
               else grpc.aio.insecure_channel(target))
    def dial(node: str) -> grpc.aio.Channel:
        return (grpc.aio.secure_channel(node, credentials) if credentials is not None
                else grpc.aio.insecure_channel(node))

    async with channel:
        client = GatewayClient(channel, key, dial=dial)
        try:
            yield client
        finally:
            await client.close_nodes()
