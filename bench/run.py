"""sessiongate benchmark: gateway throughput and session-open latency beside baselines.

    python bench/run.py            # 5 runs, 200k events
    python bench/run.py --quick    # smoke mode: 1 run, small counts
    python bench/run.py --runs 9 --events 500000

Every process it starts (a ``sessiongate serve`` gateway, a plain grpc.aio baseline
server, the spawn-baseline children, the gateway's workers) runs on 127.0.0.1 /
private Unix sockets and is stopped at the end. See ``bench/README.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import pathlib
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

import grpc

from sessiongate.v1 import gateway_pb2

PAYLOAD = 100
PLAIN_METHOD = "/sessiongate.bench.Plain/Stream"

# The bare spawn baseline: a fresh interpreter that imports protobuf and connects back.
SPAWN_CHILD = (
    "import socket, sys\n"
    "import google.protobuf.message\n"
    "s = socket.socket(socket.AF_UNIX)\n"
    "s.connect(sys.argv[1])\n"
    "s.sendall(b'x')\n"
    "s.recv(1)\n"
)


# -- the plain grpc.aio baseline server (runs as a child process) --------------------------


def _event(sequence: int) -> Any:
    event = gateway_pb2.Event(sequence=sequence, kind="burst", payload=b"x" * PAYLOAD)
    event.time.GetCurrentTime()
    return event


async def _plain_server() -> None:
    async def stream(request: bytes, context: Any) -> Any:
        count, batch = json.loads(request)
        # The same message type, field values and sizes the gateway sends.
        response = gateway_pb2.StreamEventsResponse(events=[_event(i + 1) for i in range(batch)])
        sent = 0
        while sent < count:
            yield response
            sent += batch

    server = grpc.aio.server()
    handler = grpc.method_handlers_generic_handler("sessiongate.bench.Plain", {
        "Stream": grpc.unary_stream_rpc_method_handler(
            stream, response_serializer=gateway_pb2.StreamEventsResponse.SerializeToString)})
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(port, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    await stop.wait()
    await server.stop(0)


# -- child processes ---------------------------------------------------------------------


class Child:
    """A child process whose output goes to files (workers inherit the gateway's stderr)."""

    def __init__(self, argv: list[str], workdir: pathlib.Path, name: str) -> None:
        self.out = workdir / f"{name}.out"
        self.err = workdir / f"{name}.err"
        with open(self.out, "wb") as out, open(self.err, "wb") as err:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                         cwd=workdir)

    def wait_for(self, pattern: str, *, stderr: bool = False, timeout: float = 60) -> str:
        path = self.err if stderr else self.out
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = re.search(pattern, path.read_text(errors="replace"))
            if match:
                return match.group(1)
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)  # a log file has no readiness event to wait on
        raise RuntimeError(f"{self.proc.args[:4]} did not start:\n"
                           f"{self.err.read_text(errors='replace')}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value)


def start_gateway(workdir: pathlib.Path, runtime: pathlib.Path, events: int,
                  core_only: bool, profile: str | None) -> tuple[Child, str, str]:
    settings: dict[str, Any] = {
        "state_dir": str(workdir / "state"),
        "runtime_dir": str(runtime),
        "server.grpc_address": "127.0.0.1:0",
        # The client must be able to fall behind by a whole burst without the default
        # fail_fast policy faulting the session: this measures throughput, not overflow.
        "events.queue_capacity": max(10000, events),
        "plugins.fanout.enabled": not core_only,
        "plugins.reconnect.enabled": not core_only,
        "plugins.acl.enabled": not core_only,
        "plugins.reattach.enabled": False,
    }
    prefix = [sys.executable]
    if profile:  # cProfile the gateway and every worker; inspect with pstats
        out = pathlib.Path(profile).resolve()
        out.mkdir(parents=True, exist_ok=True)
        wrapper = workdir / "profiled-python"
        wrapper.write_text(f"#!/bin/sh\nexec {sys.executable} -m cProfile "
                           f"-o {out}/worker-$$.prof \"$@\"\n")
        wrapper.chmod(0o700)
        settings["workers.python"] = str(wrapper)
        prefix += ["-m", "cProfile", "-o", str(out / "gateway.prof")]
    config = workdir / "gateway.toml"
    config.write_text("".join(f"{k} = {_toml(v)}\n" for k, v in settings.items()))
    gw = Child([*prefix, "-m", "sessiongate", "serve", "--config", str(config)],
               workdir, "gateway")
    address = gw.wait_for(r"listening on (\S+)", stderr=True)
    key = gw.wait_for(r"(\S+)")
    return gw, address, key


# -- measurements --------------------------------------------------------------------------


async def measure_plain(address: str, count: int, batch: int) -> float:
    """Events/s of the plain grpc.aio stream (``batch`` events per response)."""
    async with grpc.aio.insecure_channel(address) as channel:
        call = channel.unary_stream(
            PLAIN_METHOD, request_serializer=None,
            response_deserializer=gateway_pb2.StreamEventsResponse.FromString)
        start = time.perf_counter()
        received = 0
        async for response in call(json.dumps([count, batch]).encode()):
            received += len(response.events)
        elapsed = time.perf_counter() - start
    if received < count:
        raise RuntimeError(f"plain stream ended after {received} of {count}")
    return received / elapsed


async def measure_gateway(client: Any, count: int) -> float:
    """Events/s of a ``sim`` burst: invoke sent → last event received by the client."""
    sid = (await client.open(client_name="bench", backend="sim")).session_id
    try:
        call = client.stream(sid)
        stream = call.__aiter__()
        first = await stream.__anext__()  # the "attached" response
        assert first.caught_up and not first.events
        start = time.perf_counter()
        invoke = asyncio.ensure_future(client.invoke_json(
            sid, "burst", {"count": count, "size": PAYLOAD}))
        expected = 1
        while expected <= count:
            response = await stream.__anext__()
            events = response.events
            n = len(events)
            if n and (events[0].sequence != expected or events[n - 1].sequence
                      != expected + n - 1):
                raise RuntimeError(f"sequence error near {expected}")
            expected += n
        elapsed = time.perf_counter() - start
        reply = await invoke
        if reply != {"emitted": count}:
            raise RuntimeError(f"burst replied {reply!r}")
        call.cancel()
        return count / elapsed
    finally:
        await client.close(sid)


async def measure_open(client: Any, opens: int, spacing: float = 0.0) -> float:
    """Median seconds of OpenSession (returns when the worker is Ready).

    ``spacing``: pause between opens, as with opens arriving at a steady rate; the
    gateway's spare worker (``workers.spare_workers``) is then warm. With no pause
    (back-to-back) an open mostly finds the spare still starting.
    """
    samples = []
    for _ in range(opens):
        if spacing:
            await asyncio.sleep(spacing)  # the arrival rate being modelled, not a sync
        start = time.perf_counter()
        info = await client.open(client_name="bench-open", backend="sim")
        samples.append(time.perf_counter() - start)
        await client.close(info.session_id)
    return statistics.median(samples)


async def measure_spawn(runtime: pathlib.Path, spawns: int) -> float:
    """Median seconds from spawning the bare child to its accepted connection."""
    samples = []
    for i in range(spawns):
        path = str(runtime / f"spawn-{i}.sock")
        connected: asyncio.Future[float] = asyncio.get_running_loop().create_future()

        async def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                           connected: asyncio.Future[float] = connected) -> None:
            await reader.readexactly(1)
            connected.set_result(time.perf_counter())
            writer.write(b"x")
            await writer.drain()
            writer.close()

        server = await asyncio.start_unix_server(accepted, path=path)
        start = time.perf_counter()
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", SPAWN_CHILD, path, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL)
        try:
            end = await asyncio.wait_for(connected, 30)
        finally:
            await proc.wait()
            server.close()
            await server.wait_closed()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        samples.append(end - start)
    return statistics.median(samples)


