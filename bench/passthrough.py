"""Pass-through micro-benchmark: re-serializing a worker's events vs slicing its bytes.

Today the gateway parses each worker frame (``WorkerFrame`` -> ``EventBatch`` ->
``Event`` messages), reads the sequences, and ``to_wire`` (``core/events.py``)
serializes every event again as field 1 of ``StreamEventsResponse``; a response is a
join of those. ``EventBatch.events`` and ``StreamEventsResponse.events`` are both
field 1 of type ``Event``, so each entry of the worker's ``EventBatch`` - key,
length, body - is already, byte for byte, what the response needs.

This measures, per event, for batches of 1024 events of 100 B as the worker SDK
frames them (``core/worker.py`` ``_frame``), each path from the frame's bytes to a
serialized one-batch response, with the sequences the gateway needs:

* ``current``: what the gateway does (parse, ``list(batch.events)``, the sequences
  and their contiguity check, ``to_wire``, ``encode_response``), and its steps alone;
* ``slice``: a Python walk of the frame's bytes: each field-1 entry of the
  ``EventBatch`` sliced out whole, its sequence read from the body (field 1, first
  as protobuf writes it), the slices joined;
* ``raw``: the frame parsed by protobuf (upb, C) as a wire-compatible stand-in whose
  ``EventBatch`` says ``repeated bytes events = 1``: the bodies come out as bytes,
  unparsed; key and length are put back in front (the prefix table ``to_wire``
  uses), the sequences read from the bodies in Python;
* ``... first/last``: the same without reading every sequence, only the first and
  the last one (with the count, that is the contiguity check when the worker's
  sequences are known to increase; the gateway's check today reads them all).

Every variant's response is checked to be byte-identical to the current path's.
Nothing in core is changed; the stand-in message types are built here at run time.

    python bench/passthrough.py [--batch 1024] [--size 100] [--runs 7] [--frames 200]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from sessiongate.core.streaming.events import _EVENT_PREFIX, encode_response, to_wire
from sessiongate.v1 import gateway_pb2, worker_pb2


def make_frame(count: int, size: int, first: int) -> bytes:
    """A ``WorkerFrame`` with one ``EventBatch`` as the worker SDK builds it."""
    frame = worker_pb2.WorkerFrame()
    add = frame.events.events.add
    now = time.time_ns()
    for i in range(count):
        stamp = add(sequence=first + i, kind="burst", payload=b"x" * size).time
        stamp.seconds, stamp.nanos = divmod(now + i * 1000, 1_000_000_000)
    return frame.SerializeToString()


def raw_frame_class() -> Any:
    """``RawFrame { RawBatch events = 6; }``, ``RawBatch { repeated bytes events = 1;
    bool overrun = 2; }``: wire-compatible with ``WorkerFrame``'s events body."""
    fdp = descriptor_pb2.FileDescriptorProto(name="bench_passthrough.proto",
                                             package="benchpt", syntax="proto3")
    field = descriptor_pb2.FieldDescriptorProto
    batch = fdp.message_type.add(name="RawBatch")
    batch.field.add(name="events", number=1, type=field.TYPE_BYTES, label=field.LABEL_REPEATED)
    batch.field.add(name="overrun", number=2, type=field.TYPE_BOOL, label=field.LABEL_OPTIONAL)
    frame = fdp.message_type.add(name="RawFrame")
    frame.field.add(name="events", number=6, type=field.TYPE_MESSAGE,
                    type_name=".benchpt.RawBatch", label=field.LABEL_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("benchpt.RawFrame"))


class NotContiguous(Exception):
    pass


# -- the current path -------------------------------------------------------------------


def parse(data: bytes) -> tuple[list[Any], bool]:
    frame = worker_pb2.WorkerFrame()
    frame.ParseFromString(data)  # core/protocol.py read_sized_frame
    if frame.WhichOneof("body") != "events":
        raise ValueError("not an events frame")
    batch = frame.events
    return list(batch.events), batch.overrun  # core/workers.py _read_loop


