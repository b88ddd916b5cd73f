"""Hook contract: every hookspec is called at its documented moment with its arguments.

One ``test_hook_<name>`` per hookspec in ``core/hookspecs.py`` (a meta-test at the
end enforces that). Each registers a small plugin through
``make_gateway(extra_plugins=(plugin,))`` - a real gateway, real workers, a real
gRPC server - and records what core passed and in which state.

These run in every tox env, whatever built-in plugins are on: the test plugin's
implementations are ``tryfirst`` and decision hooks answer with a non-``None``
value where the outcome must not depend on the env's plugins.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
import logging
import os
import signal
import sys
import types
from typing import Any

import grpc
import psutil
import pytest
from aiohttp import web

from sessiongate.core import counter, hookimpl, hookspecs, protocol
from sessiongate.core.config.settings import Setting, SettingsError
from sessiongate.core.errors import InvalidArgument, PermissionDenied, Unauthenticated
from sessiongate.core.gateway import BOOTSTRAP_KEY_FILE
from sessiongate.core.identity import Identity, LoginGrant
from sessiongate.core.plugin_api import GatewayAPI
from sessiongate.core.pluginhost import host as plugin_host
from sessiongate.core.sessions.session import SessionState
from sessiongate.core.streaming.events import Distributor, Subscription
from sessiongate.testing import end_released_worker, http_get, rpc_error, wait_for, write_config
from sessiongate.v1 import gateway_pb2

first = hookimpl(tryfirst=True)
TIMEOUT = 15.0
REATTACH_SWITCH = "SESSIONGATE_PLUGINS__REATTACH__ENABLED"
#: hooks around a session's start run whether its worker starts cold or as a spare
SPARES = pytest.mark.parametrize("spares", [{"workers.spare_workers": 0},
                                            {"workers.spare_workers": 1}],
                                 ids=["cold", "spare"])


def plugin(*impls: Any, name: str = "contract") -> Any:
    """A plugin object made of the given ``@hookimpl`` functions."""
    obj = types.SimpleNamespace(__name__=name)
    for impl in impls:
        setattr(obj, impl.__name__, impl)
    return obj


def spec_args(name: str) -> list[str]:
    return list(inspect.signature(getattr(hookspecs, name)).parameters)


def impl_args(func: Any) -> list[str]:
    return list(inspect.signature(func).parameters)


async def wait(event: asyncio.Event) -> None:
    await asyncio.wait_for(event.wait(), TIMEOUT)


def without_reattach(monkeypatch: pytest.MonkeyPatch) -> None:
    """Switch the reattach plugin off whatever the environment says (the tox matrix): it
    releases, records and adopts workers itself, and adds its own worker options."""
    monkeypatch.setenv(REATTACH_SWITCH, "false")


def _exists(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


# -- boot ----------------------------------------------------------------------------------


def test_hook_sg_add_validators(tmp_path):
    """Called once at load with the phase-1 settings; its failures join core's (exit 2)."""
    seen: list[Any] = []

    @hookimpl
    def sg_add_validators(settings):
        seen.append(settings.sessions.max_sessions)
        return [Setting("sessions.max_sessions", "at most 5 (contract)",
                        lambda v: v <= 5, "contract rule")]

    assert impl_args(sg_add_validators) == spec_args("sg_add_validators")
    ok = write_config(tmp_path / "ok.toml", {"sessions.max_sessions": 3})
    settings, _pm = plugin_host.load(str(ok), extra_plugins=(plugin(sg_add_validators),))
    assert seen == [3]
    assert settings.sessions.max_sessions == 3

    bad = write_config(tmp_path / "bad.toml", {"sessions.max_sessions": 10,
                                               "events.queue_capacity": 0})
    with pytest.raises(SettingsError) as error:
        plugin_host.load(str(bad), extra_plugins=(plugin(sg_add_validators),))
    problems = error.value.problems
    assert any("events.queue_capacity = 0" in p for p in problems), problems
    assert any("sessions.max_sessions = 10" in p and "at most 5" in p for p in problems)