# -- the run -----------------------------------------------------------------------------


ROWS = [
    ("a", "gateway: sim burst -> StreamEvents client", "events/s"),
    ("b1", "plain grpc.aio, 1 event per response", "events/s"),
    ("b64", "plain grpc.aio, 64 events per response", "events/s"),
    ("c", "gateway: OpenSession until READY, 3 opens/s", "ms"),
    ("cb", "gateway: OpenSession, back-to-back opens", "ms"),
    ("c0", "bare spawn: python + protobuf + connect back", "ms"),
]


async def bench(args: argparse.Namespace, gw_address: str, key: str, plain_address: str,
                runtime: pathlib.Path) -> dict[str, list[float]]:
    from sessiongate.core.client import connect

    results: dict[str, list[float]] = {row[0]: [] for row in ROWS}
    async with connect(gw_address, key) as client:
        # warm-up: the first session and stream pay one-time costs on both sides
        await measure_gateway(client, min(args.events, 20000))
        await measure_plain(plain_address, 20000, 64)
        for run in range(args.runs):
            # interleaved, so that machine noise hits every row of a run alike
            results["b64"].append(await measure_plain(plain_address, args.events, 64))
            results["a"].append(await measure_gateway(client, args.events))
            results["b1"].append(await measure_plain(plain_address, args.single_events, 1))
            results["c0"].append(await measure_spawn(runtime, args.opens) * 1000)
            results["c"].append(await measure_open(client, args.opens, 0.33) * 1000)
            results["cb"].append(await measure_open(client, args.opens) * 1000)
            print(f"run {run + 1}/{args.runs}: " + ", ".join(
                f"{name}={values[-1]:,.1f}" for name, values in results.items()),
                file=sys.stderr, flush=True)
    return results


