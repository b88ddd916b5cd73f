"""Fuzz of how the gateway decodes what a worker sends: whatever the bytes, the decoder
raises nothing but :class:`~sessiongate.core.protocol.FrameError` (or the stream's own
end-of-file), never waits on a length it will refuse, and a session whose worker sends
garbage is faulted alone, with a protocol reason, never by an internal error.

Inputs are arbitrary bytes and valid frame streams mutated (bytes flipped, inserted,
deleted, the stream cut, a length prefix rewritten), with event sequences that jump,
repeat, step back, sit at the uint64 limit or are encoded longer than protobuf allows.
The session-level test drives the real path: a :class:`WorkerHandle` listening on its
Unix socket, a connection that passes the nonce handshake, the session's event pump and
distributor, and a subscriber reading what was published. Hypothesis prints the seed and
the shrunk input of any failure.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pathlib
import secrets
from typing import Any

import pytest
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from sessiongate.core import protocol
from sessiongate.core.config.settings import load_settings
from sessiongate.core.errors import GatewayError
from sessiongate.core.sessions.session import Session, SessionState
from sessiongate.core.streaming.events import Distributor, Subscription
from sessiongate.core.workers.handle import WorkerConfig, WorkerHandle, nonce_digest
from sessiongate.v1 import gateway_pb2, worker_pb2

pytestmark = pytest.mark.once

MAX_FRAME = 4096  # small, so that oversized length prefixes are common
U64 = 2**64 - 1
ENDED = 30  # seconds a session waits for its fault before the test fails (never reached)
#: examples per test: a CI-sized run; SG_FUZZ_EXAMPLES=N for a longer one (docs/fuzzing.md)
FUZZ = settings(max_examples=int(os.environ.get("SG_FUZZ_EXAMPLES", 150)), deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])

# -- strategies ------------------------------------------------------------------------

TEXT = st.text(max_size=24)
SEQUENCE = st.one_of(st.integers(0, 8), st.integers(0, U64),
                     st.sampled_from([U64 - 1, U64, 2**63, 2**32]))


def _contiguous(start_and_count: tuple[int, int]) -> list[int]:
    start, count = start_and_count
    return list(range(start, start + count))


SEQUENCES = st.one_of(
    st.tuples(st.just(1), st.integers(1, 6)).map(_contiguous),  # what a good worker sends
    st.tuples(st.integers(1, 20), st.integers(1, 6)).map(_contiguous),  # a jump first
    st.lists(SEQUENCE, min_size=1, max_size=6),  # anything
)

EVENT_BODY = st.one_of(
    # a well-formed Event
    st.builds(lambda seq, kind, payload: gateway_pb2.Event(
        sequence=seq, kind=kind, payload=payload).SerializeToString(),
        SEQUENCE, TEXT, st.binary(max_size=32)),
    # field 1 written with a varint longer than uint64 (10 bytes, high bits set)
    st.binary(min_size=10, max_size=10).map(lambda tail: b"\x08" + tail),
    # anything
    st.binary(max_size=40),
)


def _events_frame(sequences: list[int], overrun: bool) -> worker_pb2.WorkerFrame:
    frame = worker_pb2.WorkerFrame()
    frame.events.overrun = overrun
    for seq in sequences:
        frame.events.events.add(sequence=seq, kind="k", payload=b"{}")
    return frame


def _raw_events(bodies: list[bytes], overrun: bool) -> bytes:
    """An events frame whose Event bodies are given as bytes (may be no Event at all)."""
    return worker_pb2.RawEventFrame(events=worker_pb2.RawEventBatch(
        events=bodies, overrun=overrun)).SerializeToString()


FRAME = st.one_of(
    st.builds(_events_frame, SEQUENCES, st.booleans()).map(
        lambda f: f.SerializeToString()),
    st.builds(_raw_events, st.lists(EVENT_BODY, max_size=4), st.booleans()),
    st.builds(lambda rid, status, payload, error: worker_pb2.WorkerFrame(
        reply=worker_pb2.Reply(request_id=rid, status=status, payload=payload,
                               error=error)).SerializeToString(),
        st.integers(0, U64), st.integers(-(2**31), 2**31 - 1), st.binary(max_size=32), TEXT),
    st.sampled_from([
        worker_pb2.WorkerFrame(heartbeat=worker_pb2.Heartbeat()),
        worker_pb2.WorkerFrame(ready=worker_pb2.Ready()),
        # kinds a worker never sends once connected
        worker_pb2.WorkerFrame(hello=worker_pb2.Hello(protocol_version=2, pid=1)),
        worker_pb2.WorkerFrame(adopt=worker_pb2.Adopt(last_sequence=U64)),
        worker_pb2.WorkerFrame(welcome=worker_pb2.Welcome()),
        worker_pb2.WorkerFrame(command=worker_pb2.Command(command="x")),
        worker_pb2.WorkerFrame(shutdown=worker_pb2.Shutdown(reason="x")),
        worker_pb2.WorkerFrame(credit=worker_pb2.Credit(paced=True, through_count=U64)),
        worker_pb2.WorkerFrame(history=worker_pb2.History(first_unsent=3)),
        worker_pb2.WorkerFrame(),  # no body
    ]).map(lambda f: f.SerializeToString()),
    st.binary(max_size=64),
)


def _framed(bodies: list[bytes]) -> bytes:
    return b"".join(protocol.HEADER.pack(len(body)) + body for body in bodies)


MUTATION = st.tuples(st.sampled_from(["flip", "insert", "delete", "cut", "prefix"]),
                     st.integers(0, 1 << 16), st.binary(min_size=1, max_size=8),
                     st.integers(0, 2**32 - 1))


def _mutate(data: bytes, mutations: list[tuple[str, int, bytes, int]]) -> bytes:
    out = bytearray(data)
    for op, index, blob, number in mutations:
        at = index % (len(out) + 1)
        if op == "flip" and out:
            out[at % len(out)] ^= blob[0] or 0xFF
        elif op == "insert":
            out[at:at] = blob
        elif op == "delete":
            del out[at:at + len(blob)]
        elif op == "cut":
            del out[at:]
        elif op == "prefix":  # a length prefix anywhere, any value (often > MAX_FRAME)
            out[at:at] = protocol.HEADER.pack(number)
    return bytes(out)


#: what a worker may put on its connection after the handshake
STREAM = st.one_of(
    st.binary(max_size=256),
    st.lists(FRAME, max_size=6).map(_framed),
    st.tuples(st.lists(FRAME, min_size=1, max_size=6).map(_framed),
              st.lists(MUTATION, min_size=1, max_size=4)).map(lambda t: _mutate(*t)),
)

# -- the decoder on its own --------------------------------------------------------------


@FUZZ
@given(st.one_of(st.binary(max_size=256), FRAME))
def test_a_frame_body_decodes_or_is_refused_as_malformed(data):
    try:
        frame = protocol.parse_frame(data)
    except protocol.MalformedFrame as exc:
        assert f"({len(data)} bytes)" in str(exc)
    else:
        assert frame.WhichOneof("body") is not None
    try:
        bodies, overrun = protocol.parse_raw_events(data)
    except protocol.MalformedFrame:
        pass
    else:
        assert isinstance(overrun, bool)
        for body in bodies:
            assert 0 <= protocol.sequence_of(body) <= U64


@FUZZ
@given(EVENT_BODY)
@example(b"\x08" + b"\xff" * 9 + b"\x7f")  # 70 bits written: protobuf keeps the low 64
def test_an_event_sequence_is_read_as_protobuf_reads_it(body):
    """The pump reads an event's sequence without decoding it; what it reads must be what
    a subscriber decoding the same bytes gets (or 0 when the field is not first)."""
    seq = protocol.sequence_of(body)
    assert 0 <= seq <= U64
    try:
        event = gateway_pb2.Event.FromString(body)
    except DecodeError:  # not an Event: the pump only needs a number that fits
        return
    if body[:1] == b"\x08":
        assert seq == event.sequence


def _read_all(data: bytes, *, eof: bool) -> tuple[int, BaseException | None]:
    """Read frames from a stream holding ``data`` the way the gateway's reader does:
    ``(frames read, what ended it)``. Raises AssertionError if it waits for more bytes
    while ``eof`` says none will come, or waits on a frame it would refuse."""

    async def run() -> tuple[int, BaseException | None]:
        reader = asyncio.StreamReader()
        reader.feed_data(data)
        if eof:
            reader.feed_eof()
        frames = 0
        while True:
            # Every byte it may read is already buffered: a read either completes or
            # ends at once, or it waits; stepping the coroutine by hand tells which.
            step = protocol.read_frame(reader, MAX_FRAME).__await__()
            try:
                step.send(None)
            except StopIteration:
                frames += 1
                continue
            except (protocol.FrameError, asyncio.IncompleteReadError) as exc:
                return frames, exc
            step.close()
            assert not eof, "the reader waits for bytes after the end of the stream"
            return frames, None

    return asyncio.run(run())


@FUZZ
@given(STREAM)
def test_a_stream_of_bytes_ends_in_a_frame_error_or_eof_and_never_hangs(data):
    frames, ended = _read_all(data, eof=True)
    assert isinstance(ended, protocol.FrameError | asyncio.IncompleteReadError), ended
    assert frames <= len(data) // protocol.HEADER.size


@FUZZ
@given(st.integers(MAX_FRAME + 1, 2**32 - 1), st.binary(max_size=16))
def test_an_oversized_length_is_refused_before_its_body_is_read(size, body_start):
    """The stream stays open and holds fewer bytes than announced: the refusal must come
    from the length alone, not after waiting for (and buffering) the body."""
    frames, ended = _read_all(protocol.HEADER.pack(size) + body_start, eof=False)
    assert frames == 0
    assert isinstance(ended, protocol.FrameTooLarge), ended
    assert f"frame of {size} bytes exceeds the limit of {MAX_FRAME} bytes" in str(ended)


# -- a session reading a worker connection ---------------------------------------------


class Pipeline:
    """A session as the manager wires it: a :class:`WorkerHandle` listening on its Unix
    socket, the session's pump and distributor, and one subscriber reading everything."""

    def __init__(self, folder: pathlib.Path, name: str, config: WorkerConfig) -> None:
        self.faulted = asyncio.Event()
        self.session = Session(session_id=secrets.token_hex(16), owner_key_id="k",
                               client_name=name, backend="sim", tag="", lease_seconds=60,
                               on_state=self._on_state)
        self.session.distributor = Distributor(
            session_id=self.session.session_id, capacity=10_000, policy="fail_fast",
            fault_session=self.session.fault, on_release=lambda sub, reason: None,
            grant=self.session.grant)
        self.handle = WorkerHandle(
            session_id=self.session.session_id, socket_path=str(folder / f"{name}.sock"),
            config=config, on_events=self.session.on_events, on_fault=self.session.fault)
        self.session.worker = self.handle
        self.nonce = secrets.token_bytes(32)
        self.sub = self.session.subscribe(Subscription(subscriber_id=name))
        self.received: list[int] = []
        self.gaps: list[Any] = []
        self.delivered = asyncio.Event()  # the subscriber took something
        self.ended_with: GatewayError | None = None

    def _on_state(self, session: Session, old: str, new: str, reason: str) -> None:
        if new == SessionState.FAULTED:
            self.faulted.set()

    async def read_subscription(self) -> None:
        """What a StreamEvents call would send, checked as it is taken."""
        try:
            while (item := await self.sub.next(64)) is not None:
                gap, events = item
                if gap is not None:
                    self.gaps.append(gap.to_proto())  # fits the wire types
                self.received.extend(e.sequence for e in events)
                self.delivered.set()
        except GatewayError as exc:
            self.ended_with = exc
        finally:
            self.delivered.set()  # ended, maybe by a bug: awaiting the task tells

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """Be its worker: pass the handshake (nonce, pid, session) and say Ready."""
        await self.handle.listen(nonce_digest(self.nonce))
        reader, writer = await asyncio.open_unix_connection(self.handle.socket_path)
        writer.write(protocol.encode(worker_pb2.WorkerFrame(hello=worker_pb2.Hello(
            protocol_version=protocol.PROTOCOL_VERSION, session_id=self.session.session_id,
            nonce=self.nonce, pid=os.getpid(), backend="fuzz"))))
        welcome = await protocol.read_frame(reader, MAX_FRAME)
        assert welcome.WhichOneof("body") == "welcome"
        writer.write(protocol.encode(worker_pb2.WorkerFrame(ready=worker_pb2.Ready())))
        await self.handle.wait_ready(ENDED)
        self.session.transition(SessionState.READY)
        return reader, writer