def test_hook_sg_secret_settings(tmp_path, monkeypatch, capsys):
    """``check-config`` redacts the keys the hook names."""
    from sessiongate.core.cli import commands as cli

    @first
    def sg_secret_settings():
        return ["workers.backend"]

    assert impl_args(sg_secret_settings) == spec_args("sg_secret_settings")
    monkeypatch.setattr(plugin_host, "load", functools.partial(
        plugin_host.load, extra_plugins=(plugin(sg_secret_settings),)))
    config = write_config(tmp_path / "s.toml", {"state_dir": str(tmp_path / "state")})
    assert cli.main(["check-config", "--config", str(config)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert 'workers.backend = "***"' in out
    assert "sessions.max_sessions = 1000" in out


def test_hook_sg_cli_commands(tmp_path, monkeypatch):
    """Collected when the command line is built; the command runs with the settings."""
    from sessiongate.core import PluginCommand
    from sessiongate.core.cli import commands as cli

    ran = []

    @first
    def sg_cli_commands():
        return [PluginCommand(
            name="contract-cmd", help="a contract command",
            add_arguments=lambda parser: parser.add_argument("word"),
            run=lambda args, settings: ran.append((args.word, settings.state_dir)) or 0)]

    assert impl_args(sg_cli_commands) == spec_args("sg_cli_commands")
    contract = plugin(sg_cli_commands)
    monkeypatch.setattr(plugin_host, "make_plugin_manager", functools.partial(
        plugin_host.make_plugin_manager, extra_plugins=(contract,)))
    monkeypatch.setattr(plugin_host, "load", functools.partial(
        plugin_host.load, extra_plugins=(contract,)))
    config = write_config(tmp_path / "s.toml", {"state_dir": str(tmp_path / "state")})
    assert cli.main(["contract-cmd", "hello", "--config", str(config)]) == 0
    assert ran == [("hello", str(tmp_path / "state"))]


@pytest.mark.asyncio
async def test_hook_sg_worker_backends(make_gateway):
    """Collected when the gateway is built; a session may then name the backend."""
    calls = []

    @first
    def sg_worker_backends():
        calls.append(True)
        return {"contract-sim": "sessiongate.core.sdk.sim:Sim"}

    assert impl_args(sg_worker_backends) == spec_args("sg_worker_backends")
    gw = await make_gateway(extra_plugins=(plugin(sg_worker_backends),))
    assert calls == [True]
    assert gw.gateway.backends["contract-sim"] == "sessiongate.core.sdk.sim:Sim"
    client = gw.client()
    info = await client.open(backend="contract-sim")
    assert info.backend == "contract-sim"
    assert await client.invoke_json(info.session_id, "echo", [1]) == [1]
    error = await rpc_error(client.open(backend="nope"))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "contract-sim" in error.details()


@pytest.mark.asyncio
async def test_hook_sg_metrics(make_gateway, caplog):
    """Collected once, when the gateway is built (before ``sg_startup``); what it declares
    is counted through ``gateway.metrics`` and shown on ``/metrics``; a declaration with a
    problem is logged, naming it, and left out."""
    calls: list[str] = []

    @first
    def sg_metrics():
        calls.append("declared")
        return [counter("contract_opened", "Sessions opened (contract).",
                        {"worker": ("spare", "cold")}),
                counter("opened_elsewhere", "Not under the plugin's name.")]

    @first
    def sg_startup(gateway):
        calls.append("startup")

    @first
    async def sg_session_opened(gateway, session):
        gateway.metrics.inc("contract_opened", worker="cold")

    assert impl_args(sg_metrics) == spec_args("sg_metrics")
    gw = await make_gateway(extra_plugins=(plugin(sg_metrics, sg_startup, sg_session_opened),))
    assert calls == ["declared", "startup"]
    assert "contract: metric 'opened_elsewhere': a plugin's metric names start with its " \
        "name (contract_); left out" in caplog.messages
    await gw.client().open()
    assert gw.gateway.metrics.get("contract_opened", worker="cold") == 1
    status, text = await http_get(gw.http_address, "/metrics")
    assert status == 200
    assert 'sessiongate_contract_opened_total{worker="cold"} 1.0' in text.splitlines()
    assert "opened_elsewhere" not in text


@pytest.mark.asyncio
async def test_hook_sg_startup(make_gateway):
    """Awaited during ``Gateway.start`` with the GatewayAPI: storage open, no session yet,
    before the server accepts calls."""
    seen: dict[str, Any] = {}

    @first
    async def sg_startup(gateway):
        seen["gateway"] = gateway
        # storage is open: the bootstrap admin key, created just before, is active
        key = (gateway.state_dir / BOOTSTRAP_KEY_FILE).read_text().strip()
        seen["bootstrap_active"] = await gateway.key_is_active(key.split("_")[1])
        seen["unknown_active"] = await gateway.key_is_active("000000000000")
        seen["sessions"] = gateway.sessions()
        seen["settings"] = gateway.settings
        await asyncio.sleep(0)  # may be async: awaited before start() returns

    assert impl_args(sg_startup) == spec_args("sg_startup")
    gw = await make_gateway(extra_plugins=(plugin(sg_startup),))
    assert isinstance(seen["gateway"], GatewayAPI)
    assert seen["gateway"] is gw.gateway.api
    assert seen["bootstrap_active"] is True and seen["unknown_active"] is False
    assert seen["sessions"] == []
    assert seen["settings"] is gw.settings


@pytest.mark.asyncio
async def test_hook_sg_shutdown(make_gateway):
    """Awaited during ``Gateway.stop``, once: no new session is accepted, every session has
    ended, and the tasks spawned with ``gateway.spawn`` were cancelled and awaited."""
    seen: list[Any] = []
    order: list[str] = []
    tasks: list[asyncio.Task[Any]] = []
    handle: dict[str, Any] = {}

    async def owned() -> None:
        try:
            await asyncio.Event().wait()  # until cancelled
        finally:
            await asyncio.sleep(0)  # a clean-up that must be awaited to complete
            order.append("task cleaned up")

    @first
    def sg_startup(gateway):
        tasks.append(gateway.spawn(owned(), "contract-owned"))

    @first
    async def sg_session_closed(gateway, session, reason):
        order.append("session ended")

    @first
    async def sg_session_released(gateway, session):  # (with reattach on)
        order.append("session ended")

    @first
    async def sg_shutdown(gateway):
        order.append("shutdown")
        task = tasks[0]
        seen.append({"gateway": gateway, "accepting": handle["gw"].gateway.sessions.accepting,
                     "sessions": gateway.sessions(), "task_done": task.done(),
                     "task_cancelled": task.cancelled()})

    assert impl_args(sg_shutdown) == spec_args("sg_shutdown")
    gw = await make_gateway(extra_plugins=(plugin(sg_startup, sg_session_closed,
                                                  sg_session_released, sg_shutdown),))
    handle["gw"] = gw
    await gw.client().open()
    assert seen == [] and not tasks[0].done()
    await gw.stop()
    assert seen == [{"gateway": gw.gateway.api, "accepting": False, "sessions": [],
                     "task_done": True, "task_cancelled": True}]
    assert order == ["session ended", "task cleaned up", "shutdown"]


# -- sessions ------------------------------------------------------------------------------


@SPARES
@pytest.mark.asyncio
async def test_hook_sg_session_open(make_gateway, spares):
    """Before the worker starts, fields set; a GatewayError vetoes with its status code."""
    seen: list[dict[str, Any]] = []

    @first
    async def sg_session_open(gateway, session, identity):
        await asyncio.sleep(0)  # may be async
        seen.append({"state": session.state,
                     "live": gateway.session(session.session_id) is not None,
                     "client_name": session.client_name, "tag": session.tag,
                     "backend": session.backend, "owner": session.owner_key_id,
                     "identity": identity.key_id})
        if session.client_name == "refused":
            raise InvalidArgument("contract: refused by a plugin")

    assert impl_args(sg_session_open) == spec_args("sg_session_open")
    gw = await make_gateway(extra_plugins=(plugin(sg_session_open),), **spares)
    client = gw.client()
    info = await client.open(client_name="ok", tag="t1")
    # (its worker may already run: a spare, workers.spare_workers, waiting for "go")
    assert seen[0] == {"state": SessionState.OPENING, "live": False, "client_name": "ok",
                       "tag": "t1", "backend": "sim", "owner": info.owner_key_id,
                       "identity": info.owner_key_id}
    error = await rpc_error(client.open(client_name="refused"))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "contract: refused by a plugin"
    assert len(seen) == 2
    assert [s.client_name for s in gw.gateway.sessions.live.values()] == ["ok"]


@pytest.mark.asyncio
async def test_hook_sg_session_opened(make_gateway):
    """Once the worker is Ready and the session READY, before OpenSession returns."""
    seen: list[Any] = []

    @first
    async def sg_session_opened(gateway, session):
        seen.append((session.session_id, session.state, session.worker.pid))

    assert impl_args(sg_session_opened) == spec_args("sg_session_opened")
    gw = await make_gateway(extra_plugins=(plugin(sg_session_opened),))
    info = await gw.client().open()
    session = gw.gateway.sessions.get(info.session_id)
    assert seen == [(info.session_id, SessionState.READY, session.worker.pid)]


@pytest.mark.asyncio
async def test_hook_sg_session_state_changed(make_gateway):
    """Every transition, synchronously inside it (the session already has the new state)."""
    seen: list[tuple[str, str, str, str]] = []

    @first
    def sg_session_state_changed(gateway, session, old, new, reason):
        assert session.state == new
        seen.append((session.session_id, old, new, reason))

    assert impl_args(sg_session_state_changed) == spec_args("sg_session_state_changed")
    gw = await make_gateway(extra_plugins=(plugin(sg_session_state_changed),))
    client = gw.client()
    sid = (await client.open()).session_id
    await client.close(sid)
    mine = [(old, new) for s, old, new, _r in seen if s == sid]
    assert mine == [("OPENING", "READY"), ("READY", "CLOSING"), ("CLOSING", "CLOSED")]
    assert all(r for s, _o, new, r in seen if s == sid and new in ("CLOSING", "CLOSED"))

    crashed = (await client.open()).session_id
    await rpc_error(client.invoke_json(crashed, "fail", {"exit_code": 3}))
    session = gw.gateway.sessions.get(crashed)
    await asyncio.wait_for(session.ended.wait(), TIMEOUT)
    faults = [(old, new, r) for s, old, new, r in seen if s == crashed and new == "FAULTED"]
    assert len(faults) == 1 and faults[0][0] == "READY" and faults[0][2]


@pytest.mark.asyncio
async def test_hook_sg_session_closed(make_gateway):
    """Once per session, when it reached CLOSED or FAULTED, with a reason for people."""
    seen: list[tuple[str, str, str]] = []
    closed = asyncio.Event()

    @first
    async def sg_session_closed(gateway, session, reason):
        seen.append((session.session_id, session.state, reason))
        closed.set()

    assert impl_args(sg_session_closed) == spec_args("sg_session_closed")
    gw = await make_gateway(extra_plugins=(plugin(sg_session_closed),))
    client = gw.client()
    sid = (await client.open()).session_id
    await client.close(sid)
    await client.close(sid)  # idempotent: not a second call
    assert seen == [(sid, SessionState.CLOSED, seen[0][2])]
    assert seen[0][2]

    closed.clear()
    crashed = (await client.open()).session_id
    await rpc_error(client.invoke_json(crashed, "fail", {"exit_code": 3}))
    await wait(closed)
    assert seen[1][0] == crashed
    assert seen[1][1] in (SessionState.CLOSED, SessionState.FAULTED)
    assert "3" in seen[1][2]


def releasing_plugin(release: set[str], records: dict[str, Any], seen: list[Any]) -> Any:
    """Gateway A's side of a restart (what the reattach plugin does, in miniature): workers
    outlive their connection and keep a history; the sessions in ``release`` are released
    at shutdown; ``records`` gets each session's adoption record once it is READY."""

    @first
    def sg_worker_options(gateway, session):
        return {"orphan_lifetime": 60.0, "history": 16}

    @first
    def sg_worker_release(gateway, session):
        return session.session_id in release

    @first
    async def sg_session_opened(gateway, session):
        records[session.session_id] = gateway.adoption_record(session)

    @first
    async def sg_session_released(gateway, session):
        seen.append(("released", session.session_id, session.released,
                     gateway.session(session.session_id), gateway))

    @first
    async def sg_session_closed(gateway, session, reason):
        seen.append(("closed", session.session_id))

    return plugin(sg_worker_options, sg_worker_release, sg_session_opened,
                  sg_session_released, sg_session_closed)


async def release_at_shutdown(make_gateway: Any) -> dict[str, Any]:
    """Gateway A opens ``kept`` (released at shutdown, one event written) and ``stopped``
    (not released), then stops. Returns what the test needs to know of it."""
    release: set[str] = set()
    records: dict[str, Any] = {}
    seen: list[Any] = []
    gw = await make_gateway(extra_plugins=(releasing_plugin(release, records, seen),))
    client = gw.client()
    kept = await client.open(client_name="kept", tag="t1")
    stopped = (await client.open(client_name="stopped")).session_id
    await client.invoke_json(kept.session_id, "write", {"tag": "t", "value": 41})  # event 1
    release.add(kept.session_id)
    workers = {sid: gw.gateway.sessions.get(sid).worker
               for sid in (kept.session_id, stopped)}
    await gw.stop()
    return {"gw": gw, "kept": kept, "stopped": stopped, "records": records, "seen": seen,
            "worker": workers[kept.session_id], "stopped_pid": workers[stopped].pid}


async def reap(process: Any) -> None:
    """End a released worker, our child, and reap it through asyncio; it is gone
    afterwards."""
    await end_released_worker(process, TIMEOUT)


@pytest.mark.asyncio
async def test_hook_sg_session_released(make_gateway, monkeypatch):
    """At shutdown, once per session whose worker was released (instead of
    ``sg_session_closed``): the session has ended in this gateway, its worker runs on."""
    without_reattach(monkeypatch)  # it would release (and record) every session itself
    assert impl_args(releasing_plugin(set(), {}, []).sg_session_released) == \
        spec_args("sg_session_released")
    a = await release_at_shutdown(make_gateway)
    kept, worker = a["kept"].session_id, a["worker"]
    try:
        # (sessions end concurrently at shutdown: the two hooks' order is not fixed)
        assert [s for s in a["seen"] if s[0] == "released"] == \
            [("released", kept, True, None, a["gw"].gateway.api)]
        assert [s for s in a["seen"] if s[0] == "closed"] == [("closed", a["stopped"])]
        assert _exists(worker.pid), "a released worker must be left running"
        assert worker in a["gw"].gateway.sessions.released
        assert not _exists(a["stopped_pid"])
    finally:
        await reap(worker.process)
    assert not _exists(worker.pid)


@pytest.mark.asyncio
async def test_hook_sg_session_adopted(make_gateway, monkeypatch):
    """A later gateway on the same state dir adopts the released worker at
    ``sg_startup`` (``gateway.adopt_session``): the session is READY again with its id,
    owner and worker, and ``sg_session_adopted`` fires instead of ``sg_session_opened``."""
    without_reattach(monkeypatch)  # it would adopt the same worker from its own records
    a = await release_at_shutdown(make_gateway)
    kept, worker = a["kept"], a["worker"]
    sid = kept.session_id
    record = a["records"][sid]
    assert record is not None and record.session_id == sid and record.pid == worker.pid
    frames: list[tuple[str, str, list[int]]] = []
    adopted: list[Any] = []
    opened: list[str] = []
    returned: list[Any] = []

    def on_frame(session, frame):
        kind = frame.WhichOneof("body")
        sequences = ([frame.adopt.last_sequence] if kind == "adopt"
                     else [e.sequence for e in frame.history.events])
        frames.append((session.session_id, kind, sequences))

    @first
    async def sg_startup(gateway):
        returned.append(await gateway.adopt_session(record, window=TIMEOUT,
                                                    on_frame=on_frame))

    @first
    async def sg_session_adopted(gateway, session):
        adopted.append((session.session_id, session.state, gateway,
                        gateway.session(session.session_id) is session, session.worker.pid))

    @first
    async def sg_session_opened(gateway, session):
        opened.append(session.session_id)

    assert impl_args(sg_session_adopted) == spec_args("sg_session_adopted")
    try:
        gw = await make_gateway(extra_plugins=(plugin(sg_startup, sg_session_adopted,
                                                      sg_session_opened),))
        session = gw.gateway.sessions.get(sid)
        assert returned == [session]
        assert adopted == [(sid, SessionState.READY, gw.gateway.api, True, worker.pid)]
        assert opened == []
        # the worker's account: its position, then the history it kept (option "history")
        assert frames == [(sid, "adopt", [1]), (sid, "history", [1])]

        client = gw.client(a["gw"].admin_key)  # the same key store: the same owner
        info = await client.get(sid)
        assert info.state == gateway_pb2.READY
        assert (info.owner_key_id, info.client_name, info.tag) == \
            (kept.owner_key_id, "kept", "t1")
        assert await client.invoke_json(sid, "echo", ["adopted"]) == ["adopted"]
        # the same process: it still holds what was written through gateway A
        assert await client.invoke_json(sid, "read", {"tag": "t"}) == {"tag": "t", "value": 41}
        await client.close(sid)  # stops the adopted worker
        await asyncio.wait_for(worker.process.wait(), TIMEOUT)
        assert not _exists(worker.pid)
    finally:
        await reap(worker.process)


# -- identity ------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_hook_sg_authenticate(make_gateway):
    """Called with the text after ``Bearer``; None lets core check API keys."""
    seen: list[str] = []

    @first
    def sg_authenticate(gateway, credential):
        seen.append(credential)
        if credential == "contract-token":
            return Identity(key_id="contract-1", name="contract",
                            scopes=frozenset({"sessions:admin"}), kind="token")
        if credential == "expired-token":
            raise Unauthenticated("contract: token expired")
        return None

    assert impl_args(sg_authenticate) == spec_args("sg_authenticate")
    gw = await make_gateway(extra_plugins=(plugin(sg_authenticate),))
    info = await gw.client("contract-token").open()
    assert info.owner_key_id == "contract-1"
    assert seen == ["contract-token"]
    admin = await gw.client().open()  # an API key: the hook abstains, core verifies it
    assert admin.owner_key_id != "contract-1"
    assert seen[-1] == gw.admin_key
    error = await rpc_error(gw.client("expired-token").open())
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error.details() == "contract: token expired"
    error = await rpc_error(gw.client("unknown").open())
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.asyncio
async def test_hook_sg_authorize(make_gateway):
    """Asked for every action with the session concerned (None for open); False refuses."""
    seen: list[tuple[str, str | None, str]] = []

    @first
    def sg_authorize(gateway, identity, action, session):
        seen.append((action, session.session_id if session else None, identity.key_id))
        return False if action == "invoke" else None

    assert impl_args(sg_authorize) == spec_args("sg_authorize")
    gw = await make_gateway(extra_plugins=(plugin(sg_authorize),))
    client = gw.client()
    info = await client.open()
    sid, key = info.session_id, info.owner_key_id
    await client.get(sid)
    assert [s.session_id for s in await client.list()] == [sid]
    error = await rpc_error(client.invoke_json(sid, "echo", {}))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    call = client.stream(sid)
    assert (await call.read()).caught_up
    call.cancel()
    await client.close(sid)
    assert seen == [("open", None, key), ("get", sid, key), ("list", sid, key),
                    ("invoke", sid, key), ("stream", sid, key), ("close", sid, key)]


@pytest.mark.asyncio
async def test_hook_sg_login(make_gateway, caplog):
    """Serves the Login RPC (no API key needed): a LoginGrant answers, ``Unauthenticated``
    refuses with its message, and with every implementation returning None Login is
    UNIMPLEMENTED."""
    seen: list[tuple[Any, str, str]] = []
    expires = 2_000_000_000.0

    @first
    async def sg_login(gateway, username, password, peer):
        assert peer.startswith(("ipv4:127.0.0.1:", "ipv6:[::1]:")), peer
        seen.append((gateway, username, password))
        await asyncio.sleep(0)  # may be async
        if username != "alice":
            return None  # not mine: the next implementation (acl: LDAP off) abstains too
        if password != "alice-pw":
            raise Unauthenticated("contract: wrong username or password")
        return LoginGrant(token="contract-login-token", expires_at=expires, admin=True,
                          tags=("t2", "t1"))

    assert impl_args(sg_login) == spec_args("sg_login")
    caplog.set_level(logging.DEBUG)
    gw = await make_gateway(extra_plugins=(plugin(sg_login),))
    anon = gw.client("")
    response = await anon.login("alice", "alice-pw")
    assert response.token == "contract-login-token"
    assert response.expires_at.seconds == int(expires)
    assert response.admin is True
    assert list(response.tags) == ["t1", "t2"]
    assert seen == [(gw.gateway.api, "alice", "alice-pw")]

    error = await rpc_error(anon.login("alice", "wrong"))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error.details() == "contract: wrong username or password"

    error = await rpc_error(anon.login("bob", "bob-pw"))
    assert error.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "sg_login" in error.details()
    assert [s[1:] for s in seen] == [("alice", "alice-pw"), ("alice", "wrong"),
                                     ("bob", "bob-pw")]
    # core never logs a password
    assert not [r for r in caplog.records if "-pw" in r.getMessage()]


# -- events --------------------------------------------------------------------------------


class ContractDistributor(Distributor):
    """Core's single-subscriber distributor, under another name."""


@SPARES
@pytest.mark.asyncio
async def test_hook_sg_make_distributor(make_gateway, spares):
    """Once per session, before its worker starts; the first non-None result is used."""
    seen: list[Any] = []

    @first
    def sg_make_distributor(gateway, session, settings):
        seen.append((session.session_id, session.state, settings))
        options = gateway.distributor_options(session)
        return ContractDistributor(**options)

    assert impl_args(sg_make_distributor) == spec_args("sg_make_distributor")
    gw = await make_gateway(extra_plugins=(plugin(sg_make_distributor),), **spares)
    client = gw.client()
    sid = (await client.open()).session_id
    assert seen == [(sid, SessionState.OPENING, gw.settings)]
    session = gw.gateway.sessions.get(sid)
    assert isinstance(session.distributor, ContractDistributor)
    call = client.stream(sid)
    assert (await call.read()).caught_up
    await client.invoke_json(sid, "write", {"tag": "t", "value": 1})
    response = await call.read()
    assert [e.kind for e in response.events] == ["data_change"]
    second = client.stream(sid)  # core's distributor: one external subscriber
    error = await rpc_error(second.read())
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS
    call.cancel()


@pytest.mark.asyncio
async def test_hook_sg_replay_supported(make_gateway):
    """Asked only for a stream with ``after_sequence``; no True → FAILED_PRECONDITION."""
    seen: list[str] = []

    @first
    def sg_replay_supported(gateway, session):
        seen.append(session.session_id)
        return False

    assert impl_args(sg_replay_supported) == spec_args("sg_replay_supported")
    gw = await make_gateway(extra_plugins=(plugin(sg_replay_supported),))
    client = gw.client()
    sid = (await client.open()).session_id
    live = client.stream(sid)
    assert (await live.read()).caught_up
    live.cancel()
    assert seen == []
    error = await rpc_error(client.stream(sid, after_sequence=0).read())
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    # core names the hook, never a plugin: which plugin resumes streams is not its business
    assert "sg_replay_supported" in error.details()
    assert "reconnect" not in error.details()
    assert seen == [sid]


@pytest.mark.asyncio
async def test_hook_sg_stream_keeps_alive(make_gateway):
    """Asked per stream with the caller's identity; False makes the stream a watcher."""
    seen: list[tuple[str, str]] = []

    @first
    def sg_stream_keeps_alive(gateway, session, identity):
        seen.append((session.session_id, identity.key_id))
        return False

    assert impl_args(sg_stream_keeps_alive) == spec_args("sg_stream_keeps_alive")
    gw = await make_gateway(extra_plugins=(plugin(sg_stream_keeps_alive),))
    client = gw.client()
    info = await client.open()
    call = client.stream(info.session_id)
    assert (await call.read()).caught_up
    assert seen == [(info.session_id, info.owner_key_id)]
    session = gw.gateway.sessions.get(info.session_id)
    subs = [s for s in session.distributor.subscriptions if s.external]
    assert len(subs) == 1 and subs[0].keeps_alive is False
    assert not session.kept_alive()
    call.cancel()


@pytest.mark.asyncio
async def test_hook_sg_subscriber_attach(make_gateway):
    """After the authorisation decision, with the request; a GatewayError vetoes."""
    seen: list[Any] = []

    @first
    def sg_authorize(gateway, identity, action, session):
        seen.append(("authorize", action))

    @first
    async def sg_subscriber_attach(gateway, session, identity, request):
        seen.append(("attach", session.session_id, identity.key_id, request.subscriber_id))
        if request.subscriber_id == "refused":
            raise PermissionDenied("contract: no stream for you")

    @first
    def sg_subscriber_attached(gateway, session, subscription):
        seen.append(("attached", subscription.subscriber_id))

    assert impl_args(sg_subscriber_attach) == spec_args("sg_subscriber_attach")
    gw = await make_gateway(extra_plugins=(plugin(sg_authorize, sg_subscriber_attach,
                                                  sg_subscriber_attached),))
    client = gw.client()
    info = await client.open()
    sid = info.session_id
    seen.clear()
    error = await rpc_error(client.stream(sid, subscriber_id="refused").read())
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert error.details() == "contract: no stream for you"
    assert seen == [("authorize", "stream"), ("attach", sid, info.owner_key_id, "refused")]
    seen.clear()
    call = client.stream(sid, subscriber_id="s1")
    assert (await call.read()).caught_up
    assert seen == [("authorize", "stream"), ("attach", sid, info.owner_key_id, "s1"),
                    ("attached", "s1")]
    call.cancel()


@pytest.mark.asyncio
async def test_hook_sg_subscriber_attached(make_gateway):
    """Once the subscription is registered, before the stream's first response."""
    seen: list[Any] = []

    @first
    def sg_subscriber_attached(gateway, session, subscription):
        seen.append((session.session_id, subscription,
                     subscription in session.distributor.subscriptions))

    assert impl_args(sg_subscriber_attached) == spec_args("sg_subscriber_attached")
    gw = await make_gateway(extra_plugins=(plugin(sg_subscriber_attached),))
    client = gw.client()
    sid = (await client.open()).session_id
    call = client.stream(sid, subscriber_id="s1")
    assert (await call.read()).caught_up
    assert len(seen) == 1
    got_sid, sub, registered = seen[0]
    assert got_sid == sid and registered
    assert isinstance(sub, Subscription) and sub.subscriber_id == "s1" and sub.external
    call.cancel()


@pytest.mark.asyncio
async def test_hook_sg_subscriber_detached(make_gateway):
    """Once per subscription that ends, with the same object and a reason."""
    attached: list[Subscription] = []
    detached: list[tuple[Subscription, str]] = []
    gone = asyncio.Event()

    @first
    def sg_subscriber_attached(gateway, session, subscription):
        attached.append(subscription)

    @first
    def sg_subscriber_detached(gateway, session, subscription, reason):
        assert subscription not in session.distributor.subscriptions
        detached.append((subscription, reason))
        gone.set()

    assert impl_args(sg_subscriber_detached) == spec_args("sg_subscriber_detached")
    gw = await make_gateway(extra_plugins=(plugin(sg_subscriber_attached,
                                                  sg_subscriber_detached),))
    client = gw.client()
    sid = (await client.open()).session_id
    call = client.stream(sid)
    assert (await call.read()).caught_up
    call.cancel()  # the client goes away
    await wait(gone)
    assert [(s, bool(r)) for s, r in detached] == [(attached[0], True)]

    gone.clear()
    call = client.stream(sid)
    assert (await call.read()).caught_up
    await client.close(sid)  # the session ends under the stream
    await wait(gone)
    assert len(detached) == 2 and detached[1][0] is attached[1] and detached[1][1]
    assert await call.read() is grpc.aio.EOF


@pytest.mark.asyncio
async def test_hook_sg_internal_subscribers(make_gateway):
    """Asked once per session when READY; each consumer runs as a task with its own
    internal subscription, which counts toward no cap and keeps nothing alive."""
    seen: list[Any] = []
    got: list[int] = []
    done = asyncio.Event()

    async def consumer(session, subscription):
        seen.append(("consumer", subscription.external, subscription.keeps_alive))
        while len(got) < 5:
            item = await subscription.next(100)
            if item is None:
                break
            got.extend(e.sequence for e in item[1])
        done.set()

    @first
    def sg_internal_subscribers(gateway, session):
        seen.append(("asked", session.state))
        return [consumer]

    assert impl_args(sg_internal_subscribers) == spec_args("sg_internal_subscribers")
    gw = await make_gateway(extra_plugins=(plugin(sg_internal_subscribers),))
    client = gw.client()
    sid = (await client.open()).session_id
    assert seen[0] == ("asked", SessionState.READY)
    external = client.stream(sid)  # still admitted, even by core's one-subscriber rule
    assert (await external.read()).caught_up
    await client.invoke_json(sid, "burst", {"count": 5, "size": 8})
    await wait(done)
    assert got == [1, 2, 3, 4, 5]
    assert seen[1] == ("consumer", False, False)
    session = gw.gateway.sessions.get(sid)
    assert session.distributor.external_count == 1
    external.cancel()


# -- workers -------------------------------------------------------------------------------


@SPARES
@pytest.mark.asyncio
async def test_hook_sg_worker_options(make_gateway, monkeypatch, spares):
    """Once per worker start (spares too), before ``sg_worker_launch``; the merged options
    reach the worker SDK (the options JSON in its environment)."""
    without_reattach(monkeypatch)  # its options would be merged in as well
    calls: list[Any] = []
    launched: dict[str, dict[str, Any]] = {}

    @first
    def sg_worker_options(gateway, session):
        calls.append(("options", session.session_id, session.state, gateway))
        return {"history": 7}

    @first
    def sg_worker_launch(gateway, session, argv, env):
        calls.append(("launch", session.session_id))
        launched[session.session_id] = json.loads(env[protocol.OPTIONS_ENV])

    def second_plugin() -> Any:
        @hookimpl
        def sg_worker_options(gateway, session):  # merged with the first plugin's
            return {"contract-extra": session.session_id}

        return plugin(sg_worker_options, name="contract-2")

    assert impl_args(sg_worker_options) == spec_args("sg_worker_options")
    gw = await make_gateway(extra_plugins=(plugin(sg_worker_options, sg_worker_launch),
                                           second_plugin()), **spares)
    sid = (await gw.client().open()).session_id
    mine = [c for c in calls if c[1] == sid]  # (spares: see the endpoint test)
    assert mine == [("options", sid, SessionState.OPENING, gw.gateway.api), ("launch", sid)]
    # every worker start, spare or not: asked once, right before its launch
    assert len([c for c in calls if c[0] == "options"]) == len(launched)
    assert all(calls[i][0] == "options" and calls[i + 1] == ("launch", calls[i][1])
               for i in range(0, len(calls), 2))
    assert launched[sid]["history"] == 7 and launched[sid]["contract-extra"] == sid
    assert launched[sid]["backend_name"] == "sim"  # core's own key is kept
    pid = gw.gateway.sessions.get(sid).worker.pid
    options = json.loads(psutil.Process(pid).environ()[protocol.OPTIONS_ENV])
    assert options == launched[sid]


@SPARES
@pytest.mark.asyncio
async def test_hook_sg_worker_endpoint(make_gateway, spares):
    """Asked once per session before its worker starts; the first answer is the socket."""
    seen: list[Any] = []

    @first
    def sg_worker_endpoint(gateway, session, runtime_dir):
        seen.append((session.session_id, session.state, session.worker, runtime_dir))
        return os.path.join(runtime_dir, f"contract-{session.session_id[:8]}.sock")

    assert impl_args(sg_worker_endpoint) == spec_args("sg_worker_endpoint")
    gw = await make_gateway(extra_plugins=(plugin(sg_worker_endpoint),), **spares)
    client = gw.client()
    sid = (await client.open()).session_id
    runtime = str(gw.gateway.runtime_dir)
    # once per worker start; a spare worker (workers.spare_workers) is started ahead of
    # the session it will serve, so calls for sessions not opened yet may follow
    assert [entry for entry in seen if entry[0] == sid] == \
        [(sid, SessionState.OPENING, None, runtime)]
    assert all(entry[1:] == (SessionState.OPENING, None, runtime) for entry in seen)
    session = gw.gateway.sessions.get(sid)
    assert session.worker.socket_path == os.path.join(runtime, f"contract-{sid[:8]}.sock")
    assert await client.invoke_json(sid, "echo", "via the chosen socket") == \
        "via the chosen socket"


@SPARES
@pytest.mark.asyncio
async def test_hook_sg_worker_launch(make_gateway, spares):
    """Just before the worker process starts; changes to ``env`` reach the process."""
    seen: list[Any] = []

    @first
    def sg_worker_launch(gateway, session, argv, env):
        seen.append((session.session_id, session.state, session.worker.process, list(argv)))
        env["SG_CONTRACT_MARK"] = session.session_id

    assert impl_args(sg_worker_launch) == spec_args("sg_worker_launch")
    gw = await make_gateway(extra_plugins=(plugin(sg_worker_launch),), **spares)
    sid = (await gw.client().open()).session_id
    mine = [entry[1:] for entry in seen if entry[0] == sid]  # (spares: see endpoint test)
    assert len(mine) == 1
    state, process, argv = mine[0]
    assert state == SessionState.OPENING and process is None
    assert argv and all(isinstance(a, str) for a in argv)
    pid = gw.gateway.sessions.get(sid).worker.pid
    assert psutil.Process(pid).environ().get("SG_CONTRACT_MARK") == sid


@pytest.mark.asyncio
async def test_hook_sg_worker_release(make_gateway):
    """Asked per live session at shutdown; False (or None) stops the worker, True leaves
    it running for a later gateway to adopt."""
    seen: list[tuple[str, str]] = []
    release: set[str] = set()

    @first
    def sg_worker_release(gateway, session):
        seen.append((session.session_id, session.state))
        return session.session_id in release

    @first
    def sg_worker_launch(gateway, session, argv, env):
        # What the reattach plugin does: the worker outlives its connection (phones home).
        options = json.loads(env.get(protocol.OPTIONS_ENV) or "{}")
        env[protocol.OPTIONS_ENV] = json.dumps({**options, "orphan_lifetime": 60.0})

    assert impl_args(sg_worker_release) == spec_args("sg_worker_release")
    gw = await make_gateway(extra_plugins=(plugin(sg_worker_release, sg_worker_launch),))
    client = gw.client()
    kept = (await client.open()).session_id
    stopped = (await client.open()).session_id
    ended = (await client.open()).session_id
    await client.close(ended)
    release.add(kept)
    pids = {sid: gw.gateway.sessions.get(sid).worker.pid for sid in (kept, stopped)}
    kept_process = gw.gateway.sessions.get(kept).worker.process
    try:
        await gw.stop()
        assert sorted(seen) == sorted([(kept, SessionState.CLOSING),
                                       (stopped, SessionState.CLOSING)])
        assert not _exists(pids[stopped])
        assert _exists(pids[kept]), "a released worker must be left running"
    finally:
        if kept_process.returncode is None:
            await end_released_worker(kept_process, TIMEOUT)
            for _ in range(3):
                await asyncio.sleep(0)


@pytest.mark.asyncio
async def test_hook_sg_worker_exited(make_gateway):
    """When the worker process has been reaped: its pid and exit status."""
    seen: list[tuple[str, int, int | None]] = []
    exited = asyncio.Event()

    @first
    async def sg_worker_exited(gateway, session, pid, returncode):
        seen.append((session.session_id, pid, returncode))
        exited.set()

    assert impl_args(sg_worker_exited) == spec_args("sg_worker_exited")
    gw = await make_gateway(extra_plugins=(plugin(sg_worker_exited),))
    client = gw.client()
    sid = (await client.open()).session_id
    pid = gw.gateway.sessions.get(sid).worker.pid
    await client.close(sid)
    await wait(exited)
    assert seen == [(sid, pid, seen[0][2])]
    assert isinstance(seen[0][2], int)

    exited.clear()
    crashed = (await client.open()).session_id
    pid = gw.gateway.sessions.get(crashed).worker.pid
    await rpc_error(client.invoke_json(crashed, "fail", {"exit_code": 3}))
    await wait(exited)
    assert seen[1] == (crashed, pid, 3)


@pytest.mark.asyncio
async def test_hook_sg_worker_exited_for_a_readopted_worker(make_gateway, monkeypatch):
    """A re-adopted worker is not this gateway's child: its exit is still reported, with
    ``returncode`` None (its status cannot be read), and its session faults."""
    without_reattach(monkeypatch)
    a = await release_at_shutdown(make_gateway)
    sid, worker = a["kept"].session_id, a["worker"]
    record = a["records"][sid]
    seen: list[tuple[str, int, int | None]] = []
    exited = asyncio.Event()

    @first
    async def sg_startup(gateway):
        await gateway.adopt_session(record, window=TIMEOUT, on_frame=lambda *_: None)

    @first
    async def sg_worker_exited(gateway, session, pid, returncode):
        seen.append((session.session_id, pid, returncode))
        exited.set()

    try:
        gw = await make_gateway(extra_plugins=(plugin(sg_startup, sg_worker_exited),))
        session = gw.gateway.sessions.get(sid)
        assert session.state == SessionState.READY
        os.kill(worker.pid, signal.SIGKILL)
        await wait(exited)
        assert seen == [(sid, worker.pid, None)]
        await wait_for(lambda: session.state == SessionState.FAULTED, TIMEOUT)
    finally:
        await reap(worker.process)


# -- calls ----------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_hook_sg_grpc_interceptors(make_gateway):
    """Collected once, when the gRPC server is built, with the GatewayAPI; the
    interceptors see every call, a ``tryfirst`` plugin's wrapping a later one's."""
    collected: list[Any] = []
    seen: list[tuple[str, str]] = []

    def interceptor_plugin(name: str, marker: Any) -> Any:
        class Recording(grpc.aio.ServerInterceptor):
            async def intercept_service(self, continuation, handler_call_details):
                seen.append((name, handler_call_details.method))
                return await continuation(handler_call_details)

        @marker
        def sg_grpc_interceptors(gateway):
            collected.append(gateway)
            return [Recording()]

        assert impl_args(sg_grpc_interceptors) == spec_args("sg_grpc_interceptors")
        return plugin(sg_grpc_interceptors, name=f"contract-{name}")

    gw = await make_gateway(extra_plugins=(interceptor_plugin("outer", first),
                                           interceptor_plugin("inner", hookimpl)))
    assert collected == [gw.gateway.api, gw.gateway.api]  # once per plugin
    await gw.client().list()
    method = "/sessiongate.v1.Gateway/ListSessions"
    assert seen[-2:] == [("outer", method), ("inner", method)]
    assert len(collected) == 2


@pytest.mark.asyncio
async def test_hook_sg_activity(make_gateway):
    """With the activity plugin on, awaited once per tracked call, after it ended, from
    the plugin's publishing task (``GatewayAPI.publish_activity``), with a read-only
    event of the documented fields."""
    seen: list[tuple[Any, Any, str]] = []
    got = asyncio.Event()

    @first
    async def sg_activity(gateway, event):
        seen.append((gateway, event, asyncio.current_task().get_name()))
        got.set()

    assert impl_args(sg_activity) == spec_args("sg_activity")
    gw = await make_gateway(extra_plugins=(plugin(sg_activity),),
                            **{"plugins.activity.enabled": True})
    client = gw.client()
    await client.list()  # untracked
    await client.stub.ListSessions(gateway_pb2.ListSessionsRequest(), metadata=(
        *client.metadata, ("x-session-track", "true"), ("x-session-context", "c"),
        ("x-session-operation", "contract")))
    await wait(got)
    [(gateway, event, task)] = seen
    assert gateway is gw.gateway.api
    assert task.startswith("activity-publisher")
    assert list(event) == ["id", "time", "service", "action", "status", "duration_ms",
                           "session_id", "key_id", "peer", "context"]
    assert (event["action"], event["status"], event["context"], event["session_id"]) == \
        ("contract", "OK", "c", None)
    with pytest.raises(TypeError):
        event["status"] = "changed"  # type: ignore[index]


# -- HTTP --------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_hook_sg_http_routes(make_gateway):
    """Collected once, when the HTTP side port is set up, with the GatewayAPI; the routes
    are served under ``/plugins/<plugin name>``, their handlers on the gateway's loop."""
    collected: list[Any] = []

    async def sessions(request: web.Request) -> web.Response:
        return web.json_response(len(collected[0].sessions()))

    @first
    def sg_http_routes(gateway):
        collected.append(gateway)
        return [web.get("/sessions", sessions)]

    assert impl_args(sg_http_routes) == spec_args("sg_http_routes")
    gw = await make_gateway(extra_plugins=(plugin(sg_http_routes),))
    assert collected == [gw.gateway.api]
    await gw.client().open()
    assert await http_get(gw.http_address, "/plugins/contract/sessions") == (200, "1")
    assert (await http_get(gw.http_address, "/sessions"))[0] == 404
    assert collected == [gw.gateway.api]


# -- plugins' services, revoked keys, webhooks ---------------------------------------------------


@pytest.mark.asyncio
async def test_hook_sg_grpc_services(make_gateway):
    """Called once, when the gRPC server is built, with the GatewayAPI and the server: the
    services registered there are served beside core's; a handler authenticates with
    ``gateway.authenticate``."""
    collected: list[Any] = []

    async def whoami(request: bytes, context: Any) -> bytes:
        try:
            identity = await collected[0][0].authenticate(context.invocation_metadata())
        except Unauthenticated as exc:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, exc.message)
        return identity.key_id.encode()

    @first
    def sg_grpc_services(gateway, server):
        collected.append((gateway, server))
        handler = grpc.unary_unary_rpc_method_handler(whoami)
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("contract.Who", {"Am": handler}),))
        return ["contract.Who"]

    assert impl_args(sg_grpc_services) == spec_args("sg_grpc_services")
    gw = await make_gateway(extra_plugins=(plugin(sg_grpc_services),))
    assert collected == [(gw.gateway.api, gw.server.server)]
    client = gw.client()
    call = client.channel.unary_unary("/contract.Who/Am")
    key_id = gw.admin_key.split("_")[1]
    assert await call(b"", metadata=client.metadata) == key_id.encode()
    error = await rpc_error(call(b""))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.asyncio
