"""sessiongate benchmark: gateway throughput and session-open latency beside baselines.

    python bench/run.py            # 5 runs, 200k events
    python bench/run.py --quick    # smoke mode: 1 run, small counts
    python bench/run.py --runs 9 --events 500000
    python bench/run.py --baseline /tmp/sg-before --baseline-python /tmp/sg-before-venv/bin/python

Every process it starts (``sessiongate serve`` gateways on the shipped settings, a
plain grpc.aio baseline server, the spawn-baseline children, the gateways' workers and,
with ``--baseline``, a gateway of the pre-change checkout) runs on 127.0.0.1 / private
Unix sockets and is stopped at the end. See ``bench/README.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.resources
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
import tomllib
from typing import Any

import grpc

import sessiongate.core as sessiongate_core
from sessiongate.v1 import gateway_pb2

#: the checkout whose ``sessiongate`` this interpreter imports: the code measured as
#: "now" (normally this file's own; another one's when run by that one's interpreter)
ROOT = pathlib.Path(sessiongate_core.__file__).resolve().parents[1]
#: its shipped events.* settings (the benchmark leaves them as they are)
SHIPPED = tomllib.loads(
    importlib.resources.files("sessiongate.settings").joinpath("settings.toml").read_text()
)["events"]
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

    def __init__(self, argv: list[str], workdir: pathlib.Path, name: str,
                 env: dict[str, str] | None = None) -> None:
        self.out = workdir / f"{name}.out"
        self.err = workdir / f"{name}.err"
        with open(self.out, "wb") as out, open(self.err, "wb") as err:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                         cwd=workdir, env=env)

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


def start_gateway(workdir: pathlib.Path, runtime: pathlib.Path, core_only: bool,
                  profile: str | None = None, *, python: str = sys.executable,
                  capacity: int | None = None, name: str = "gateway",
                  extra: dict[str, Any] | None = None) -> tuple[Child, str, str]:
    """A ``sessiongate serve`` on the shipped settings (``events.queue_capacity`` and
    ``events.stall_timeout_seconds`` included) but for its dirs, the address and the
    plugin switches. ``capacity`` overrides the queue capacity: only the pre-change
    baseline gets that (it faults a session whose client is more than it behind).
    ``python``: the interpreter, whose ``sessiongate`` package is the code measured.
    ``extra``: more settings (the activity gateway's plugin switch and sink).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    settings: dict[str, Any] = {
        "state_dir": str(workdir / "state"),
        "runtime_dir": str(runtime),
        "server.grpc_address": "127.0.0.1:0",
        "plugins.fanout.enabled": not core_only,
        "plugins.reconnect.enabled": not core_only,
        "plugins.acl.enabled": not core_only,
        "plugins.reattach.enabled": False,
    }
    if capacity is not None:
        settings["events.queue_capacity"] = capacity
    else:  # the current code: its HTTP side port on a free port (the baseline has none)
        settings["server.http_address"] = "127.0.0.1:0"
    settings.update(extra or {})
    prefix = [python]
    if profile:  # cProfile the gateway and every worker; inspect with pstats
        out = pathlib.Path(profile).resolve()
        out.mkdir(parents=True, exist_ok=True)
        wrapper = workdir / "profiled-python"
        wrapper.write_text(f"#!/bin/sh\nexec {python} -m cProfile "
                           f"-o {out}/worker-$$.prof \"$@\"\n")
        wrapper.chmod(0o700)
        settings["workers.python"] = str(wrapper)
        prefix += ["-m", "cProfile", "-o", str(out / "gateway.prof")]
    config = workdir / f"{name}.toml"
    config.write_text("".join(f"{k} = {_toml(v)}\n" for k, v in settings.items()))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SESSIONGATE_")}
    gw = Child([*prefix, "-m", "sessiongate", "serve", "--config", str(config)],
               workdir, name, env=env)
    address = gw.wait_for(r"listening on (\S+)", stderr=True)
    key = gw.wait_for(r"(\S+)")
    return gw, address, key


