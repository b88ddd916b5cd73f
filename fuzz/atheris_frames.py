"""atheris (libFuzzer) target: the gateway reading whatever a worker sends.

Each input is the byte stream of one worker connection after its handshake. It is fed,
then end-of-file, to the gateway's own reader (``WorkerHandle``'s read loop, with the
frame decoder of ``sessiongate.core.protocol``) wired to a session's event pump and
distributor, as the session manager wires them; an internal subscriber then takes
everything that was published. A crash is any of:

* an exception out of the read loop (it must end every stream on its own);
* the session faulted for an internal error rather than a protocol one (a decoder or
  pump bug that the read loop's last-resort handler caught);
* a session whose public view no longer encodes (a number outside its wire type);
* events handed to the subscriber out of order, or a gap that does not encode.

Outside CI (it needs the ``fuzz`` extra: ``pip install -e '.[fuzz]'``)::

    python fuzz/atheris_frames.py -atheris_runs=100000

Given no corpus folder, it starts from a fresh one seeded with valid frame streams (its
path is printed; libFuzzer adds what it finds there). Any libFuzzer flag works
(``-max_len=4096``, ``-jobs=2``, a corpus folder of your own). See docs/fuzzing.md.
"""

from __future__ import annotations

import asyncio
import logging
import pathlib
import sys
import tempfile
from types import SimpleNamespace

import atheris

with atheris.instrument_imports():
    from sessiongate.core import protocol
    from sessiongate.core.errors import GatewayError
    from sessiongate.core.sessions.session import Session
    from sessiongate.core.streaming.events import INTERNAL, Distributor, Subscription
    from sessiongate.core.workers.handle import WorkerConfig, WorkerHandle
    from sessiongate.v1 import worker_pb2

MAX_FRAME = 4096  # small, so that the fuzzer meets the size limit often
SETTINGS = SimpleNamespace(  # what WorkerConfig reads, at their shipped defaults
    workers=SimpleNamespace(python="", start_timeout_seconds=10, stop_timeout_seconds=5,
                            max_frame_bytes=MAX_FRAME, heartbeat_interval_seconds=5,
                            heartbeat_timeout_seconds=20),
    sessions=SimpleNamespace(max_pending_commands=128, command_timeout_seconds=30))
CONFIG = WorkerConfig(SETTINGS)
LOOP = asyncio.new_event_loop()
UINT64_MAX = 2**64 - 1


async def read_connection(data: bytes) -> None:
    session = Session(session_id="f" * 32, owner_key_id="k", client_name="fuzz",
                      backend="sim", tag="", lease_seconds=60,
                      on_state=lambda *change: None)
    session.distributor = Distributor(
        session_id=session.session_id, capacity=100_000, policy="fail_fast",
        fault_session=session.fault, on_release=lambda sub, reason: None)
    sub = session.subscribe(Subscription(kind=INTERNAL, external=False))
    faults: list[str] = []
    handle = WorkerHandle(session_id=session.session_id, socket_path="/nonexistent/fuzz",
                          config=CONFIG, on_events=session.on_events,
                          on_fault=lambda reason: (faults.append(reason), session.fault(reason)))
    reader = asyncio.StreamReader(loop=LOOP)
    reader.feed_data(data)
    reader.feed_eof()
    await handle._read_loop(reader)  # the gateway's reader itself, on this stream

    assert len(faults) == 1, faults  # every stream ends, and faults its session once
    assert not faults[0].startswith("internal error"), faults[0]
    session.info().SerializeToString()
    session.end_streams()
    previous = 0
    while True:
        try:
            item = await sub.next(1024)
        except GatewayError:
            break
        if item is None:
            break
        gap, events = item
        if gap is not None:
            gap.to_proto().SerializeToString()
        for event in events:
            assert previous < event.sequence <= UINT64_MAX, (previous, event.sequence)
            previous = event.sequence


def test_one_input(data: bytes) -> None:
    LOOP.run_until_complete(read_connection(data))


def _events(*sequences: int, overrun: bool = False) -> worker_pb2.WorkerFrame:
    frame = worker_pb2.WorkerFrame()
    frame.events.overrun = overrun
    for seq in sequences:
        frame.events.events.add(sequence=seq, kind="data_change", payload=b'{"v": 1}')
    return frame


def seeds() -> list[bytes]:
    """Streams a worker could send: well-formed ones, and each way one goes wrong."""
    frame = worker_pb2.WorkerFrame
    streams = [
        [_events(1, 2, 3)],
        [_events(1), frame(heartbeat=worker_pb2.Heartbeat()), _events(2, 3)],
        [_events(1), _events(5, 6, overrun=True)],  # a hole, announced
        [_events(2, 1)],  # a step back: a protocol error
        [frame(reply=worker_pb2.Reply(request_id=1, payload=b"{}"))],
        [frame(ready=worker_pb2.Ready()), _events(1)],
        [frame(history=worker_pb2.History(first_unsent=1))],
        [frame(command=worker_pb2.Command(request_id=1, command="x"))],  # not a worker's
        [frame(hello=worker_pb2.Hello(protocol_version=protocol.PROTOCOL_VERSION))],
    ]
    out = [b"".join(map(protocol.encode, stream)) for stream in streams]
    # events left encoded, as the pump sees them: the second at sequence 2**64 - 1
    raw = worker_pb2.RawEventFrame(events=worker_pb2.RawEventBatch(
        events=[b"\x08\x01", b"\x08" + b"\xff" * 9 + b"\x01"]))
    body = raw.SerializeToString()
    out.append(protocol.HEADER.pack(len(body)) + body)
    out.append(protocol.HEADER.pack(MAX_FRAME + 1))  # over the limit
    out.append(protocol.HEADER.pack(5) + b"\xff" * 5)  # not protobuf
    return out


def main() -> None:
    logging.disable(logging.CRITICAL)  # the gateway logs every refusal; the fuzzer need not
    argv = list(sys.argv)
    if not any(not arg.startswith("-") for arg in argv[1:]):  # no corpus folder given
        corpus = pathlib.Path(tempfile.mkdtemp(prefix="sg-frames-corpus-"))
        for i, seed in enumerate(seeds()):
            (corpus / f"seed-{i:02d}").write_bytes(seed)
        print(f"corpus: {corpus} (seeded with {len(seeds())} frame streams)", flush=True)
        argv.append(str(corpus))
    atheris.Setup(argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