async def test_hook_sg_key_revoked(make_gateway):
    """Once per key revoked while the gateway runs (here by the gateway's own key store:
    a revocation by ``sessiongate keys revoke``, another process, is seen the same way,
    tests/plugins/webhooks), from core's watcher task; a key revoked before the gateway
    started is not announced."""
    seen: list[tuple[Any, str, str]] = []
    got = asyncio.Event()

    @first
    async def sg_key_revoked(gateway, key_id):
        seen.append((gateway, key_id, asyncio.current_task().get_name()))
        got.set()

    assert impl_args(sg_key_revoked) == spec_args("sg_key_revoked")
    first_gw = await make_gateway()
    old_id, _key = await first_gw.create_key("old")
    await first_gw.gateway.keys.revoke(old_id)
    await first_gw.stop()
    gw = await make_gateway(extra_plugins=(plugin(sg_key_revoked),))
    key_id, _key = await gw.create_key("ci")
    await gw.gateway.keys.revoke(key_id)
    await wait(got)
    assert seen == [(gw.gateway.api, key_id, "key-revocations")]
    got.clear()
    other_id, _key = await gw.create_key("other")
    await gw.gateway.keys.revoke(other_id)
    await wait(got)
    assert [s[1] for s in seen] == [key_id, other_id]