def baseline_python(checkout: str, python: str | None) -> str:
    """The interpreter whose ``sessiongate`` is the checkout at ``checkout``; checked."""
    root = pathlib.Path(checkout).resolve()
    python = python or str(root / ".venv" / "bin" / "python")
    if not os.path.exists(python):
        raise SystemExit(
            f"--baseline {checkout}: no interpreter {python}; make one, e.g.\n"
            f"  git -C {pathlib.Path(__file__).resolve().parents[1]} worktree add "
            f"{checkout} <commit>\n"
            f"  {sys.executable} -m venv /tmp/sg-before-venv\n"
            f"  /tmp/sg-before-venv/bin/pip install -e {checkout}\n"
            "and pass --baseline-python /tmp/sg-before-venv/bin/python")
    where = subprocess.run(
        [python, "-c", "import sessiongate.core.streaming.events as m; print(m.__file__)"],
        capture_output=True, text=True, check=False, env={
            k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    found = pathlib.Path(where.stdout.strip() or "?").resolve()
    if where.returncode != 0 or root not in found.parents:
        raise SystemExit(f"--baseline: {python} imports sessiongate from {found}, not from "
                         f"{root}: {where.stderr.strip()}")
    return python


def git_describe(path: pathlib.Path) -> str:
    out = subprocess.run(["git", "-C", str(path), "log", "-1", "--format=%h"],
                         capture_output=True, text=True, check=False)
    head = out.stdout.strip() or "?"
    dirty = subprocess.run(["git", "-C", str(path), "status", "--porcelain", "--",
                            "core", "plugins", "toplevel"], capture_output=True, text=True,
                           check=False).stdout.strip()
    return head + (" + uncommitted changes in core/plugins/pkg" if dirty else "")


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


def _cpu(proc: Any) -> float:
    times = proc.cpu_times()
    return times.user + times.system


def session_worker(gateway_pid: int, sid: str) -> Any:
    """The psutil process of the worker of session ``sid`` (a child of the gateway)."""
    import psutil

    for child in psutil.Process(gateway_pid).children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if child.environ().get("SESSIONGATE_WORKER_SESSION") == sid:
                return child
    raise RuntimeError(f"no worker process found for session {sid}")


async def measure_gateway(client: Any, count: int, cpu: dict[str, list[float]] | None = None,
                          gateway_pid: int = 0) -> float:
    """Events/s of a ``sim`` burst: invoke sent → last event received by the client.

    With ``cpu``, the CPU time (user + system) the gateway and the session's worker
    spent on the burst is appended to ``cpu["gw"]`` and ``cpu["wk"]``, in us per event.
    """
    import psutil

    sid = (await client.open(client_name="bench", backend="sim")).session_id
    try:
        call = client.stream(sid)
        stream = call.__aiter__()
        first = await stream.__anext__()  # the "attached" response
        assert first.caught_up and not first.events
        if cpu is not None:
            gateway, worker = psutil.Process(gateway_pid), session_worker(gateway_pid, sid)
            gw0, wk0 = _cpu(gateway), _cpu(worker)
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
        if cpu is not None:
            gw1 = _cpu(gateway)
        reply = await invoke
        if cpu is not None:
            cpu["gw"].append((gw1 - gw0) / count * 1e6)
            cpu["wk"].append((_cpu(worker) - wk0) / count * 1e6)
        if reply != {"emitted": count}:
            raise RuntimeError(f"burst replied {reply!r}")
        call.cancel()
        return count / elapsed
    finally:
        await client.close(sid)


SLOW_WAIT = 0.002


async def consume_slowly(stream: Any, count: int, per_event: float,
                         expected: int | None = 1) -> tuple[int, str]:
    """Read ``count`` events as a client that spends ``per_event`` seconds on each.

    Its work is modelled by sleeping (no CPU taken from the gateway) until a deadline
    that moves on ``per_event`` per event received: the client consumes at
    ``1 / per_event`` events/s whenever events are there to take, whatever the
    response sizes, and an oversleep (a loaded machine) is made up on the next
    response. Only a real wait for data - the next response took longer than
    ``SLOW_WAIT`` seconds to come - moves the deadline on to when it came: a response
    that was already there when the client asked is not a wait.
    With ``expected``, the sequences are checked to run on from it without a gap.
    Returns the events received (fewer than ``count`` if the stream ended, failed or
    skipped some) and why it ended early.
    """
    loop_time = time.perf_counter
    due = loop_time()
    got = 0
    try:
        while got < count:
            asked = loop_time()
            response = await stream.__anext__()
            came = loop_time()
            events = response.events
            n = len(events)
            if expected is not None and n:
                if events[0].sequence != expected or events[n - 1].sequence != expected + n - 1:
                    return got, f"sequence error near {expected} (a gap: events lost)"
                expected += n
            if response.HasField("gap"):
                return got, f"gap {response.gap}"
            got += n
            if came - asked > SLOW_WAIT:
                due = max(due, came)  # it had nothing to work on meanwhile
            due += n * per_event
            delay = due - loop_time()
            if delay > 0:
                await asyncio.sleep(delay)  # the client's own work on these events
    except StopAsyncIteration:
        return got, "stream ended"
    except grpc.aio.AioRpcError as exc:
        return got, f"{exc.code().name}: {exc.details()}"
    return got, ""


async def measure_slow_gateway(client: Any, count: int, per_event: float) -> tuple[float, float]:
    """Row a-slow: (delivered fraction, events/s) of a burst to the slow client."""
    sid = (await client.open(client_name="bench-slow", backend="sim")).session_id
    try:
        call = client.stream(sid)
        stream = call.__aiter__()
        first = await stream.__anext__()
        assert first.caught_up and not first.events
        start = time.perf_counter()
        invoke = asyncio.ensure_future(client.invoke_json(
            sid, "burst", {"count": count, "size": PAYLOAD}))
        got, why = await consume_slowly(stream, count, per_event)
        elapsed = time.perf_counter() - start
        if why:
            print(f"a-slow: stream stopped after {got:,} of {count:,} events: {why}",
                  file=sys.stderr, flush=True)
            invoke.cancel()
        else:
            reply = await invoke
            if reply != {"emitted": count}:
                raise RuntimeError(f"burst replied {reply!r}")
        call.cancel()
        return got / count, got / elapsed
    finally:
        with contextlib.suppress(grpc.aio.AioRpcError):
            await client.close(sid)


async def measure_slow_plain(address: str, count: int, per_event: float) -> float:
    """Row s0: the same slow client fed by the plain server (64 events per response,
    far faster than it): its own consumption rate, events/s."""
    async with grpc.aio.insecure_channel(address) as channel:
        call = channel.unary_stream(
            PLAIN_METHOD, request_serializer=None,
            response_deserializer=gateway_pb2.StreamEventsResponse.FromString)
        start = time.perf_counter()
        rpc = call(json.dumps([count, 64]).encode())
        got, why = await consume_slowly(rpc.__aiter__(), count, per_event, expected=None)
        elapsed = time.perf_counter() - start
        rpc.cancel()
    if why:
        raise RuntimeError(f"plain stream for s0 stopped after {got} of {count}: {why}")
    return got / elapsed


MIB = 1 << 20


def _hwm(pid: int) -> float:
    """The kernel's peak resident set (VmHWM) of ``pid``, MiB; 0 if unreadable."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024 / MIB
    except OSError:
        pass
    return 0.0


async def measure_mem(workdir: pathlib.Path, core_only: bool, count: int,
                      hold: float) -> dict[str, float]:
    """Row mem: a fresh gateway, one ``sim`` session, one ``StreamEvents`` subscriber
    that reads its attached response and then nothing more; a ``count``-event burst.

    psutil samples the RSS of the gateway and of the session's worker every 10 ms:
    idle (session open, stream attached, 0.5 s before the burst), then from the burst
    until ``hold`` seconds after the worker is held (the session's last sequence has
    not moved for 0.5 s). Well inside ``events.stall_timeout_seconds`` (30 s shipped):
    the subscriber is never cut during the window. Then the session is closed.
    """
    import psutil

    from sessiongate.client import connect

    runtime = pathlib.Path(tempfile.mkdtemp(prefix="sgm", dir="/tmp"))
    gw = None
    try:
        gw, address, key = start_gateway(workdir, runtime, core_only, name="mem-gateway")
        gateway = psutil.Process(gw.proc.pid)
        async with connect(address, key) as client:
            sid = (await client.open(client_name="bench-mem", backend="sim")).session_id
            worker = session_worker(gw.proc.pid, sid)
            call = client.stream(sid)
            stream = call.__aiter__()
            first = await stream.__anext__()  # attached; the subscriber reads nothing more
            assert first.caught_up and not first.events

            def rss() -> tuple[float, float]:
                return gateway.memory_info().rss / MIB, worker.memory_info().rss / MIB

            idle_gw = idle_wk = 0.0
            for _ in range(50):
                g, w = rss()
                idle_gw, idle_wk = max(idle_gw, g), max(idle_wk, w)
                await asyncio.sleep(0.01)  # sampling interval
            peak_gw, peak_wk = idle_gw, idle_wk
            invoke = asyncio.ensure_future(client.invoke_json(
                sid, "burst", {"count": count, "size": PAYLOAD}))
            t0 = time.monotonic()
            last_seq, moved, held_at, polled = -1, t0, 0.0, 0.0
            while True:
                g, w = rss()
                peak_gw, peak_wk = max(peak_gw, g), max(peak_wk, w)
                now = time.monotonic()
                if held_at and now - held_at >= hold:
                    break
                if now - t0 > 60 + hold:
                    raise RuntimeError("mem: the worker was never held back in 60 s")
                if not held_at and now - polled >= 0.1:
                    polled = now
                    seq = (await client.get(sid)).last_sequence
                    if invoke.done():
                        raise RuntimeError(f"mem: the burst ended ({invoke.result()!r}): "
                                           "nothing held the worker back")
                    if seq != last_seq:
                        last_seq, moved = seq, now
                    elif seq and now - moved >= 0.5:
                        held_at = now  # measure on for `hold` seconds from here
                await asyncio.sleep(0.01)  # sampling interval
            hwm_gw, hwm_wk = _hwm(gateway.pid), _hwm(worker.pid)
            emitted = (await client.get(sid)).last_sequence
            invoke.cancel()
            call.cancel()
            with contextlib.suppress(grpc.aio.AioRpcError):
                await client.close(sid)
        return {"mem-gw": peak_gw, "mem-gw0": idle_gw, "mem-wk": peak_wk, "mem-wk0": idle_wk,
                "hwm-gw": hwm_gw, "hwm-wk": hwm_wk, "emitted": emitted,
                "held-after": held_at - t0}
    finally:
        if gw is not None:
            gw.stop()
        shutil.rmtree(runtime, ignore_errors=True)


#: what a tracked call sends (docs/plugins/activity.md)
TRACKING = (("x-session-track", "true"), ("x-session-context", "eyJiZW5jaCI6MX0"),
            ("x-session-operation", "bench"))


async def measure_invoke(client: Any, sid: str, calls: int,
                         metadata: tuple[tuple[str, str], ...] = ()) -> float:
    """Seconds for ``calls`` ``Invoke echo`` round trips, one call at a time (each
    100 B, checked), with ``metadata`` added to every call."""
    payload = b"x" * PAYLOAD
    start = time.perf_counter()
    for _ in range(calls):
        if await client.invoke(sid, "echo", payload, metadata=metadata) != payload:
            raise RuntimeError("echo replied something else")
    return time.perf_counter() - start


INVOKE_BLOCK = 100


async def measure_tracking(client: Any, sid: str, calls: int, gateway_pid: int,
                           cpu: dict[str, list[float]], first: str) -> dict[str, float]:
    """Rows i and i-track: round trips per second of ``calls`` untracked and ``calls``
    tracked ``Invoke echo`` calls on the same session, in alternating blocks of
    ``INVOKE_BLOCK`` (``first`` first), so that machine noise hits both alike. The
    gateway's CPU time (user + system) per call of each is appended to ``cpu``, in us.
    """
    import psutil

    gateway = psutil.Process(gateway_pid)
    spent = {"i": 0.0, "i-track": 0.0}
    used = {"i": 0.0, "i-track": 0.0}
    order = (first, "i-track" if first == "i" else "i")
    done = 0
    while done < calls:
        block = min(INVOKE_BLOCK, calls - done)
        for name in order:
            cpu0 = _cpu(gateway)
            spent[name] += await measure_invoke(client, sid, block,
                                                TRACKING if name == "i-track" else ())
            used[name] += _cpu(gateway) - cpu0
        done += block
    for name in spent:
        cpu.setdefault(name, []).append(used[name] / calls * 1e6)
    return {name: calls / seconds for name, seconds in spent.items()}


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
    ("a-before", "pre-change gateway (--baseline), same burst", "events/s"),
    ("a-slow", "gateway: burst to a 10x slower client", "events/s"),
    ("a-slow%", "a-slow: events delivered, of those sent", "%"),
    ("s0", "that slow client fed by the plain server", "events/s"),
    ("b1", "plain grpc.aio, 1 event per response", "events/s"),
    ("b64", "plain grpc.aio, 64 events per response", "events/s"),
    ("i", "activity on: Invoke echo, no tracking headers", "calls/s"),
    ("i-track", "activity on: Invoke echo, tracked (headers)", "calls/s"),
    ("c", "gateway: OpenSession until READY, 3 opens/s", "ms"),
    ("cb", "gateway: OpenSession, back-to-back opens", "ms"),
    ("c0", "bare spawn: python + protobuf + connect back", "ms"),
    ("mem-gw", "gateway peak RSS, burst to a stalled subscriber", "MiB"),
    ("mem-gw0", "gateway RSS idle (session open, attached)", "MiB"),
    ("mem-wk", "worker peak RSS, burst to a stalled subscriber", "MiB"),
    ("mem-wk0", "worker RSS idle (session open, attached)", "MiB"),
]


ROW_GROUPS = ("slow", "b1", "c", "mem", "act")


async def bench(args: argparse.Namespace, gw_address: str, key: str, plain_address: str,
                runtime: pathlib.Path, before: tuple[str, str] | None,
                workdir: pathlib.Path, pids: tuple[int, int],
                activity: tuple[str, str, int] | None = None,
                ) -> tuple[dict[str, list[float]], dict[str, Any]]:
    from sessiongate.client import connect

    results: dict[str, list[float]] = {row[0]: [] for row in ROWS}
    info: dict[str, Any] = {"mem": []}
    async with contextlib.AsyncExitStack() as stack:
        client = await stack.enter_async_context(connect(gw_address, key))
        old = None
        if before is not None:
            old = await stack.enter_async_context(connect(*before))
            await measure_gateway(old, min(args.events, 20000))
        tracked_sid = ""
        if activity is not None:
            tracked = await stack.enter_async_context(connect(*activity[:2]))
            tracked_sid = (await tracked.open(client_name="bench-activity",
                                              backend="sim")).session_id
            for metadata in ((), TRACKING):  # warm-up, both paths
                await measure_invoke(tracked, tracked_sid, min(args.invokes, 200), metadata)
        # warm-up: the first session and stream pay one-time costs on both sides
        await measure_gateway(client, min(args.events, 20000))
        await measure_plain(plain_address, 20000, 64)
        # The slow client of row a-slow is 10x slower than this gateway's row a, as
        # measured here once (full burst), so that it stays the same over the runs.
        rate_a = await measure_gateway(client, args.events) if "slow" in args.rows else 0.0
        per_event = args.slow_factor / rate_a if rate_a else 0.0
        info["slow_rate"] = 1 / per_event if per_event else 0.0
        if per_event:
            print(f"warm-up row a: {rate_a:,.0f} events/s; the a-slow client takes "
                  f"{per_event * 1e6:.1f} us per event ({1 / per_event:,.0f} events/s)",
                  file=sys.stderr, flush=True)
        rows = args.rows
        cpu_now: dict[str, list[float]] = info.setdefault("cpu", {}).setdefault(
            "now", {"gw": [], "wk": []})
        cpu_old: dict[str, list[float]] = info["cpu"].setdefault("before", {"gw": [], "wk": []})
        gw_pid, old_pid = pids
        for run in range(args.runs):
            # interleaved, so that machine noise hits every row of a run alike; the
            # order of the two gateways alternates run by run
            results["b64"].append(await measure_plain(plain_address, args.events, 64))
            if old is not None and run % 2:
                results["a-before"].append(await measure_gateway(old, args.events, cpu_old,
                                                                 old_pid))
            results["a"].append(await measure_gateway(client, args.events, cpu_now, gw_pid))
            if old is not None and not run % 2:
                results["a-before"].append(await measure_gateway(old, args.events, cpu_old,
                                                                 old_pid))
            if "slow" in rows:
                fraction, rate = await measure_slow_gateway(client, args.slow_events,
                                                            per_event)
                results["a-slow%"].append(fraction * 100)
                results["a-slow"].append(rate)
                results["s0"].append(await measure_slow_plain(plain_address, args.slow_events,
                                                              per_event))
            if "b1" in rows:
                results["b1"].append(await measure_plain(plain_address, args.single_events, 1))
            if "c" in rows:
                results["c0"].append(await measure_spawn(runtime, args.opens) * 1000)
                results["c"].append(await measure_open(client, args.opens, 0.33) * 1000)
                results["cb"].append(await measure_open(client, args.opens) * 1000)
            if activity is not None:
                # same gateway, same session; which goes first alternates run by run
                rates = await measure_tracking(tracked, tracked_sid, args.invokes, activity[2],
                                               info["cpu"], "i" if run % 2 else "i-track")
                for name, rate in rates.items():
                    results[name].append(rate)
            if "mem" in rows and run < args.mem_runs:
                mem = await measure_mem(workdir / f"mem-{run}", args.core_only,
                                        args.mem_events, args.mem_hold)
                info["mem"].append(mem)
                for name in ("mem-gw", "mem-gw0", "mem-wk", "mem-wk0"):
                    results[name].append(mem[name])
            print(f"run {run + 1}/{args.runs}: " + ", ".join(
                f"{name}={values[-1]:,.1f}" for name, values in results.items() if values),
                file=sys.stderr, flush=True)
    return results, info


def _ratio(results: dict[str, list[float]], num: str, den: str) -> float | None:
    pairs = list(zip(results[num], results[den], strict=False))
    return statistics.median(a / b for a, b in pairs) if pairs else None


def report(results: dict[str, list[float]], info: dict[str, Any],
           args: argparse.Namespace) -> str:
    med = {name: statistics.median(values) for name, values in results.items() if values}
    lines = [f"sessiongate bench: {args.events:,} events of {PAYLOAD} B (a-slow: "
             f"{args.slow_events:,}; mem: {args.mem_events:,}), {args.runs} run(s), "
             f"{args.opens} opens/spawns per run, {args.invokes} invokes per i row, plugins "
             f"{'off (core only)' if args.core_only else 'as shipped'}, shipped "
             f"events.* settings (queue_capacity {SHIPPED['queue_capacity']}, "
             f"stall_timeout_seconds {SHIPPED['stall_timeout_seconds']}); "
             f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}, grpcio {grpc.__version__}",
             f"now: {ROOT} at {git_describe(ROOT)}"]
    if args.baseline:
        lines.append(f"before (a-before): {args.baseline} at "
                     f"{git_describe(pathlib.Path(args.baseline))}, run by "
                     f"{args.baseline_python}, with events.queue_capacity = "
                     f"{max(10000, args.events):,} (raised to the burst: the pre-change "
                     "code faults a session whose client falls that far behind, fail_fast)")
    if results["a-slow"]:
        lines.append(f"a-slow: the client spends {1e6 / info['slow_rate']:.1f} us per "
                     f"event ({info['slow_rate']:,.0f} events/s = 1/{args.slow_factor:g} of "
                     "a warm-up row a); s0 is its own rate, measured fed by the plain server")
    lines += ["",
              f"| {'row':<9}| {'measurement':<48}| {'median':>12} | {'unit':<9}"
              f"| {'min .. max':<22}|",
              f"|{'-' * 10}|{'-' * 49}|{'-' * 14}|{'-' * 10}|{'-' * 23}|"]
    for name, label, unit in ROWS:
        values = results[name]
        if not values:
            continue
        fmt = "{:,.0f}" if unit.endswith("/s") else "{:,.1f}"
        spread = f"{fmt.format(min(values))} .. {fmt.format(max(values))}"
        lines.append(f"| {name:<9}| {label:<48}| {fmt.format(med[name]):>12} | {unit:<9}"
                     f"| {spread:<22}|")
    ratio_a = _ratio(results, "a", "b64")

    def mark(ok: bool) -> str:
        return "OK" if ok else "MISSED"

    lines += [
        "",
        "| ratio (median of same-run ratios) | value | target |",
        "|---|---|---|",
        f"| (a) / (b64) throughput | {ratio_a:.2f} | >= 0.5 {mark(ratio_a >= 0.5)} |",
    ]
    if results["a-before"]:
        ratio_before = _ratio(results, "a", "a-before")
        ratio_before_b = _ratio(results, "a-before", "b64")
        lines += [f"| (a) / (a-before): now vs pre-change | {ratio_before:.2f} | >= 0.9 "
                  f"(within 10 %) {mark(ratio_before >= 0.9)} |",
                  f"| (a-before) / (b64) | {ratio_before_b:.2f} | (info) |"]
    if results["a-slow"]:
        fraction = min(results["a-slow%"])
        lines += [
            f"| (a-slow) delivered, worst run | {fraction:.1f} % | 100 % "
            f"{mark(fraction >= 100)} |",
            f"| (a-slow) / (s0): of the slow client's own rate | "
            f"{_ratio(results, 'a-slow', 's0'):.2f} | (info: 1.0 = the gateway feeds it as "
            "fast as it can take) |",
            f"| (a-slow) / the client's nominal rate (1 / its time per event) | "
            f"{statistics.median(results['a-slow']) / info['slow_rate']:.2f} | (info: 1.0 = "
            "as fast as it can take) |",
            f"| (a-slow) / (a) | {_ratio(results, 'a-slow', 'a'):.3f} | (info: about "
            f"1/{args.slow_factor:g}) |"]
    if results["b1"]:
        lines.append(f"| (a) / (b1) throughput | {_ratio(results, 'a', 'b1'):.1f} | (info) |")
    if results["c"]:
        ratio_c = _ratio(results, "c", "c0")
        lines += [
            f"| (c) / (c0) open latency | {ratio_c:.2f} | <= 1.0 {mark(ratio_c <= 1.0)} |",
            f"| (cb) / (c0) back-to-back opens | {_ratio(results, 'cb', 'c0'):.2f} | (info) |"]
    if results["i-track"]:
        ratio_i = _ratio(results, "i-track", "i")
        lines += [f"| (i-track) / (i): tracked Invoke vs untracked, activity on | "
                  f"{ratio_i:.2f} | >= 0.9 {mark(ratio_i >= 0.9)} |",
                  f"| rows i / i-track CPU, us per call: gateway | "
                  f"{statistics.median(info['cpu']['i']):.0f} / "
                  f"{statistics.median(info['cpu']['i-track']):.0f} | (info) |"]
    cpu = info["cpu"]
    if cpu["now"]["gw"]:
        lines.append(f"| row a CPU, us per event: gateway / worker | "
                     f"{statistics.median(cpu['now']['gw']):.2f} / "
                     f"{statistics.median(cpu['now']['wk']):.2f} | (info) |")
    if cpu["before"]["gw"]:
        lines.append(f"| row a-before CPU, us per event: gateway / worker | "
                     f"{statistics.median(cpu['before']['gw']):.2f} / "
                     f"{statistics.median(cpu['before']['wk']):.2f} | (info) |")
    mems = info["mem"]
    if mems:
        growth_gw = statistics.median(m["mem-gw"] - m["mem-gw0"] for m in mems)
        growth_wk = statistics.median(m["mem-wk"] - m["mem-wk0"] for m in mems)
        lines += [
            f"| (mem-gw) - (mem-gw0): gateway growth | {growth_gw:.1f} MiB | (info) |",
            f"| (mem-wk) - (mem-wk0): worker growth | {growth_wk:.1f} MiB | (info) |",
            "",
            f"mem: {len(mems)} run(s), each a fresh gateway; the worker was held back after "
            f"{statistics.median(m['held-after'] for m in mems):.2f} s (median), having "
            f"sent {statistics.median(m['emitted'] for m in mems):,.0f} of "
            f"{args.mem_events:,} events (median; range "
            f"{min(m['emitted'] for m in mems):,.0f} .. {max(m['emitted'] for m in mems):,.0f});"
            f" RSS sampled every 10 ms until {args.mem_hold:g} s later; kernel peak "
            f"(VmHWM) at the end: gateway {statistics.median(m['hwm-gw'] for m in mems):.1f}"
            f" MiB, worker {statistics.median(m['hwm-wk'] for m in mems):.1f} MiB (medians)",
        ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke mode: 1 run, small counts")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--events", type=int, default=200_000, help="events per burst (a, b64)")
    parser.add_argument("--single-events", type=int, default=20_000,
                        help="events for the one-per-response baseline (b1)")
    parser.add_argument("--slow-events", type=int, default=100_000,
                        help="events per burst of rows a-slow and s0")
    parser.add_argument("--slow-factor", type=float, default=10.0,
                        help="how many times slower than row a the a-slow client is")
    parser.add_argument("--mem-events", type=int, default=1_000_000,
                        help="events of the burst of the mem rows")
    parser.add_argument("--mem-hold", type=float, default=5.0,
                        help="seconds the mem rows measure on once the worker is held back")
    parser.add_argument("--mem-runs", type=int, default=None,
                        help="runs that include the mem rows (default: all)")
    parser.add_argument("--rows", default=",".join(ROW_GROUPS),
                        help="comma list of what to measure besides a and b64 (always, and "
                             "a-before with --baseline): slow (a-slow, s0), b1, c (c, cb, c0), "
                             "mem, act (i, i-track); default all")
    parser.add_argument("--opens", type=int, default=20, help="opens/spawns per run (c, c0)")
    parser.add_argument("--invokes", type=int, default=2000,
                        help="Invoke round trips per run of rows i and i-track")
    parser.add_argument("--core-only", action="store_true",
                        help="gateway with every plugin off (default: plugins as shipped)")
    parser.add_argument("--baseline", metavar="PATH",
                        help="a checkout of the code to compare row a with (row a-before)")
    parser.add_argument("--baseline-python", metavar="PY",
                        help="interpreter with PATH's sessiongate installed "
                             "(default: PATH/.venv/bin/python)")
    parser.add_argument("--profile", metavar="DIR",
                        help="write cProfile output of the gateway and its workers to DIR")
    parser.add_argument("--plain-server", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.plain_server:
        asyncio.run(_plain_server())
        return 0
    args.rows = {r.strip() for r in args.rows.split(",") if r.strip()}
    if args.rows - set(ROW_GROUPS):
        parser.error(f"--rows: choose from {', '.join(ROW_GROUPS)}")
    if args.quick:
        args.runs, args.events, args.single_events, args.opens = 1, 20_000, 3_000, 5
        args.slow_events, args.mem_events, args.mem_hold = 10_000, 100_000, 2.0
        args.invokes = 300
    if args.mem_runs is None:
        args.mem_runs = args.runs
    if args.baseline:
        args.baseline_python = baseline_python(args.baseline, args.baseline_python)

    workdir = pathlib.Path(tempfile.mkdtemp(prefix="sg-bench-"))
    runtime = pathlib.Path(tempfile.mkdtemp(prefix="sgb", dir="/tmp"))  # short socket paths
    old_runtime = pathlib.Path(tempfile.mkdtemp(prefix="sgo", dir="/tmp"))
    act_runtime = pathlib.Path(tempfile.mkdtemp(prefix="sga", dir="/tmp"))
    children: list[Child] = []
    try:
        plain = Child([sys.executable, os.path.abspath(__file__), "--plain-server"], workdir,
                      "plain")
        children.append(plain)
        gw, gw_address, key = start_gateway(workdir / "now", runtime, args.core_only,
                                            args.profile)
        children.append(gw)
        before = None
        old_pid = 0
        if args.baseline:
            old, old_address, old_key = start_gateway(
                workdir / "before", old_runtime, args.core_only,
                python=args.baseline_python, capacity=max(10000, args.events),
                name="gateway-before")
            children.append(old)
            before = (old_address, old_key)
            old_pid = old.proc.pid
        activity = None
        if "act" in args.rows:
            # its own gateway, so that the interceptor does not touch the other rows
            act_gw, act_address, act_key = start_gateway(
                workdir / "activity", act_runtime, args.core_only, name="gateway-activity",
                extra={"plugins.activity.enabled": True, "plugins.activity.sink": "file",
                       "plugins.activity.path": str(workdir / "activity" / "events.jsonl"),
                       "server.http_address": ""})  # the first gateway has the port
            children.append(act_gw)
            activity = (act_address, act_key, act_gw.proc.pid)
        plain_address = "127.0.0.1:" + plain.wait_for(r"(\d+)")
        results, info = asyncio.run(bench(args, gw_address, key, plain_address, runtime,
                                          before, workdir, (gw.proc.pid, old_pid), activity))
    finally:
        for child in reversed(children):
            child.stop()
        shutil.rmtree(workdir, ignore_errors=True)
        shutil.rmtree(runtime, ignore_errors=True)
        shutil.rmtree(old_runtime, ignore_errors=True)
        shutil.rmtree(act_runtime, ignore_errors=True)
    print("\n" + report(results, info, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
