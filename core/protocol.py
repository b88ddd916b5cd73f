"""Framing of the gateway <-> worker IPC: a 4-byte big-endian length, then one
``WorkerFrame`` (``proto/sessiongate/v1/worker.proto``).

Shared by the gateway and the worker SDK, so it imports only protobuf.
"""

from __future__ import annotations

import asyncio
import os
import struct

from google.protobuf.message import DecodeError

from sessiongate.v1 import worker_pb2

__all__ = [
    "BACKEND_ENV",
    "MAX_FRAME_ENV",
    "OPTIONS_ENV",
    "PROTOCOL_VERSION",
    "SESSION_ENV",
    "SOCKET_ENV",
    "FrameError",
    "FrameTooLarge",
    "MalformedFrame",
    "credit",
    "encode",
    "parse_frame",
    "parse_raw_events",
    "read_frame",
    "read_frame_bytes",
    "read_nonce",
    "sequence_of",
]

PROTOCOL_VERSION = 2  # 2: event credit (Credit, Welcome.credit, EventBatch.overrun)
HEADER = struct.Struct(">I")

# Environment of a worker process. The nonce is NOT among them: the environment and
# argv are readable by the same user in /proc; it comes on the worker's stdin instead.
SOCKET_ENV = "SESSIONGATE_WORKER_SOCKET"
SESSION_ENV = "SESSIONGATE_WORKER_SESSION"
BACKEND_ENV = "SESSIONGATE_WORKER_BACKEND"
MAX_FRAME_ENV = "SESSIONGATE_WORKER_MAX_FRAME"
OPTIONS_ENV = "SESSIONGATE_WORKER_OPTIONS"


def read_nonce(fd: int = 0) -> bytes | None:
    """The worker's nonce, one hex line on its stdin, written by the gateway when it
    needs the worker (a spare waits here). ``None`` at EOF: not needed, exit."""
    line = b""
    while not line.endswith(b"\n"):
        chunk = os.read(fd, 128)
        if not chunk:
            return None
        line += chunk
        if len(line) > 1024:
            raise ValueError("the nonce line is too long")
    return bytes.fromhex(line.strip().decode("ascii"))


class FrameError(Exception):
    """The peer sent something that is not a valid frame; the connection is unusable."""


class FrameTooLarge(FrameError):
    pass


class MalformedFrame(FrameError):
    pass


def credit(through_count: int | None) -> worker_pb2.Credit:
    """The event credit: ``through_count`` events on this connection in all (``None``:
    send freely)."""
    if through_count is None:
        return worker_pb2.Credit(paced=False)
    return worker_pb2.Credit(paced=True, through_count=through_count)


def encode(frame: worker_pb2.WorkerFrame) -> bytes:
    data = frame.SerializeToString()
    return HEADER.pack(len(data)) + data


async def read_frame(reader: asyncio.StreamReader, max_bytes: int) -> worker_pb2.WorkerFrame:
    """Read one frame; ``asyncio.IncompleteReadError`` at a clean EOF."""
    return parse_frame(await read_frame_bytes(reader, max_bytes))


async def read_frame_bytes(reader: asyncio.StreamReader, max_bytes: int) -> bytes:
    """One frame's bytes, unparsed; ``asyncio.IncompleteReadError`` at EOF."""
    header = await reader.readexactly(HEADER.size)
    (size,) = HEADER.unpack(header)
    if size > max_bytes:
        raise FrameTooLarge(f"frame of {size} bytes exceeds the limit of {max_bytes} bytes")
    return await reader.readexactly(size)


#: the first byte of a frame whose body is ``events`` (field 6, length-delimited)
EVENTS_TAG = 0x32


def parse_frame(data: bytes) -> worker_pb2.WorkerFrame:
    frame = worker_pb2.WorkerFrame()
    try:
        frame.ParseFromString(data)
    except DecodeError as exc:
        raise MalformedFrame(f"malformed frame ({len(data)} bytes): {exc}") from None
    if frame.WhichOneof("body") is None:
        raise MalformedFrame(f"frame ({len(data)} bytes) carries no known message")
    return frame


def parse_raw_events(data: bytes) -> tuple[list[bytes], bool]:
    """An events frame with every Event left encoded: ``(bodies, overrun)``.

    Only the envelope is decoded; each event's sequence is read by the caller
    (:func:`sequence_of`). The bodies are checked when a subscriber decodes them.
    """
    raw = worker_pb2.RawEventFrame()
    try:
        raw.ParseFromString(data)
    except DecodeError as exc:
        raise MalformedFrame(f"malformed events frame ({len(data)} bytes): {exc}") from None
    return list(raw.events.events), raw.events.overrun


UINT64_MASK = (1 << 64) - 1


def sequence_of(body: bytes) -> int:
    """An encoded Event's sequence (field 1, written first); 0 when it is not there.

    Read as protobuf reads it: a 10-byte varint may carry 70 bits, of which only the
    low 64 count, so the number always fits a uint64 (as the subscriber decoding the
    same bytes sees it).
    """
    if not body or body[0] != 0x08:
        return 0
    value = shift = 0
    for byte in body[1:11]:
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value & UINT64_MASK
        shift += 7
    return 0