@pytest.mark.asyncio
async def test_hook_sg_webhook_failed(make_gateway):
    """With the webhooks plugin on, awaited once for a delivery that failed for good (here
    a 410 Gone answer), after it is recorded, with the documented read-only fields."""
    seen: list[tuple[Any, Any]] = []
    got = asyncio.Event()

    @first
    async def sg_webhook_failed(gateway, delivery):
        seen.append((gateway, delivery))
        got.set()

    async def gone(request: web.Request) -> web.Response:
        return web.Response(status=410)

    app = web.Application()
    app.router.add_post("/", gone)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        host, port = runner.addresses[0][:2]
        assert impl_args(sg_webhook_failed) == spec_args("sg_webhook_failed")
        gw = await make_gateway(extra_plugins=(plugin(sg_webhook_failed),), **{
            "plugins.webhooks.enabled": True, "plugins.webhooks.allow_http_hosts": [host],
            "plugins.webhooks.allow_networks": [f"{host}/32"]})
        from sessiongate.v1 import webhooks_pb2, webhooks_pb2_grpc

        client = gw.client()
        stub = webhooks_pb2_grpc.WebhooksStub(client.channel)
        added = await stub.AddEndpoint(webhooks_pb2.AddEndpointRequest(
            url=f"http://{host}:{port}/", event_types=["session.opened"]),
            metadata=client.metadata)
        await client.open()
        await wait(got)
    finally:
        await runner.cleanup()
    [(gateway, delivery)] = seen
    assert gateway is gw.gateway.api
    assert list(delivery) == ["delivery_id", "event_id", "event_type", "endpoint_id",
                              "attempts", "last_status_code", "last_error"]
    assert (delivery["endpoint_id"], delivery["event_type"], delivery["attempts"],
            delivery["last_status_code"]) == (added.endpoint.endpoint_id, "session.opened", 1,
                                              410)
    with pytest.raises(TypeError):
        delivery["attempts"] = 2  # type: ignore[index]


