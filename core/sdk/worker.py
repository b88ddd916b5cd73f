"""The worker SDK: a backend is a small class; this module runs it in a worker process.

A worker process is started by the gateway with ``python -m sessiongate.core.sdk``
and learns its socket, session id and backend from its environment, and its nonce
from one line on its stdin (never the environment, which /proc shows). It
connects, presents the nonce (``Hello``), waits for ``Welcome``, starts the
backend, says ``Ready``, then serves commands and sends the events the backend
emits, stamped 1, 2, 3 … and batched into as few frames as the load allows.

Writing a backend::

    from sessiongate.core.sdk.worker import Backend, CommandError, command

    class Counter(Backend):
        async def start(self):
            self.n = 0

        @command()
        async def bump(self, payload):
            self.n += payload.get("by", 1)
            self.emit("bumped", {"n": self.n})
            return {"n": self.n}

Register it with the ``sg_worker_backends`` hook (``{"counter": "pkg.mod:Counter"}``).

With reattach on, a worker whose gateway goes away keeps running, keeps a
bounded buffer of its newest events, and phones home with bounded exponential
backoff until it is adopted or its orphan lifetime ends.

This module imports nothing but protobuf and the standard library: it is on the
session-open critical path.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import importlib
import inspect
import json
import logging
import os
import secrets
import signal
import sys
import time
import types
from collections.abc import Callable, Mapping
from typing import Any

from sessiongate.core import protocol
from sessiongate.v1 import gateway_pb2, worker_pb2

__all__ = ["Backend", "CommandError", "EventTooLarge", "WorkerRuntime", "command", "main"]

log = logging.getLogger("sessiongate.worker")

BATCH_EVENTS = 1024  # events per frame at most; a frame is also sent when the loop idles
BATCH_BYTES = 256 << 10  # payload bytes per frame at most (frames stay far below max_frame)
WRITE_HIGH_WATER = 512 << 10  # drain() waits while more than this is unsent to the gateway
HISTORY_CHUNK = 256  # retained events per History frame after an adoption
#: Events held back (beyond the gateway's credit) at most, by count and by payload
#: bytes; past either the oldest are dropped (WORKER_OVERRUN). drain() waits until
#: both are at most half used. A Backend subclass may set its own.
MAX_UNSENT_EVENTS = 8 * BATCH_EVENTS
MAX_UNSENT_BYTES = 8 << 20
#: protobuf bytes a one-event frame adds to the event's payload and kind, at most
#: (sequence, time, the overrun flag, field tags and lengths)
EVENT_FRAME_OVERHEAD = 64
MAX_FRAME_SETTING = "workers.max_frame_bytes"
#: the call metadata forwarded with the command being handled (each command runs in its
#: own task, so each sees its own; tasks a handler starts inherit it)
_command_metadata: contextvars.ContextVar[Mapping[str, str]] = contextvars.ContextVar(
    "sessiongate_command_metadata", default=types.MappingProxyType({}))


def _too_large(what: str, size: int, frame_size: int, max_frame: int) -> str:
    return (f"{what} of {size} bytes does not fit a worker frame ({frame_size} bytes > "
            f"{MAX_FRAME_SETTING} = {max_frame}); make it smaller or raise "
            f"{MAX_FRAME_SETTING}")


class CommandError(Exception):
    """Raised by a command handler for bad input: the caller gets ``INVALID_ARGUMENT``."""


class EventTooLarge(ValueError):
    """Raised by :meth:`Backend.emit` for an event too large for one worker frame
    (``workers.max_frame_bytes``). The event is not sent and takes no sequence. Left
    to propagate out of a command handler, it fails that command alone: the caller
    gets ``RESOURCE_EXHAUSTED`` with this message; the session lives on.
    """

    def __init__(self, kind: str, size: int, frame_size: int, max_frame: int) -> None:
        super().__init__(_too_large(f"event {kind!r}", size, frame_size, max_frame))
        self.kind = kind
        self.size = size
        self.frame_size = frame_size
        self.max_frame = max_frame


def command(name: str | None = None, *, raw: bool = False) -> Callable[[Any], Any]:
    """Mark a backend method as the handler of command ``name`` (default: its own name).

    The handler gets the payload decoded from JSON (``None`` when empty), or the raw
    bytes with ``raw=True``, and returns something JSON-serialisable (or bytes when
    raw). It may be sync or async.
    """

    def mark(func: Any) -> Any:
        func.__sg_command__ = (name or func.__name__, raw)
        return func

    return mark


class Backend:
    """Base class of worker backends. Subclasses define ``@command()`` methods.

    Events are flow-controlled: the gateway lets a worker run only a bounded window
    ahead of its fastest complete subscriber. :meth:`emit` never blocks; what the
    gateway has not yet granted waits in a bounded buffer (``max_unsent_events``,
    ``max_unsent_bytes``). A backend that produces in a loop awaits :meth:`drain`
    now and then (every few hundred events) and never loses an event; one that never
    does loses its *oldest* unsent events when the buffer is full, and subscribers
    see a ``WORKER_OVERRUN`` gap where they were.
    """

    max_unsent_events = MAX_UNSENT_EVENTS
    max_unsent_bytes = MAX_UNSENT_BYTES

    def __init__(self, runtime: WorkerRuntime) -> None:
        self._runtime = runtime
        if type(self).emit is Backend.emit:  # not overridden: skip one call per event
            self.emit = runtime.emit  # type: ignore[method-assign]

    @property
    def session_id(self) -> str:
        return self._runtime.session_id

    @property
    def metadata(self) -> Mapping[str, str]:
        """The call metadata the gateway forwarded with the command being handled
        (read-only; empty outside a command): ``x-request-id`` and the ``x-session-*``
        headers the client set, for a backend that passes context on. A handler's own
        tasks see the metadata of the command that started them."""
        return _command_metadata.get()

    async def start(self) -> None:
        """Called once before the worker reports Ready."""

    async def stop(self) -> None:
        """Called once when the worker is asked to stop (or its gateway is gone for good)."""

    def emit(self, kind: str, payload: Any = None) -> int:
        """Send an event; returns its sequence. Never blocks: see :meth:`drain`.

        :raises EventTooLarge: the event cannot fit one worker frame
            (``workers.max_frame_bytes``); it is not sent and takes no sequence. A
            command handler that lets it propagate fails with ``RESOURCE_EXHAUSTED``;
            the session goes on.
        """
        return self._runtime.emit(kind, payload)

    async def drain(self) -> None:
        """Wait until the unsent buffer is at most half full and the connection's write
        buffer below its high-water mark: the producer's pacing. After it returns, at
        least ``max_unsent_events / 2`` more events fit without loss."""
        await self._runtime.drain()

    async def credit(self) -> None:
        """Wait until the gateway takes more events (at once when it does, or when it
        does not pace this worker; also while the gateway is away: see reattach).

        For a source on its own clock (a timer, a poll), awaited before each event:
        while the gateway holds back, the source waits - its ticks come late, none is
        lost - instead of running on and filling the unsent buffer, and the worker
        uses no CPU the gateway needs."""
        await self._runtime.credit()

    @classmethod
    def commands(cls) -> dict[str, tuple[str, bool]]:
        found: dict[str, tuple[str, bool]] = {}
        for attr in dir(cls):
            marker = getattr(getattr(cls, attr, None), "__sg_command__", None)
            if marker:
                found[marker[0]] = (attr, marker[1])
        return found


def _frame_cut(unsent: list[tuple[str, bytes, int]], count: int,
               limit: int = BATCH_BYTES) -> tuple[int, int]:
    """How many of the first ``count`` unsent events fit one frame, and their bytes."""
    size = 0
    for i in range(count):
        grown = size + len(unsent[i][1])
        if grown > limit and i > 0:
            return i, size
        size = grown
    return count, size


def _varint_size(value: int) -> int:
    return max(1, (value.bit_length() + 6) // 7)


def _fitting(events: Any, budget: int) -> int:
    """How many of ``events`` (messages, in order) fit ``budget`` bytes as a repeated
    field: each costs its size, a tag and a length."""
    total = 0
    for i, event in enumerate(events):
        size = event.ByteSize()
        total += 1 + _varint_size(size) + size
        if total > budget:
            return i
    return len(events)


def _encode_payload(payload: Any) -> bytes:
    if payload is None:
        return b""
    if isinstance(payload, bytes | bytearray | memoryview):
        return bytes(payload)
    return json.dumps(payload, separators=(",", ":")).encode()


class WorkerRuntime:
    """Connection, handshake, command dispatch and event batching of one worker."""

    def __init__(self, *, socket_path: str, session_id: str, nonce: bytes,
                 backend_cls: type[Backend], backend_name: str, max_frame: int,
                 history: int = 0, orphan_lifetime: float = 0.0) -> None:
        self.socket_path = socket_path
        self.session_id = session_id
        self._nonce = nonce
        self.backend_name = backend_name
        self._set_max_frame(max_frame)
        self.backend = backend_cls(self)
        self._handlers = backend_cls.commands()
        self._sequence = 0
        #: emitted, not yet framed: (kind, payload, time_ns); sequences are implicit,
        #: the last one is ``_sequence``
        self._unsent: list[tuple[str, bytes, int]] = []
        self._unsent_bytes = 0
        self._max_unsent = max(BATCH_EVENTS, int(backend_cls.max_unsent_events))
        self._max_unsent_bytes = max(BATCH_BYTES, int(backend_cls.max_unsent_bytes))
        #: flow control: events that may be sent on this connection in all (None: freely)
        self._through: int | None = None
        self._sent = 0  # events sent on this connection
        self._blocked = False  # unsent events wait for credit
        self._overrun = False  # events were dropped since the last frame sent
        self.overrun_events = 0  # dropped by overrun, in total
        self._room = asyncio.Event()  # set when the unsent buffer is at most half full
        self._unblocked = asyncio.Event()  # set when no unsent event waits for credit
        self._unblocked.set()
        self._flush_scheduled = False
        self._writer: asyncio.StreamWriter | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stopping = asyncio.Event()
        self._heartbeat_interval = 5.0
        # reattach: keep the newest events; count those lost while disconnected
        self._history: collections.deque[gateway_pb2.Event] | None = (
            collections.deque(maxlen=history) if history > 0 else None)
        self._orphan_lifetime = orphan_lifetime
        self._dropped = 0
        self._first_unsent = 0
        self.exit_code = 0

    def _set_max_frame(self, max_frame: int) -> None:
        """The largest frame either side accepts (the gateway's Welcome confirms it)."""
        self.max_frame = max_frame
        #: payload + 4 x kind characters up to this surely fit a one-event frame
        self._event_room = max_frame - EVENT_FRAME_OVERHEAD
        #: payload bytes per frame at most (a small max_frame makes frames smaller)
        self._batch_bytes = min(BATCH_BYTES, max_frame // 2)

    # -- events ------------------------------------------------------------------------

    def emit(self, kind: str, payload: Any = None) -> int:
        # The hot path: no protobuf work per event here, only at _flush (once per frame).
        if payload.__class__ is not bytes:
            payload = _encode_payload(payload)
        size = len(payload)
        if size + 4 * len(kind) > self._event_room:  # maybe too large: measure exactly
            self._check_event_size(kind, payload)
        self._sequence += 1
        unsent = self._unsent
        unsent.append((kind, payload, time.time_ns()))
        self._unsent_bytes += size
        if len(unsent) >= BATCH_EVENTS or self._unsent_bytes >= BATCH_BYTES:
            if not self._blocked:
                self._flush()
            if len(unsent) > self._max_unsent or self._unsent_bytes > self._max_unsent_bytes:
                self._drop_oldest()
        elif not self._flush_scheduled and not self._blocked:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)
        return self._sequence

    def _check_event_size(self, kind: str, payload: bytes) -> None:
        """Raise :class:`EventTooLarge` unless the event fits a frame on its own."""
        frame = worker_pb2.WorkerFrame()
        frame.events.overrun = True  # the largest it can be
        event = frame.events.events.add(sequence=self._sequence + 1, kind=kind,
                                        payload=payload)
        event.time.seconds, event.time.nanos = divmod(time.time_ns(), 1_000_000_000)
        frame_size = frame.ByteSize()
        if frame_size > self.max_frame:
            raise EventTooLarge(kind, len(payload), frame_size, self.max_frame)

    def _drop_oldest(self) -> None:
        """The buffer is over its bound: drop the oldest unsent events (WORKER_OVERRUN)."""
        unsent = self._unsent
        dropped = 0
        size = self._unsent_bytes
        while unsent[dropped:] and (len(unsent) - dropped > self._max_unsent
                                    or size > self._max_unsent_bytes):
            size -= len(unsent[dropped][1])
            dropped += 1
        del unsent[:dropped]
        self._unsent_bytes = size
        if not self._overrun:
            log.warning("worker %s: backend emitted past its unsent buffer (%d events, %d "
                        "bytes) without awaiting drain(); dropping the oldest",
                        self.session_id, self._max_unsent, self._max_unsent_bytes)
        self._overrun = True
        self.overrun_events += dropped

    def _flush(self) -> None:
        """Send what the credit allows, in frames of at most BATCH_EVENTS / BATCH_BYTES."""
        self._flush_scheduled = False
        unsent = self._unsent
        if not unsent:
            return
        writer = self._writer
        if writer is None or writer.is_closing():
            self._hold_while_disconnected()
            return
        while unsent:
            count = len(unsent)
            if self._through is not None:
                allowed = self._through - self._sent
                if allowed <= 0:
                    self._blocked = True
                    return
                count = min(count, allowed)
            count = min(count, BATCH_EVENTS)
            if count == len(unsent) and self._unsent_bytes <= self._batch_bytes:
                size = self._unsent_bytes
            else:
                count, size = _frame_cut(unsent, count, self._batch_bytes)
            frame = self._frame(unsent, count)
            data = frame.SerializeToString()
            if len(data) > self.max_frame:  # rare: long kinds, or a small max_frame
                count, frame, data = self._refit(unsent, frame)
                size = sum(len(item[1]) for item in unsent[:count])
            self._framed(frame)
            writer.write(protocol.HEADER.pack(len(data)) + data)
            self._sent += count
            del unsent[:count]
            self._unsent_bytes -= size
        self._blocked = False
        self._wake_drainers()

    def _refit(self, unsent: list[tuple[str, bytes, int]],
               frame: worker_pb2.WorkerFrame) -> tuple[int, worker_pb2.WorkerFrame, bytes]:
        """The longest run of ``frame``'s events that fits ``max_frame``, framed again.

        The first event always fits alone: emit() checked it against this limit, which
        changes only at a handshake, when nothing is unsent.
        """
        # the batch's tag and length and the overrun flag: at most 1 + 5 + 2 bytes
        count = max(1, _fitting(frame.events.events, self.max_frame - 8))
        frame = self._frame(unsent, count)
        return count, frame, frame.SerializeToString()

    def _frame(self, unsent: list[tuple[str, bytes, int]], count: int) -> worker_pb2.WorkerFrame:
        """The first ``count`` unsent events as a frame (see :meth:`_framed`)."""
        frame = worker_pb2.WorkerFrame()
        batch = frame.events
        if self._overrun:
            batch.overrun = True
        add = batch.events.add
        sequence = self._sequence - len(unsent) + 1
        for kind, payload, time_ns in unsent[:count] if count < len(unsent) else unsent:
            stamp = add(sequence=sequence, kind=kind, payload=payload).time
            stamp.seconds, stamp.nanos = divmod(time_ns, 1_000_000_000)
            sequence += 1
        return frame

    def _framed(self, frame: worker_pb2.WorkerFrame) -> None:
        """``frame`` is final: the overrun it announces is told, its events are history."""
        batch = frame.events
        if batch.overrun:
            self._overrun = False
        if self._history is not None:
            self._history.extend(batch.events)

    def _hold_while_disconnected(self) -> None:
        """No gateway: the events go to the history (reattach) or are counted as lost."""
        unsent = self._unsent
        frame = self._frame(unsent, len(unsent))
        self._framed(frame)
        if self._first_unsent == 0:
            self._first_unsent = frame.events.events[0].sequence
        self._dropped += len(unsent)
        unsent.clear()
        self._unsent_bytes = 0
        self._blocked = False
        self._wake_drainers()

    def _has_room(self) -> bool:
        return (len(self._unsent) * 2 <= self._max_unsent
                and self._unsent_bytes * 2 <= self._max_unsent_bytes)

    def _wake_drainers(self) -> None:
        if self._has_room():
            self._room.set()
        if not self._blocked:
            self._unblocked.set()

    def _set_credit(self, credit: worker_pb2.Credit) -> None:
        self._through = credit.through_count if credit.paced else None
        if self._blocked or self._through is None:
            self._flush()

    async def credit(self) -> None:
        self._flush()
        while self._blocked:
            self._unblocked.clear()
            await self._unblocked.wait()

    async def drain(self) -> None:
        self._flush()
        while not self._has_room():
            self._room.clear()
            await self._room.wait()
        writer = self._writer
        if writer is not None and not writer.is_closing():
            try:
                await writer.drain()
            except ConnectionError:
                pass

    def _send(self, frame: worker_pb2.WorkerFrame) -> None:
        self._flush()  # keep events and replies in the order they were produced
        if self._writer is not None and not self._writer.is_closing():
            self._writer.write(protocol.encode(frame))

    # -- lifecycle ---------------------------------------------------------------------

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self._stopping.set)
        started = False
        first = True
        deadline = None
        delay = 0.1
        while not self._stopping.is_set():
            try:
                reader, writer = await asyncio.open_unix_connection(self.socket_path)
            except OSError:
                if first and not self._orphan_lifetime:
                    log.error("worker %s: cannot connect to %s", self.session_id,
                              self.socket_path)
                    return 3
                reader = writer = None
            if writer is not None and reader is not None:
                try:
                    await self._handshake(reader, writer, adopt=not first)
                    if not started:
                        await self.backend.start()
                        started = True
                    self._send(worker_pb2.WorkerFrame(ready=worker_pb2.Ready()))
                    first = False
                    delay, deadline = 0.1, None
                    await self._serve(reader)
                except protocol.FrameError as exc:
                    log.error("worker %s: bad frame from the gateway (%s); disconnected",
                              self.session_id, exc)
                except (ConnectionError, asyncio.IncompleteReadError):
                    pass
                finally:
                    self._writer = None
                    writer.close()
                    self._flush()  # held-back events: to the history; drain() returns
            if self._stopping.is_set() or not self._orphan_lifetime:
                break
            # Orphaned: keep serving the backend, phone home with bounded backoff.
            now = loop.time()
            deadline = deadline or now + self._orphan_lifetime
            if now >= deadline:
                log.warning("worker %s: not adopted within %.0f s; exiting", self.session_id,
                            self._orphan_lifetime)
                break
            import random  # only orphans need it: kept off the session-open path

            pause = min(delay, deadline - now) * random.uniform(0.5, 1.0)
            delay = min(delay * 2, 5.0)
            try:
                await asyncio.wait_for(self._stopping.wait(), pause)
            except TimeoutError:
                pass
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if started:
            await self.backend.stop()
        return self.exit_code

    async def _handshake(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                         *, adopt: bool) -> None:
        if adopt:
            self._flush()
            hello = worker_pb2.WorkerFrame(adopt=worker_pb2.Adopt(
                protocol_version=protocol.PROTOCOL_VERSION, session_id=self.session_id,
                nonce=self._nonce, pid=os.getpid(), last_sequence=self._sequence,
                dropped_events=self._dropped, backend=self.backend_name))
        else:
            hello = worker_pb2.WorkerFrame(hello=worker_pb2.Hello(
                protocol_version=protocol.PROTOCOL_VERSION, session_id=self.session_id,
                nonce=self._nonce, pid=os.getpid(), backend=self.backend_name))
        writer.write(protocol.encode(hello))
        await writer.drain()
        frame = await protocol.read_frame(reader, self.max_frame)
        if frame.WhichOneof("body") != "welcome":
            raise protocol.MalformedFrame("expected welcome")
        self._heartbeat_interval = max(frame.welcome.heartbeat_interval_ms / 1000, 0.05)
        if frame.welcome.next_nonce:  # rotated at each adoption: the old one is spent
            self._nonce = frame.welcome.next_nonce
        if frame.welcome.max_frame_bytes:
            self._set_max_frame(frame.welcome.max_frame_bytes)
        credit = frame.welcome.credit
        self._through = credit.through_count if credit.paced else None
        self._sent = 0
        if adopt and self._history is not None:
            # Everything produced so far goes to the history (no writer yet), then the
            # history goes out, then the writer is live: no await in between, so the
            # gateway sees the retained events strictly before any newer one.
            self._flush()
            retained = self._sendable_history()
            # first_unsent, the frame's tag and length: at most 11 + 6 bytes
            budget = self.max_frame - 17
            while retained:
                count = _fitting(retained[:HISTORY_CHUNK], budget)
                history = worker_pb2.History(first_unsent=self._first_unsent)
                history.events.extend(retained[:count])
                del retained[:count]
                writer.write(protocol.encode(worker_pb2.WorkerFrame(history=history)))
        writer.transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        self._writer = writer
        self._dropped = 0
        self._first_unsent = 0

    def _sendable_history(self) -> list[gateway_pb2.Event]:
        """The retained events after the newest one too large for this gateway's frames
        (emitted under a higher workers.max_frame_bytes): a resume from before it
        gets a gap, as for events the history no longer holds."""
        assert self._history is not None
        retained = list(self._history)
        budget = self.max_frame - 17 - 6  # a History frame's fields; the event's tag, length
        for i in range(len(retained) - 1, -1, -1):
            if retained[i].ByteSize() > budget:
                log.warning("worker %s: retained event %d does not fit a frame of %d "
                            "bytes (%s); the history sent starts after it",
                            self.session_id, retained[i].sequence, self.max_frame,
                            MAX_FRAME_SETTING)
                return retained[i + 1:]
        return retained

    async def _serve(self, reader: asyncio.StreamReader) -> None:
        beat = asyncio.create_task(self._heartbeats())
        try:
            stop = asyncio.create_task(self._stopping.wait())
            while True:
                read = asyncio.ensure_future(protocol.read_frame(reader, self.max_frame))
                done, _ = await asyncio.wait({read, stop}, return_when=asyncio.FIRST_COMPLETED)
                if stop in done:
                    read.cancel()
                    return
                frame = read.result()
                kind = frame.WhichOneof("body")
                if kind == "command":
                    task = asyncio.create_task(self._run_command(frame.command))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
                elif kind == "credit":
                    self._set_credit(frame.credit)
                elif kind == "shutdown":
                    self._stopping.set()
                    return
                elif kind != "heartbeat":
                    raise protocol.MalformedFrame(f"unexpected {kind} frame")
        finally:
            beat.cancel()
            stop.cancel()

    async def _heartbeats(self) -> None:
        while True:
            await asyncio.sleep(self._heartbeat_interval)
            self._send(worker_pb2.WorkerFrame(heartbeat=worker_pb2.Heartbeat()))

    async def _run_command(self, cmd: worker_pb2.Command) -> None:
        frame = worker_pb2.WorkerFrame()
        reply = frame.reply
        reply.SetInParent()
        reply.request_id = cmd.request_id
        handler = self._handlers.get(cmd.command)
        if cmd.metadata:  # this task's own context: other commands keep theirs
            _command_metadata.set(types.MappingProxyType(dict(cmd.metadata)))
        try:
            if handler is None:
                raise CommandError(f"unknown command {cmd.command!r}")
            attr, raw = handler
            if raw:
                arg: Any = cmd.payload
            else:
                try:
                    arg = json.loads(cmd.payload) if cmd.payload else None
                except RecursionError:  # nested deeper than Python's recursion limit
                    raise CommandError("payload is not JSON this worker can read: "
                                       "nested too deeply") from None
                except ValueError as exc:
                    raise CommandError(f"payload is not JSON: {exc}") from None
            result = getattr(self.backend, attr)(arg)
            if inspect.isawaitable(result):
                result = await result
            reply.payload = _encode_payload({} if result is None else result)
        except CommandError as exc:
            reply.status = worker_pb2.REPLY_INVALID_ARGUMENT
            reply.error = str(exc)
        except EventTooLarge as exc:
            log.warning("worker %s: command %s failed: %s", self.session_id, cmd.command, exc)
            reply.status = worker_pb2.REPLY_TOO_LARGE
            reply.error = str(exc)
        except Exception:  # a handler bug fails that command, not the worker
            # The exception's text may hold anything (paths, hosts, a password in a DSN):
            # it goes to the log (the gateway's stderr), the client gets an id to quote.
            incident = secrets.token_hex(6)
            log.exception("worker %s: command %s failed (incident %s)", self.session_id,
                          cmd.command, incident)
            reply.status = worker_pb2.REPLY_FAILED
            reply.error = (f"the backend failed (incident {incident}; the details are in "
                           "the gateway's log)")
        frame_size = frame.ByteSize()
        if frame_size > self.max_frame:  # the command fails alone, the session goes on
            if reply.status == worker_pb2.REPLY_OK:
                error = _too_large("its reply", len(reply.payload), frame_size,
                                   self.max_frame)
                log.warning("worker %s: command %s failed: %s", self.session_id,
                            cmd.command, error)
                reply.Clear()
                reply.request_id, reply.status = cmd.request_id, worker_pb2.REPLY_TOO_LARGE
                reply.error = error
            else:  # a long error message: shortened (4 bytes a character at most)
                reply.error = reply.error[:self.max_frame // 8] + "…"
        self._send(frame)

    def stop(self) -> None:
        self._stopping.set()


def _load_backend(spec: str) -> type[Backend]:
    module, _, attr = spec.partition(":")
    cls = getattr(importlib.import_module(module), attr)
    if not (isinstance(cls, type) and issubclass(cls, Backend)):
        raise TypeError(f"{spec} is not a sessiongate.core.sdk.worker.Backend subclass")
    return cls


def main() -> int:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    env = os.environ
    try:
        options: dict[str, Any] = json.loads(env.get(protocol.OPTIONS_ENV) or "{}")
        spec = env[protocol.BACKEND_ENV]
        backend_cls = _load_backend(spec)  # the slow part, done before we are needed
    except (KeyError, ValueError, ImportError, AttributeError, TypeError) as exc:
        print(f"sessiongate worker: bad environment: {exc!r}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the gateway decides when we stop
    try:
        nonce = protocol.read_nonce(0)  # a spare waits here until its session opens
    except ValueError as exc:
        print(f"sessiongate worker: bad nonce on stdin: {exc}", file=sys.stderr)
        return 2
    if nonce is None:
        return 0  # a spare the gateway no longer needs (or the gateway is gone)
    try:
        runtime = WorkerRuntime(
            socket_path=env[protocol.SOCKET_ENV], session_id=env[protocol.SESSION_ENV],
            nonce=nonce, backend_cls=backend_cls,
            backend_name=options.get("backend_name", spec),
            max_frame=int(env.get(protocol.MAX_FRAME_ENV, 4 << 20)),
            history=int(options.get("history", 0)),
            orphan_lifetime=float(options.get("orphan_lifetime", 0)))
    except (KeyError, ValueError, TypeError) as exc:
        print(f"sessiongate worker: bad environment: {exc!r}", file=sys.stderr)
        return 2
    return asyncio.run(runtime.run())