def _worker_config() -> WorkerConfig:
    config = WorkerConfig(load_settings())
    config.max_frame = MAX_FRAME
    return config


PROTOCOL_REASONS = ("frame of ", "malformed ", "frame (", "unexpected ",
                    "protocol error: event sequence ", "worker connection closed")


async def _feed_one_session(folder: pathlib.Path, data: bytes) -> tuple[Pipeline, Pipeline]:
    config = _worker_config()
    fuzzed, bystander = Pipeline(folder, "fuzzed", config), Pipeline(folder, "bystander", config)
    readers = [asyncio.create_task(p.read_subscription()) for p in (fuzzed, bystander)]
    _, writer = await fuzzed.connect()
    _, other_writer = await bystander.connect()
    try:
        writer.write(data)
        writer.write_eof()
        await writer.drain()
    except ConnectionError:
        pass  # the gateway hung up first: it refused something
    async with asyncio.timeout(ENDED):
        await fuzzed.faulted.wait()
        # the other session still takes its worker's events
        other_writer.write(protocol.encode(_events_frame([1], False)))
        await bystander.delivered.wait()
    for pipeline in (fuzzed, bystander):
        await pipeline.handle.stop("test over")
        pipeline.session.end_streams()
    await asyncio.gather(*readers)
    writer.close()
    other_writer.close()
    return fuzzed, bystander