# -- sign-in and alarms (mechanisms for web front ends: the dashboard) --------------------------


@pytest.mark.asyncio
async def test_hook_sg_revoke_credential(make_gateway):
    """``GatewayAPI.revoke_credential`` asks each implementation in turn; the first
    non-None answer wins, and with none answering nothing is revoked (False)."""
    seen: list[tuple[Any, str]] = []
    revoked: set[str] = set()

    @first
    async def sg_revoke_credential(gateway, credential):
        seen.append((gateway, credential))
        await asyncio.sleep(0)  # may be async
        if not credential.startswith("contract-"):
            return None  # not mine: the next implementation (acl) judges it
        revoked.add(credential)
        return True

    assert impl_args(sg_revoke_credential) == spec_args("sg_revoke_credential")
    gw = await make_gateway(extra_plugins=(plugin(sg_revoke_credential),))
    api = gw.gateway.api
    assert await api.revoke_credential("contract-token") is True
    assert revoked == {"contract-token"}
    # an API key is nobody's to revoke this way: False, and the key still works
    assert await api.revoke_credential(gw.admin_key) is False
    assert (await api.authenticate_credential(gw.admin_key)).is_admin
    assert seen == [(api, "contract-token"), (api, gw.admin_key)]


@pytest.mark.asyncio
async def test_hook_sg_session_adoption_failed(make_gateway, monkeypatch, short_tmp):
    """Fired, awaited, when ``GatewayAPI.adopt_session`` returns None: with the record and
    the ``session_adoptions`` outcome."""
    from sessiongate.core import AdoptionRecord

    without_reattach(monkeypatch)
    record = AdoptionRecord(session_id="e" * 32, owner_key_id="k1", client_name="c",
                            backend="sim", tag="t", lease_seconds=60, pid=2 ** 22 + 4321,
                            create_time=0.0, socket_path=str(short_tmp / "none.sock"),
                            nonce_digest=b"\0" * 32)
    seen: list[tuple[Any, Any, str]] = []

    @first
    async def sg_startup(gateway):
        assert await gateway.adopt_session(record, window=1, on_frame=print) is None
        assert seen, "the hook is awaited before adopt_session returns"

    @first
    async def sg_session_adoption_failed(gateway, record, outcome):
        await asyncio.sleep(0)  # may be async
        seen.append((gateway, record, outcome))

    assert impl_args(sg_session_adoption_failed) == spec_args("sg_session_adoption_failed")
    gw = await make_gateway(extra_plugins=(plugin(sg_startup, sg_session_adoption_failed),))
    assert seen == [(gw.gateway.api, record, "gone")]
    assert gw.gateway.metrics.get("session_adoptions", outcome="gone") == 1


