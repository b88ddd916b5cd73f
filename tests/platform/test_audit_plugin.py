"""The example third-party plugin (examples/audit-plugin), installed for real.

It is built and installed with pip into a private folder (``--target``), which is
then put on ``sys.path`` (in-process gateways) or ``PYTHONPATH`` (child processes),
so ``importlib.metadata`` finds its entry point in the group ``sessiongate.plugins``
exactly as it would in a site-packages.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import shutil
import subprocess
import sys

import grpc
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "audit-plugin"
HOOKS = ("sg_add_validators", "sg_session_adopted", "sg_session_closed", "sg_session_open",
         "sg_session_opened", "sg_session_released")


@pytest.fixture(scope="module")
def audit_site(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """``pip install --no-deps --target SITE examples/audit-plugin`` (from a copy: an
    in-tree build would write build/ and *.egg-info into the checkout)."""
    work = tmp_path_factory.mktemp("audit")
    source = shutil.copytree(EXAMPLE, work / "src",
                             ignore=shutil.ignore_patterns("build", "*.egg-info"))
    site = work / "site"
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
           "--disable-pip-version-check", "--no-index", "--target", str(site), str(source)]
    if importlib.util.find_spec("setuptools") is not None:
        cmd.insert(4, "--no-build-isolation")  # build offline with this env's setuptools
    else:
        cmd.remove("--no-index")
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr
    assert (site / "sessiongate_audit" / "__init__.py").is_file()
    return site


@pytest.fixture
def audit_installed(audit_site: pathlib.Path, monkeypatch: pytest.MonkeyPatch):
    """The plugin importable in this process for one test, then forgotten again."""
    monkeypatch.syspath_prepend(str(audit_site))
    yield audit_site
    sys.modules.pop("sessiongate_audit", None)


def _child_env(site: pathlib.Path, **extra: str) -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, **extra}


def _lines(path: pathlib.Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_sessiongate_plugins_lists_it_with_its_hooks(audit_site, tmp_path):
    result = subprocess.run([sys.executable, "-m", "sessiongate", "plugins"], cwd=tmp_path,
                            env=_child_env(audit_site), capture_output=True, text=True,
                            timeout=60, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    head = next(i for i, line in enumerate(lines) if line.split()[:1] == ["audit"])
    assert lines[head].split() == ["audit", "enabled", "external", "sessiongate_audit"]
    hooks = []
    for line in lines[head + 1:]:
        if not line.startswith("    "):
            break
        hooks.append(line.strip())
    assert tuple(hooks) == HOOKS


def test_switched_off_it_is_listed_disabled_and_not_imported(audit_site, tmp_path):
    code = ("import sys; from sessiongate.core.cli.commands import main; rc = main(['plugins']); "
            "assert 'sessiongate_audit' not in sys.modules, 'blocked plugin was imported'; "
            "sys.exit(rc)")
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
        env=_child_env(audit_site, SESSIONGATE_PLUGINS__AUDIT__ENABLED="false"),
        timeout=60, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr
    assert "audit        disabled external" in result.stdout


def test_its_settings_are_validated_with_everything_else(audit_site, tmp_path):
    (tmp_path / "bad.toml").write_text(
        "[plugins.audit]\nenabled = true\ndeny_client_names = \"bob\"\nfiel = \"x\"\n"
        "[sessions]\nmax_sessions = 0\n")
    result = subprocess.run(
        [sys.executable, "-m", "sessiongate", "check-config", "--config", "bad.toml"],
        cwd=tmp_path, env=_child_env(audit_site), capture_output=True, text=True,
        timeout=60, stdin=subprocess.DEVNULL)
    assert result.returncode == 2
    assert "sessions.max_sessions = 0" in result.stderr
    assert "plugins.audit.deny_client_names = 'bob'" in result.stderr
    assert "plugins.audit.fiel: unknown setting" in result.stderr


@pytest.mark.asyncio
async def test_audit_lines_and_deny_list(audit_installed, make_gateway, tmp_path):
    audit = tmp_path / "audit.jsonl"
    gw = await make_gateway(**{"plugins.audit.enabled": True,
                               "plugins.audit.file": str(audit),
                               "plugins.audit.deny_client_names": ["legacy-batch"]})
    assert gw.gateway.pm.get_plugin("audit") is not None
    client = gw.client()
    info = await client.open(client_name="dashboard")
    with pytest.raises(grpc.aio.AioRpcError) as denied:
        await client.open(client_name="legacy-batch")
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "legacy-batch" in denied.value.details()
    await client.close(info.session_id)
    lines = _lines(audit)
    assert [(x["event"], x["client_name"]) for x in lines] == [
        ("opened", "dashboard"), ("denied", "legacy-batch"), ("closed", "dashboard")]
    assert lines[0]["session_id"] == lines[2]["session_id"] == info.session_id
    assert lines[1]["session_id"] is None  # a refused open creates no session
    assert lines[2]["reason"]
    assert lines[0]["owner_key_id"] == info.owner_key_id
    assert len(gw.gateway.sessions.live) == 0, "a denied session must not linger"


@pytest.mark.asyncio
async def test_a_raising_hookimpl_is_isolated(audit_installed, make_gateway, tmp_path,
                                              caplog):
    """The audit file cannot be written (it is a folder): observers are logged and
    ignored, the veto fails closed; each log line names the plugin and the session."""
    caplog.set_level("INFO", logger="sessiongate")
    unwritable = tmp_path / "a-folder"
    unwritable.mkdir()
    gw = await make_gateway(**{"plugins.audit.enabled": True,
                               "plugins.audit.file": str(unwritable),
                               "plugins.audit.deny_client_names": ["legacy-batch"]})
    client = gw.client()
    info = await client.open(client_name="dashboard")  # sg_session_opened raised: ignored
    assert await client.invoke_json(info.session_id, "echo", {"still": "up"}) == {"still": "up"}
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await client.open(client_name="legacy-batch")  # sg_session_open raised OSError
    assert refused.value.code() == grpc.StatusCode.INTERNAL
    assert "plugin audit failed" in refused.value.details()
    closed = await client.close(info.session_id)  # sg_session_closed raised: ignored
    assert closed.session_id == info.session_id

    messages = [r.getMessage() for r in caplog.records if r.name == "sessiongate.plugins"]
    sid = info.session_id
    assert f"plugin audit failed in sg_session_opened (session {sid}); ignored" in messages
    assert f"plugin audit failed in sg_session_closed (session {sid}); ignored" in messages
    refusal = [m for m in messages
               if m.startswith("plugin audit failed in sg_session_open (session ")]
    assert refusal and refusal[0].endswith("; request refused")
    failed = [r for r in caplog.records if r.name == "sessiongate.plugins"]
    assert all(r.exc_info and isinstance(r.exc_info[1], OSError) for r in failed)


def test_against_a_real_gateway_process(audit_site, gateway_process, tmp_path):
    audit = tmp_path / "audit.jsonl"
    proc = gateway_process(env={"PYTHONPATH": str(audit_site)},
                           **{"plugins.audit.enabled": True,
                              "plugins.audit.file": str(audit),
                              "plugins.audit.deny_client_names": ["legacy-batch"]})
    key = (tmp_path / "state" / "bootstrap-admin.key").read_text().strip()
    env = _child_env(audit_site, SESSIONGATE_CLIENT_SERVER=proc.address,
                     SESSIONGATE_CLIENT_KEY=key)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "sessiongate", *args], cwd=tmp_path,
                              env=env, capture_output=True, text=True, timeout=60,
                              stdin=subprocess.DEVNULL)

    denied = cli("open", "--client-name", "legacy-batch")
    assert denied.returncode == 1
    assert "PERMISSION_DENIED" in denied.stderr
    opened = cli("open", "--client-name", "dashboard")
    assert opened.returncode == 0, opened.stderr
    sid = opened.stdout.strip()
    assert cli("close", sid).returncode == 0
    assert [(x["event"], x["session_id"]) for x in _lines(audit)] == [
        ("denied", None), ("opened", sid), ("closed", sid)]
