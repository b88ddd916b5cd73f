"""Helpers shared by core's tests (imported relatively: ``from .helpers import ...``)."""

from __future__ import annotations

import asyncio
from typing import Any

from sessiongate.core import hookimpl
from sessiongate.testing import wait_for


def stall_settings(policy: str) -> dict[str, Any]:
    """Gateway settings under which a subscriber that reads nothing stalls its worker
    and is dealt with by ``policy`` after half a second; with no replay ring, nothing
    absorbs the events it does not read."""
    return {
        "events.stall_timeout_seconds": 0.5,
        "events.backpressure_policy": policy,
        "plugins.fanout.replay_buffer_capacity": 0,
    }


async def command_in_flight(client: Any, session: Any,
                            **invoke_options: Any) -> asyncio.Future[Any]:
    """Invoke a 60 s ``sleep`` on ``session`` and return once its worker has it: a command
    in flight, for a test to see how whatever ends the session ends it too."""
    sleeping = asyncio.ensure_future(
        client.invoke(session.session_id, "sleep", b'{"ms": 60000}', **invoke_options))
    await wait_for(lambda: len(session.worker._pending) == 1)
    return sleeping


# A stand-in worker: the real handshake (nonce from stdin, like a real worker), replies to
# "echo", and misbehaves in the given mode on any other command.
_FAKE_WORKER = r"""
import os, socket, struct, sys
from sessiongate.core import protocol
from sessiongate.v1 import gateway_pb2, worker_pb2

mode = sys.argv[1]
env = os.environ
nonce = protocol.read_nonce(0)  # from stdin, when the gateway needs us, like a real worker
sock = socket.socket(socket.AF_UNIX)
sock.connect(env[protocol.SOCKET_ENV])

def send(frame):
    sock.sendall(protocol.encode(frame))

def recv():
    def exactly(n):
        data = b""
        while len(data) < n:
            chunk = sock.recv(n - len(data))
            if not chunk:
                sys.exit(0)
            data += chunk
        return data
    (size,) = struct.unpack(">I", exactly(4))
    frame = worker_pb2.WorkerFrame()
    frame.ParseFromString(exactly(size))
    return frame

send(worker_pb2.WorkerFrame(hello=worker_pb2.Hello(
    protocol_version=protocol.PROTOCOL_VERSION, session_id=env[protocol.SESSION_ENV],
    nonce=nonce, pid=os.getpid(), backend="fake")))
assert recv().WhichOneof("body") == "welcome"
send(worker_pb2.WorkerFrame(ready=worker_pb2.Ready()))
while True:
    frame = recv()
    if frame.WhichOneof("body") != "command":
        continue
    if frame.command.command == "echo":
        send(worker_pb2.WorkerFrame(reply=worker_pb2.Reply(
            request_id=frame.command.request_id, payload=frame.command.payload)))
        continue
    if mode == "malformed":
        sock.sendall(struct.pack(">I", 5) + b"\xff\xff\xff\xff\xff")
    elif mode == "sequence":
        events = worker_pb2.WorkerFrame()
        events.events.events.add(sequence=1, kind="k")
        events.events.events.add(sequence=1, kind="k")
        send(events)
    elif mode == "unexpected":
        send(worker_pb2.WorkerFrame(command=worker_pb2.Command(request_id=1, command="x")))
    elif mode == "oversized":  # announces a frame one byte over the limit
        sock.sendall(struct.pack(">I", int(env[protocol.MAX_FRAME_ENV]) + 1))
    recv()  # until the gateway hangs up
"""

#: what :class:`FakeWorkers` can make its worker do on a command other than "echo"
FAKE_WORKER_MODES = ("malformed", "sequence", "unexpected", "oversized")


class FakeWorkers:
    """A plugin that replaces the worker program by a stand-in misbehaving in ``mode``:
    one that does not use the SDK, so the gateway's own checks are what is tested."""

    __name__ = "fake-workers"

    def __init__(self, mode: str) -> None:
        if mode not in FAKE_WORKER_MODES:
            raise ValueError(f"mode must be one of {FAKE_WORKER_MODES}, not {mode!r}")
        self.mode = mode

    @hookimpl
    def sg_worker_launch(self, session: Any, argv: list[str], env: dict[str, str]) -> None:
        argv[1:] = ["-c", _FAKE_WORKER, self.mode]