# -- the meta-test ---------------------------------------------------------------------------


# -- cluster hooks (sg_key_created, sg_locate_session, sg_list_remote_sessions) -------------


@pytest.mark.asyncio
async def test_hook_sg_key_created(make_gateway):
    """Once per key added while the gateway runs, from core's key watcher task; the keys
    there were at start (the bootstrap key) are not announced."""
    seen: list[tuple[Any, str, str]] = []
    got = asyncio.Event()

    @first
    async def sg_key_created(gateway, key_id):
        seen.append((gateway, key_id, asyncio.current_task().get_name()))
        got.set()

    assert impl_args(sg_key_created) == spec_args("sg_key_created")
    gw = await make_gateway(extra_plugins=(plugin(sg_key_created),))
    key_id, _key = await gw.create_key("new")
    await wait(got)
    assert seen == [(gw.gateway.api, key_id, "key-revocations")]


@pytest.mark.asyncio
async def test_hook_sg_locate_session(make_gateway):
    """Asked only for an id unknown here; an address answers FAILED_PRECONDITION naming
    it, with trailing metadata sessiongate-node; None leaves NOT_FOUND."""
    asked: list[tuple[Any, str]] = []

    @first
    def sg_locate_session(gateway, session_id):
        asked.append((gateway, session_id))
        return "10.9.8.7:50551" if session_id == "elsewhere" else None

    assert impl_args(sg_locate_session) == spec_args("sg_locate_session")
    gw = await make_gateway(extra_plugins=(plugin(sg_locate_session),))
    client = gw.client()
    sid = (await client.open()).session_id
    assert (await client.get(sid)).session_id == sid
    assert asked == []  # a local session: not asked
    error = await rpc_error(client.stub.Invoke(gateway_pb2.InvokeRequest(
        session_id="elsewhere", command="echo"), metadata=client.metadata))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "10.9.8.7:50551" in error.details()
    assert ("sessiongate-node", "10.9.8.7:50551") in tuple(error.trailing_metadata())
    error = await rpc_error(client.get("nowhere"))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert asked == [(gw.gateway.api, "elsewhere"), (gw.gateway.api, "nowhere")]