@FUZZ
@given(STREAM)
def test_a_worker_sending_anything_faults_its_session_alone(short_tmp, caplog, data):
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="sessiongate"):
        fuzzed, bystander = asyncio.run(_feed_one_session(short_tmp, data))
    session = fuzzed.session
    assert session.state == SessionState.FAULTED
    assert session.reason.startswith(PROTOCOL_REASONS), session.reason
    assert not [r for r in caplog.records if r.exc_info], "an internal error was logged"
    # its public view is still well-formed (every number fits its wire type)
    session.info().SerializeToString()
    # the subscriber saw strictly increasing sequences, then the fault
    assert all(a < b for a, b in zip(fuzzed.received, fuzzed.received[1:], strict=False))
    assert fuzzed.ended_with is not None and fuzzed.ended_with.code == "UNAVAILABLE"
    assert bystander.received == [1] and bystander.session.state == SessionState.READY


@pytest.mark.asyncio
async def test_an_overlong_sequence_varint_leaves_the_session_readable(short_tmp):
    """Regression: a 10-byte varint carries 70 bits; the pump read all of them, so the
    session's last_sequence left uint64 and every GetSession/ListSessions that showed
    the session failed INTERNAL (the protobuf encoder refused the number)."""
    body = b"\x08" + b"\xff" * 9 + b"\x7f"  # protobuf reads 2**64 - 1
    pipeline = Pipeline(short_tmp, "overlong", _worker_config())
    _, writer = await pipeline.connect()
    writer.write(_framed([_raw_events([body], False)]))
    reading = asyncio.create_task(pipeline.read_subscription())
    async with asyncio.timeout(ENDED):
        await pipeline.delivered.wait()
    try:
        shown = pipeline.session.info().SerializeToString()
    finally:
        await pipeline.handle.stop("test over")
        pipeline.session.end_streams()
        writer.close()
    await reading  # raises what the subscriber met, if anything
    assert gateway_pb2.SessionInfo.FromString(shown).last_sequence == U64
    assert pipeline.received == [U64]
    assert [(g.requested_after, g.oldest_available) for g in pipeline.gaps] == [(0, U64)]