def report(results: dict[str, list[float]], args: argparse.Namespace) -> str:
    med = {name: statistics.median(values) for name, values in results.items()}
    lines = [f"sessiongate bench: {args.events:,} events of {PAYLOAD} B, {args.runs} run(s), "
             f"{args.opens} opens/spawns per run, plugins "
             f"{'off (core only)' if args.core_only else 'as shipped'}; "
             f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}, grpcio {grpc.__version__}",
             "",
             f"| {'row':<4}| {'measurement':<46}| {'median':>12} | {'unit':<9}"
             f"| {'min .. max':<22}|",
             f"|{'-' * 5}|{'-' * 47}|{'-' * 14}|{'-' * 10}|{'-' * 23}|"]
    for name, label, unit in ROWS:
        values = results[name]
        fmt = "{:,.0f}" if unit == "events/s" else "{:,.1f}"
        spread = f"{fmt.format(min(values))} .. {fmt.format(max(values))}"
        lines.append(f"| {name:<4}| {label:<46}| {fmt.format(med[name]):>12} | {unit:<9}"
                     f"| {spread:<22}|")
    ratio_a = statistics.median(a / b for a, b in zip(results["a"], results["b64"], strict=True))
    ratio_a1 = statistics.median(a / b for a, b in zip(results["a"], results["b1"], strict=True))
    ratio_c = statistics.median(c / b for c, b in zip(results["c"], results["c0"], strict=True))
    ratio_cb = statistics.median(c / b for c, b in zip(results["cb"], results["c0"],
                                                        strict=True))
    lines += [
        "",
        "| ratio (median of same-run ratios) | value | target |",
        "|---|---|---|",
        f"| (a) / (b64) throughput | {ratio_a:.2f} | >= 0.5 "
        f"{'OK' if ratio_a >= 0.5 else 'MISSED'} |",
        f"| (a) / (b1) throughput | {ratio_a1:.1f} | (info) |",
        f"| (c) / (c0) open latency | {ratio_c:.2f} | <= 1.0 "
        f"{'OK' if ratio_c <= 1.0 else 'MISSED'} |",
        f"| (cb) / (c0) back-to-back opens | {ratio_cb:.2f} | (info) |",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke mode: 1 run, small counts")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--events", type=int, default=200_000, help="events per burst (a, b64)")
    parser.add_argument("--single-events", type=int, default=20_000,
                        help="events for the one-per-response baseline (b1)")
    parser.add_argument("--opens", type=int, default=20, help="opens/spawns per run (c, c0)")
    parser.add_argument("--core-only", action="store_true",
                        help="gateway with every plugin off (default: plugins as shipped)")
    parser.add_argument("--profile", metavar="DIR",
                        help="write cProfile output of the gateway and its workers to DIR")
    parser.add_argument("--plain-server", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.plain_server:
        asyncio.run(_plain_server())
        return 0
    if args.quick:
        args.runs, args.events, args.single_events, args.opens = 1, 20_000, 3_000, 5

    workdir = pathlib.Path(tempfile.mkdtemp(prefix="sg-bench-"))
    runtime = pathlib.Path(tempfile.mkdtemp(prefix="sgb", dir="/tmp"))  # short socket paths
    children: list[Child] = []
    try:
        plain = Child([sys.executable, os.path.abspath(__file__), "--plain-server"], workdir,
                      "plain")
        children.append(plain)
        gw, gw_address, key = start_gateway(workdir, runtime, args.events, args.core_only,
                                            args.profile)
        children.append(gw)
        plain_address = "127.0.0.1:" + plain.wait_for(r"(\d+)")
        results = asyncio.run(bench(args, gw_address, key, plain_address, runtime))
    finally:
        for child in reversed(children):
            child.stop()
        shutil.rmtree(workdir, ignore_errors=True)
        shutil.rmtree(runtime, ignore_errors=True)
    print("\n" + report(results, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
