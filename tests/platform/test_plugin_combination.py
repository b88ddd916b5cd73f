"""The environment's plugin combination is accepted, or refused with exit status 2.

The env's own combination is checked in every tox env (marked ``matrix``); the
combination comes from ``SESSIONGATE_PLUGINS__<NAME>__ENABLED``. The invalid
combinations (reconnect on, fanout off) are checked here once, by setting the
environment per case, not by envs of their own. The rule itself is contributed by
the reconnect plugin through ``sg_add_validators`` (a ``Setting`` on ``plugins.fanout.enabled`` that
applies when ``plugins.reconnect.enabled`` is true), so a refusal names both keys.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from sessiongate.testing import enabled_plugins, write_config


def _sessiongate(*args: str, cwd: os.PathLike[str],
                 env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sessiongate", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)


def _invalid(enabled: set[str]) -> bool:
    return "reconnect" in enabled and "fanout" not in enabled


@pytest.fixture
def config(tmp_path):
    return write_config(tmp_path / "settings.toml", {
        "state_dir": str(tmp_path / "state"),
        "server.grpc_address": "127.0.0.1:0",
    })


@pytest.mark.matrix
def test_check_config_accepts_or_refuses_the_combination(config, tmp_path):
    enabled = enabled_plugins()
    result = _sessiongate("check-config", "--config", str(config), cwd=tmp_path)
    if _invalid(enabled):
        assert result.returncode == 2, (result.stdout, result.stderr)
        assert "plugins.fanout.enabled" in result.stderr, result.stderr
        assert "plugins.reconnect.enabled" in result.stderr, result.stderr
        assert result.stdout == ""
    else:
        assert result.returncode == 0, result.stderr
        for name in ("fanout", "reconnect", "acl", "reattach"):
            expected = "true" if name in enabled else "false"
            assert f"plugins.{name}.enabled = {expected}" in result.stdout.splitlines()


@pytest.mark.parametrize(("acl", "reattach"), [
    ("true", "true"), ("true", "false"), ("false", "true"), ("false", "false")])
def test_serve_refuses_an_invalid_combination_before_starting(config, tmp_path, acl, reattach):
    """reconnect without fanout, whatever acl and reattach are."""
    env = {**os.environ,
           "SESSIONGATE_PLUGINS__FANOUT__ENABLED": "false",
           "SESSIONGATE_PLUGINS__RECONNECT__ENABLED": "true",
           "SESSIONGATE_PLUGINS__ACL__ENABLED": acl,
           "SESSIONGATE_PLUGINS__REATTACH__ENABLED": reattach}
    result = _sessiongate("serve", "--config", str(config), cwd=tmp_path, env=env)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "plugins.fanout.enabled" in result.stderr
    assert "listening on" not in result.stderr
    assert not (tmp_path / "state").exists(), "nothing may start before validation passed"


@pytest.mark.parametrize(("fanout", "reconnect", "code"), [
    ("true", "true", 0), ("true", "false", 0), ("false", "false", 0), ("false", "true", 2)])
def test_reconnect_needs_fanout(config, tmp_path, fanout, reconnect, code):
    """Independent of the env: the prerequisite rule, for each of the four cases."""
    env = {**os.environ,
           "SESSIONGATE_PLUGINS__FANOUT__ENABLED": fanout,
           "SESSIONGATE_PLUGINS__RECONNECT__ENABLED": reconnect}
    result = subprocess.run(
        [sys.executable, "-m", "sessiongate", "check-config", "--config", str(config)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
        stdin=subprocess.DEVNULL)
    assert result.returncode == code, result.stderr
    if code == 2:
        assert "plugins.fanout.enabled" in result.stderr
