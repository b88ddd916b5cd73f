"""The plugin host: switches, blocking before import, listing, isolation of failing hooks."""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import subprocess
import sys

import grpc
import pluggy
import pytest

from sessiongate.core import hookimpl
from sessiongate.core.config.settings import builtin_plugins
from sessiongate.core.errors import GatewayError, Internal
from sessiongate.core.pluginhost.host import (
    TRACE_ENV,
    CoreHookError,
    Hooks,
    load,
    make_plugin_manager,
)
from sessiongate.testing import enabled_plugins, wait_for, write_config
from sessiongate.v1 import gateway_pb2

SWITCH = "SESSIONGATE_PLUGINS__{}__ENABLED"

#: run in a fresh interpreter: which plugin modules got imported, which are registered
_PROBE = r"""
import json, sys
from sessiongate.core.pluginhost.host import load
settings, pm = load(sys.argv[1] if len(sys.argv) > 1 else None)
print(json.dumps({
    "imported": sorted(m for m in sys.modules if m.startswith("sessiongate.plugins.")),
    "registered": sorted(pm.get_name(p) for p in pm.get_plugins()),
}))
"""


def _probe(tmp_path, env: dict[str, str], config=None) -> dict:
    args = [sys.executable, "-c", _PROBE] + ([str(config)] if config else [])
    result = subprocess.run(args, cwd=tmp_path, env={**os.environ, **env},
                            capture_output=True, text=True, timeout=60,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _switches(**states: bool) -> dict[str, str]:
    return {SWITCH.format(name.upper()): "true" if on else "false"
            for name, on in states.items()}


# for each plugin: the switches that turn it off (and keep the combination valid)
OFF = {
    "fanout": {"fanout": False, "reconnect": False},
    "reconnect": {"reconnect": False},
    "acl": {"acl": False},
    "reattach": {"reattach": False},
    "activity": {"activity": False},
    "webhooks": {"webhooks": False},
    "dashboard": {"dashboard": False},
    "cluster": {"cluster": False},
}
ON = {
    "fanout": {"fanout": True},
    "reconnect": {"fanout": True, "reconnect": True},
    "acl": {"acl": True},
    "reattach": {"reattach": True},
    "activity": {"activity": True},
    "webhooks": {"webhooks": True},
    "dashboard": {"dashboard": True, "fanout": True},
    "cluster": {"cluster": True},
}
#: the other settings a plugin needs to be switched on validly
NEEDS = {
    "dashboard": {"SESSIONGATE_PLUGINS__DASHBOARD__ALLOW_API_KEY_LOGIN": "true"},
    "cluster": {"SESSIONGATE_PLUGINS__CLUSTER__ADVERTISE_ADDRESS": "127.0.0.1:50551"},
}


@pytest.mark.parametrize("name", sorted(builtin_plugins()))
def test_disabled_plugin_is_never_imported(tmp_path, name):
    seen = _probe(tmp_path, _switches(**OFF[name]))
    module = builtin_plugins()[name]
    assert not [m for m in seen["imported"] if m == module or m.startswith(module + ".")]
    assert name not in seen["registered"]
    assert "core" in seen["registered"]


@pytest.mark.parametrize("name", sorted(builtin_plugins()))
def test_enabled_plugin_is_registered(tmp_path, name):
    seen = _probe(tmp_path, {**_switches(**ON[name]), **NEEDS.get(name, {})})
    assert builtin_plugins()[name] in seen["imported"]
    assert name in seen["registered"]


def test_switch_in_the_settings_file_and_block_list(tmp_path):
    # without the environment's switches (tox matrix), which would win over the file
    env = {k: v for k, v in os.environ.items() if not k.startswith("SESSIONGATE_")}

    def probe(extra: dict[str, str], *args: str) -> dict:
        result = subprocess.run([sys.executable, "-c", _PROBE, *args], cwd=tmp_path,
                                env={**env, **extra}, capture_output=True, text=True,
                                timeout=60, stdin=subprocess.DEVNULL)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    config = write_config(tmp_path / "s.toml", {"plugins.acl.enabled": False})
    seen = probe({}, str(config))
    assert "acl" not in seen["registered"]
    assert "sessiongate.plugins.acl" not in seen["imported"]
    # the environment wins over the file
    seen = probe({SWITCH.format("ACL"): "true"}, str(config))
    assert "acl" in seen["registered"]
    # the block list (for plugins without a settings table, e.g. third-party ones)
    seen = probe({"SESSIONGATE_DISABLED_PLUGINS": "reattach,acl"})
    assert not {"acl", "reattach"} & set(seen["registered"])
    assert not {"sessiongate.plugins.acl", "sessiongate.plugins.reattach"} & set(seen["imported"])


def test_plugins_command_lists_every_plugin_and_its_hooks(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "sessiongate", "plugins"], cwd=tmp_path,
        env={**os.environ, **_switches(acl=False)}, capture_output=True, text=True,
        timeout=60, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr
    rows: dict[str, str] = {}
    hooks: dict[str, list[str]] = {}
    current = ""
    for line in result.stdout.splitlines():
        if line.startswith(" "):
            hooks[current].append(line.strip())
        elif line:
            current = line.split()[0]
            rows[current], hooks[current] = line.split()[1], []
    assert set(builtin_plugins()) <= set(rows)
    assert rows["acl"] == "disabled" and hooks["acl"] == []
    assert rows["core"] == "enabled"
    assert "sg_make_distributor" in hooks["core"]
    assert all(h.startswith("sg_") for hs in hooks.values() for h in hs)
    enabled = enabled_plugins() - {"acl"}
    for name in enabled:
        assert rows[name] == "enabled"


def test_unknown_hook_is_refused_at_boot(tmp_path):
    class Typo:
        __name__ = "typo"

        @hookimpl
        def sg_sesion_opened(self, session):  # misspelt: check_pending() catches it
            pass

    with pytest.raises(pluggy.PluginValidationError):
        load(None, extra_plugins=(Typo(),))


def test_hook_wrappers_are_refused(tmp_path):
    class Wrapper:
        __name__ = "wrapper"

        @hookimpl(wrapper=True)
        def sg_session_opened(self, session):
            return (yield)

    with pytest.raises(ValueError, match="wrapper"):
        load(None, extra_plugins=(Wrapper(),))


class Exploding:
    """Every observer hook raises; the gateway must log it by name and carry on."""

    __name__ = "exploding"

    def __init__(self) -> None:
        self.calls: list[str] = []

    @hookimpl
    def sg_session_opened(self, session):
        self.calls.append("opened")
        raise RuntimeError("boom in opened")

    @hookimpl
    def sg_session_state_changed(self, session, old, new, reason):
        raise RuntimeError("boom in state_changed")

    @hookimpl
    async def sg_session_closed(self, session, reason):
        self.calls.append("closed")
        raise RuntimeError("boom in closed")

    @hookimpl
    def sg_subscriber_attached(self, session, subscription):
        raise KeyError("boom in attached")


@pytest.mark.asyncio
async def test_a_raising_hookimpl_is_logged_and_does_not_take_the_gateway_down(
        make_gateway, caplog):
    plugin = Exploding()
    gw = await make_gateway(extra_plugins=(plugin,))
    client = gw.client()
    info = await client.open(client_name="x")
    sid = info.session_id
    assert info.state == gateway_pb2.READY
    assert await client.invoke_json(sid, "echo", {"a": 1}) == {"a": 1}
    call = client.stream(sid)
    assert (await call.read()).caught_up
    await client.invoke_json(sid, "write", {"tag": "t", "value": 1})
    assert [e.sequence for e in (await call.read()).events] == [1]
    assert (await client.close(sid)).state == gateway_pb2.CLOSED
    assert await call.read() is grpc.aio.EOF
    assert plugin.calls == ["opened", "closed"]

    failures = [r for r in caplog.records if "plugin exploding failed" in r.getMessage()]
    hooks = {h for h in ("sg_session_opened", "sg_session_state_changed", "sg_session_closed",
                         "sg_subscriber_attached") if any(h in r.getMessage() for r in failures)}
    assert hooks == {"sg_session_opened", "sg_session_state_changed", "sg_session_closed",
                     "sg_subscriber_attached"}
    assert all(r.exc_info for r in failures)  # with the traceback
    assert any(sid in r.getMessage() for r in failures)
    # and the gateway still serves
    again = await client.open(client_name="again")
    assert again.state == gateway_pb2.READY


class FailingVeto:
    __name__ = "failing-veto"

    @hookimpl
    def sg_session_open(self, session, identity):
        if session.client_name == "crash":
            raise RuntimeError("bug")
        if session.client_name == "refuse":
            from sessiongate.core.errors import PermissionDenied

            raise PermissionDenied("client name 'refuse' is not welcome")


@pytest.mark.asyncio
async def test_a_raising_veto_fails_closed(make_gateway, caplog):
    gw = await make_gateway(extra_plugins=(FailingVeto(),))
    client = gw.client()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await client.open(client_name="crash")
    assert info.value.code() == grpc.StatusCode.INTERNAL
    assert "failing-veto" in info.value.details()
    assert any("plugin failing-veto failed in sg_session_open" in r.getMessage()
               for r in caplog.records)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await client.open(client_name="refuse")
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "not welcome" in info.value.details()
    assert gw.gateway.sessions.live == {}
    assert (await client.open(client_name="fine")).state == gateway_pb2.READY


class Observer:
    __name__ = "observer"

    def __init__(self) -> None:
        self.events: list[tuple] = []

    @hookimpl
    def sg_startup(self, gateway):
        self.events.append(("startup",))

    @hookimpl
    def sg_session_opened(self, session):
        self.events.append(("opened", session.session_id))

    @hookimpl
    def sg_worker_exited(self, session, pid, returncode):
        self.events.append(("worker_exited", session.session_id, returncode))

    @hookimpl
    def sg_session_closed(self, session, reason):
        self.events.append(("closed", session.session_id, reason))

    @hookimpl
    def sg_shutdown(self, gateway):
        self.events.append(("shutdown",))


@pytest.mark.asyncio
async def test_lifecycle_hooks_are_called(make_gateway):
    observer = Observer()
    gw = await make_gateway(extra_plugins=(observer,), **{"workers.spare_workers": 0})
    client = gw.client()
    sid = (await client.open(client_name="x")).session_id
    session = gw.gateway.sessions.live[sid]
    with pytest.raises(grpc.aio.AioRpcError):
        await client.invoke(sid, "fail", b'{"exit_code": 5}')
    await asyncio.wait_for(session.ended.wait(), 30)
    await wait_for(lambda: any(e[0] == "worker_exited" for e in observer.events))
    await gw.gateway.stop()
    kinds = [e[0] for e in observer.events]
    assert kinds[0] == "startup" and kinds[-1] == "shutdown"
    assert ("opened", sid) in observer.events
    assert ("worker_exited", sid, 5) in observer.events
    closed = [e for e in observer.events if e[0] == "closed"]
    assert len(closed) == 1 and closed[0][1] == sid


class Traced:
    __name__ = "traced"

    @hookimpl
    def sg_worker_backends(self):
        return {"traced-backend": "traced.module:Backend"}


@pytest.mark.parametrize("trace", [True, False], ids=["traced", "untraced"])
def test_hook_calls_through_hooks_are_traced(monkeypatch, capsys, trace):
    """``Hooks`` runs each implementation through pluggy's hook executor (the private
    ``PluginManager._hookexec``), so ``SESSIONGATE_TRACE_HOOKS=1`` traces its calls."""
    if trace:
        monkeypatch.setenv(TRACE_ENV, "1")
    else:
        monkeypatch.delenv(TRACE_ENV, raising=False)
    pm = make_plugin_manager(None, load_entrypoints=False, extra_plugins=(Traced(),))
    capsys.readouterr()
    results = Hooks(pm).collect("sg_worker_backends")
    assert {"traced-backend": "traced.module:Backend"} in results
    err = capsys.readouterr().err
    if not trace:
        assert err == ""
        return
    lines = [line.strip() for line in err.splitlines()]
    # one traced call per implementation (this plugin's, then core's), each with its result
    assert lines.count("sg_worker_backends [hook]") == 2
    assert lines.count("finish sg_worker_backends --> [hook]") == 2
    assert lines.index("traced-backend: traced.module:Backend") < \
        lines.index("sim: sessiongate.core.sdk.sim:Sim")


class Recorder:
    """Implements one hook of each kind; records every call it gets."""

    __name__ = "recorder"

    def __init__(self) -> None:
        self.calls: list[str] = []

    @hookimpl
    def sg_session_opened(self, session):
        self.calls.append("sg_session_opened")

    @hookimpl
    def sg_replay_supported(self, session):
        self.calls.append("sg_replay_supported")
        return True

    @hookimpl
    def sg_session_open(self, session, identity):
        self.calls.append("sg_session_open")


#: how core calls each kind of hook, with an argument its spec declares left out
WRONG_CALLS = {
    "notify": ("sg_session_opened", lambda hooks: hooks.notify("sg_session_opened")),
    "collect": ("sg_session_opened", lambda hooks: hooks.collect("sg_session_opened")),
    "decide": ("sg_replay_supported", lambda hooks: hooks.decide("sg_replay_supported")),
    "veto": ("sg_session_open", lambda hooks: hooks.veto("sg_session_open", session=object())),
}


@pytest.mark.asyncio
@pytest.mark.parametrize("kind", sorted(WRONG_CALLS))
async def test_a_hook_called_without_a_spec_argument_is_cores_error(caplog, kind):
    """Core calling a hook without an argument the spec declares is core's bug: an
    INTERNAL ``CoreHookError``, logged as such, never blamed on a plugin."""
    recorder = Recorder()
    pm = make_plugin_manager(None, load_entrypoints=False, extra_plugins=(recorder,))
    hooks = Hooks(pm)
    assert hooks.collect("sg_worker_backends")  # a hook without arguments is fine
    hook, call = WRONG_CALLS[kind]
    caplog.clear()
    with pytest.raises(CoreHookError) as info:
        result = call(hooks)
        if inspect.isawaitable(result):
            await result
    error = info.value
    assert isinstance(error, GatewayError) and isinstance(error, Internal)
    assert error.code == "INTERNAL"
    assert f"internal error calling {hook}" in error.message
    assert recorder.calls == []  # the implementation never ran
    messages = [r.getMessage() for r in caplog.records]
    assert any(f"core called {hook} with the wrong arguments" in m for m in messages), messages
    assert not [m for m in messages if "plugin" in m and ("failed" in m or "refused" in m)], \
        messages