def sequences_of(events: list[Any]) -> list[int]:
    sequences = [e.sequence for e in events]  # core/session.py on_events
    expected = sequences[0]
    if sequences != list(range(expected, expected + len(sequences))):
        raise NotContiguous
    return sequences


def current(data: bytes) -> bytes:
    events, _overrun = parse(data)
    sequences = sequences_of(events)
    return encode_response(to_wire(events, sequences))


# -- slicing the worker's bytes ---------------------------------------------------------


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        b = data[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7


def _sequence(body: bytes, start: int) -> int:
    """The sequence of the ``Event`` whose body starts at ``start`` (field 1, varint)."""
    if body[start] != 0x08:  # not written first: parse the event (never, from the SDK)
        raise ValueError("sequence is not the event's first field")
    return _varint(body, start + 1)[0]


def _seq3(body: bytes) -> int:
    """:func:`_sequence` of a body at 0, 1..3-byte varints inline."""
    if body[0] == 0x08:
        b = body[1]
        if b < 0x80:
            return b
        c = body[2]
        if c < 0x80:
            return b - 0x80 | c << 7
        d = body[3]
        if d < 0x80:
            return b - 0x80 | (c - 0x80) << 7 | d << 14
    return _sequence(body, 0)


def walk(data: bytes, all_sequences: bool) -> tuple[list[bytes], list[int], bool]:
    """The ``EventBatch`` entries of a ``WorkerFrame`` sliced whole (key, length,
    body), their sequences (all, or the first and the last), the overrun flag."""
    if data[0] != 0x32:  # field 6 (events), length-delimited: the only frame walked
        raise ValueError("not an events frame")
    length, pos = _varint(data, 1)
    end = pos + length
    if end != len(data):
        raise ValueError("trailing fields after the batch")
    entries: list[bytes] = []
    sequences: list[int] = []
    append, seq_append = entries.append, sequences.append
    overrun = False
    while pos < end:
        key = data[pos]
        if key == 0x0A:  # field 1: an Event
            start = pos
            n = data[pos + 1]
            if n < 0x80:
                body = pos + 2
            else:
                n, body = _varint(data, pos + 1)
            pos = body + n
            append(data[start:pos])
            if all_sequences:
                # inline varint: 1..3-byte sequences (up to 2,097,151) without a call
                if data[body] != 0x08:
                    raise ValueError("sequence is not the event's first field")
                b = data[body + 1]
                if b < 0x80:
                    seq_append(b)
                else:
                    c = data[body + 2]
                    if c < 0x80:
                        seq_append(b - 0x80 | c << 7)
                    else:
                        d = data[body + 3]
                        seq_append(b - 0x80 | (c - 0x80) << 7 | d << 14 if d < 0x80
                                   else _varint(data, body + 1)[0])
        elif key == 0x10:  # field 2: overrun
            value, pos = _varint(data, pos + 1)
            overrun = bool(value)
        else:
            raise ValueError(f"unexpected key {key:#x} in EventBatch")
    if not all_sequences and entries:
        first, last = entries[0], entries[-1]
        # each entry: key (1 byte), length (varint), body
        sequences = [_sequence(first, _varint(first, 1)[1]),
                     _sequence(last, _varint(last, 1)[1])]
    return entries, sequences, overrun


def check(sequences: list[int], count: int, all_sequences: bool) -> None:
    if all_sequences:
        expected = sequences[0]
        if sequences != list(range(expected, expected + count)):
            raise NotContiguous
    elif sequences[1] - sequences[0] != count - 1:
        raise NotContiguous


def sliced(data: bytes, all_sequences: bool = True) -> bytes:
    entries, sequences, _overrun = walk(data, all_sequences)
    check(sequences, len(entries), all_sequences)
    return b"".join(entries)


def make_raw(raw_frame: Any) -> Callable[[bytes, bool], bytes]:
    from_string = raw_frame.FromString
    prefixes = _EVENT_PREFIX

    def raw(data: bytes, all_sequences: bool = True) -> bytes:
        batch = from_string(data).events
        bodies = list(batch.events)  # bytes, not parsed
        if all_sequences:
            sequences = [_seq3(b) for b in bodies]
        else:
            sequences = [_sequence(bodies[0], 0), _sequence(bodies[-1], 0)]
        check(sequences, len(bodies), all_sequences)
        return b"".join([prefixes[len(b)] + b for b in bodies])  # all bodies < 4096 B here

    return raw


# -- the run ----------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1024, help="events per frame")
    parser.add_argument("--size", type=int, default=100, help="payload bytes per event")
    parser.add_argument("--first", type=int, default=1_000_001,
                        help="sequence of the first event (3-byte varints by default)")
    parser.add_argument("--runs", type=int, default=7, help="samples; the median is reported")
    parser.add_argument("--frames", type=int, default=200, help="frames per sample")
    args = parser.parse_args()

    data = make_frame(args.batch, args.size, args.first)
    raw = make_raw(raw_frame_class())
    want = current(data)
    events, _ = parse(data)
    sequences = sequences_of(events)
    wire = to_wire(events, sequences)
    # the same message: gateway_pb2 parses the response back to the worker's events
    assert list(gateway_pb2.StreamEventsResponse.FromString(want).events) == events

    variants: list[tuple[str, str, Callable[[], Any]]] = [
        ("current", "parse + sequences + to_wire + encode_response (the gateway today)",
         lambda: current(data)),
        ("  parse", "  WorkerFrame.ParseFromString + list(batch.events)",
         lambda: parse(data)),
        ("  sequences", "  [e.sequence ...] + contiguity check", lambda: sequences_of(events)),
        ("  to_wire", "  to_wire(events, sequences): serialize each event again",
         lambda: to_wire(events, sequences)),
        ("  encode", "  encode_response: join the events' bytes", lambda: encode_response(wire)),
        ("slice", "walk the frame's bytes, slice each entry, every sequence, join",
         lambda: sliced(data)),
        ("slice f/l", "the same, first and last sequence only", lambda: sliced(data, False)),
        ("raw", "upb parse as repeated bytes, prefix + body, every sequence, join",
         lambda: raw(data)),
        ("raw f/l", "the same, first and last sequence only", lambda: raw(data, False)),
    ]
    for name, _label, fn in variants:  # every pass-through response is the same bytes
        if not name.startswith(" "):
            got = fn()
            if got != want:
                raise AssertionError(f"{name}: a different response than the current path")

    samples: dict[str, list[float]] = {name: [] for name, _l, _f in variants}
    per = args.frames * args.batch
    for _ in range(args.runs):
        for name, _label, fn in variants:  # interleaved: noise hits all alike
            t0 = time.perf_counter()
            for _ in range(args.frames):
                fn()
            samples[name].append((time.perf_counter() - t0) / per * 1e9)
    med = {name: statistics.median(v) for name, v in samples.items()}
    base = med["current"]
    print(f"pass-through: {args.batch} events of {args.size} B per frame "
          f"({len(data):,} B frame, {len(want):,} B response), {args.frames} frames per "
          f"sample, median of {args.runs}; Python {sys.version.split()[0]}, protobuf "
          f"{_protobuf_version()}")
    print()
    print(f"| {'path':<11}| {'what':<68}| {'ns/event':>9} | {'min .. max':<15}| "
          f"{'vs current':>10} |")
    print(f"|{'-' * 12}|{'-' * 69}|{'-' * 11}|{'-' * 16}|{'-' * 12}|")
    for name, label, _fn in variants:
        values = samples[name]
        spread = f"{min(values):.0f} .. {max(values):.0f}"
        print(f"| {name:<11}| {label:<68}| {med[name]:>9.0f} | {spread:<15}| "
              f"{med[name] / base:>10.2f} |")
    print()
    print(f"current / slice = {base / med['slice']:.2f} x, current / raw = "
          f"{base / med['raw']:.2f} x (same-run medians; all responses byte-identical)")
    return 0


def _protobuf_version() -> str:
    import google.protobuf
    from google.protobuf.internal import api_implementation

    return f"{google.protobuf.__version__} ({api_implementation.Type()})"


if __name__ == "__main__":
    raise SystemExit(main())
