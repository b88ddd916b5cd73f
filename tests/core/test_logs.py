"""Logs as an operator reads them: JSON lines with stable keys and the ids they concern,
and a threshold per logger (``log.levels``)."""

from __future__ import annotations

import json
import pathlib
import re
import signal
import subprocess
import sys
import time

import grpc
import pytest

from sessiongate.client import GatewayClient
from sessiongate.testing import stream_end, write_config

pytestmark = pytest.mark.once

KEYS = {"ts", "level", "logger", "msg"}
TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def _serve(config: pathlib.Path, cwd: pathlib.Path, log_path: pathlib.Path) -> tuple:
    with open(log_path, "wb") as err, open(cwd / "out.txt", "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sessiongate", "serve", "--config", str(config)],
            cwd=cwd, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while True:
        for line in log_path.read_text().splitlines():
            found = re.match(r"listening on (\S+)", json.loads(line)["msg"])
            if found:
                return proc, found.group(1), (cwd / "out.txt").read_text().strip()
        assert proc.poll() is None, log_path.read_text()
        assert time.monotonic() < deadline, log_path.read_text()
        time.sleep(0.02)  # a log file has no readiness event to wait on


@pytest.mark.asyncio
async def test_json_lines_carry_stable_keys_and_the_ids_they_concern(tmp_path, short_tmp):
    config = write_config(tmp_path / "s.toml", {
        "state_dir": str(tmp_path / "state"), "runtime_dir": str(short_tmp / "run"),
        "server.grpc_address": "127.0.0.1:0", "server.http_address": "127.0.0.1:0",
        "log.format": "json",
        # the server's lines down to DEBUG; everyone else's from WARNING only
        "log.level": "WARNING", "log.levels": {"sessiongate.server": "DEBUG"}})
    log_path = tmp_path / "json.log"
    proc, address, admin_key = _serve(config, tmp_path, log_path)
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            client = GatewayClient(channel, admin_key)
            sid = (await client.open(client_name="logs")).session_id
            call = client.stream(sid, subscriber_id="dash-1")
            assert (await call.read()).caught_up
            await client.close(sid)
            await stream_end(call)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log_path.read_text()
    records = [json.loads(line) for line in text.splitlines()]
    assert records and all(KEYS <= set(r) and TIMESTAMP.fullmatch(r["ts"]) for r in records)
    attached = [r for r in records if "attached" in r["msg"]]
    assert attached, text
    assert {k: attached[0].get(k) for k in ("session_id", "subscriber_id")} == \
        {"session_id": sid, "subscriber_id": "dash-1"}
    assert attached[0]["key_id"] and attached[0]["key_id"] in admin_key
    # log.levels: the server's INFO lines pass, nothing under WARNING from the others
    assert any(r["logger"] == "sessiongate.server" and r["level"] == "INFO"
               for r in records), text
    quieter = [r for r in records if not r["logger"].startswith("sessiongate.server")
               and r["level"] in ("DEBUG", "INFO")]
    assert not quieter, quieter
    assert admin_key not in text


def test_a_task_of_a_session_logs_with_its_id():
    """A session's (or its worker's) own tasks carry its id, outside any request."""
    import asyncio
    import io
    import logging

    from sessiongate.core.config.logs import JsonFormatter
    from sessiongate.core.tasks import OwnedTasks

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("sessiongate.test-logs")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)

    async def main() -> None:
        tasks = OwnedTasks(session_id="s-1")
        await tasks.spawn(asyncio.to_thread(logger.info, "in a thread"), "t")
        await tasks.spawn(_log(logger, "in a task"), "t")
        logger.info("outside")

    try:
        asyncio.run(main())
    finally:
        logger.removeHandler(handler)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [(r["msg"], r.get("session_id")) for r in lines] == [
        ("in a thread", "s-1"), ("in a task", "s-1"), ("outside", None)]


async def _log(logger, message: str) -> None:
    logger.info(message)


def test_an_owned_task_that_fails_is_logged_with_its_name(caplog):
    """Its owner may never await it: the failure must not wait for garbage collection."""
    import asyncio

    from sessiongate.core.tasks import OwnedTasks

    async def fails() -> None:
        raise RuntimeError("injected failure")

    async def main() -> None:
        tasks = OwnedTasks("s-2")
        done = asyncio.Event()
        task = tasks.spawn(fails(), "heartbeat")
        task.add_done_callback(lambda _: done.set())  # called after the owner's own
        await done.wait()

    asyncio.run(main())
    failed = [r for r in caplog.records if r.name == "sessiongate.tasks"]
    assert [r.getMessage() for r in failed] == ["task heartbeat:s-2 failed"]
    assert "injected failure" in str(failed[0].exc_info[1])