@pytest.mark.asyncio
async def test_hook_sg_list_remote_sessions(make_gateway):
    """Once per ListSessions, with the caller; the sessions returned are authorized like
    local ones (action list) and listed with their node."""
    from sessiongate.core import RemoteSession

    seen: list[tuple[Any, str]] = []

    @first
    async def sg_list_remote_sessions(gateway, identity):
        seen.append((gateway, identity.key_id))
        return [RemoteSession(session_id="r1", state="READY", owner_key_id=identity.key_id,
                              tag="", last_sequence=5, node="10.9.8.7:50551")]

    assert impl_args(sg_list_remote_sessions) == spec_args("sg_list_remote_sessions")
    gw = await make_gateway(extra_plugins=(plugin(sg_list_remote_sessions),))
    client = gw.client()
    sid = (await client.open()).session_id
    listed = {info.session_id: info for info in await client.list()}
    assert listed["r1"].node == "10.9.8.7:50551" and listed["r1"].last_sequence == 5
    assert listed[sid].node == ""  # not part of a cluster: no node address
    assert seen == [(gw.gateway.api, gw.admin_key.split("_")[1])]


# -- sign-in credentials across nodes (sg_credential_changed, sg_apply_credential_record,
# sg_credential_records) ----------------------------------------------------------------


def _credential(kind: str = "contract", **changes: Any) -> Any:
    from sessiongate.core import CredentialRecord

    values: dict[str, Any] = {
        "credential_id": "c1", "kind": kind, "subject": "ldap:ann", "name": "ann",
        "admin": False, "tags": ("t",), "groups": ("cn=g,dc=x",), "issued_at": 1.0,
        "expires_at": 4e9, "revoked_at": None, "updated_at": 1.5}
    return CredentialRecord(**{**values, **changes})


@pytest.mark.asyncio
async def test_hook_sg_credential_changed(make_gateway):
    """``GatewayAPI.announce_credential`` hands the record to every implementation, awaited
    in order, in the caller's task; one that raises is logged and the next still runs."""
    seen: list[tuple[str, Any, Any]] = []

    @first
    async def sg_credential_changed(gateway, record):
        await asyncio.sleep(0)  # may be async
        seen.append(("first", gateway, record))
        raise RuntimeError("a failing observer")

    @hookimpl(trylast=True)
    def last(gateway, record):
        seen.append(("last", gateway, record))

    assert impl_args(sg_credential_changed) == spec_args("sg_credential_changed")
    late = types.SimpleNamespace(__name__="late", sg_credential_changed=last)
    gw = await make_gateway(extra_plugins=(plugin(sg_credential_changed), late))
    api = gw.gateway.api
    record = _credential(revoked_at=2.0)
    await api.announce_credential(record)
    assert seen == [("first", api, record), ("last", api, record)]


@pytest.mark.asyncio
async def test_hook_sg_apply_credential_record(make_gateway):
    """``GatewayAPI.apply_credential_record`` asks each implementation in turn: the first
    non-None outcome wins; a kind nobody issues is None (acl only takes its ``token``
    kind, and only with LDAP login on)."""
    seen: list[tuple[Any, Any]] = []

    @first
    async def sg_apply_credential_record(gateway, record):
        seen.append((gateway, record))
        await asyncio.sleep(0)  # may be async
        return "added" if record.kind == "contract" else None

    assert impl_args(sg_apply_credential_record) == spec_args("sg_apply_credential_record")
    gw = await make_gateway(extra_plugins=(plugin(sg_apply_credential_record),))
    api = gw.gateway.api
    mine, other = _credential(), _credential("token")
    assert await api.apply_credential_record(mine) == "added"
    assert await api.apply_credential_record(other) is None
    assert seen == [(api, mine), (api, other)]


@pytest.mark.asyncio
async def test_hook_sg_credential_records(make_gateway):
    """``GatewayAPI.credential_records`` is every implementation's records together."""

    @first
    async def sg_credential_records(gateway):
        await asyncio.sleep(0)  # may be async
        return [_credential(credential_id="c1"), _credential(credential_id="c2")]

    assert impl_args(sg_credential_records) == spec_args("sg_credential_records")
    gw = await make_gateway(extra_plugins=(plugin(sg_credential_records),))
    records = await gw.gateway.api.credential_records()
    # acl (LDAP off here) holds no tokens: only the test plugin's records
    assert [r.credential_id for r in records] == ["c1", "c2"]


def test_every_hookspec_has_a_contract_test():
    from sessiongate.core import PROJECT

    specs = sorted(name for name, func in vars(hookspecs).items()
                   if name.startswith("sg_") and hasattr(func, f"{PROJECT}_spec"))
    assert specs == sorted(hookspecs.__all__), "hookspecs.__all__ is out of date"
    module = sys.modules[__name__]
    missing = [name for name in specs if not callable(getattr(module, f"test_hook_{name}", None))]
    assert not missing, f"hookspecs without a contract test here: {missing}"
