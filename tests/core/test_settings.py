"""Settings: shipped defaults, user file, environment, validation of everything at once."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from sessiongate.core import hookimpl
from sessiongate.core.plugins import load
from sessiongate.core.settings import (
    SettingsError,
    load_settings,
    positive_int,
    redacted,
)
from sessiongate.core.testing import write_config


@pytest.fixture
def clean_env(monkeypatch):
    """No SESSIONGATE_* variable from the caller but the plugin switches (tox matrix)."""
    for key in list(os.environ):
        if key.startswith("SESSIONGATE_") and not key.startswith("SESSIONGATE_PLUGINS__"):
            monkeypatch.delenv(key)
    return monkeypatch


def _sessiongate(*args: str, cwd, env: dict[str, str] | None = None):
    return subprocess.run([sys.executable, "-m", "sessiongate", *args], cwd=cwd,
                          env={**os.environ, **(env or {})}, capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL)


def test_shipped_defaults(clean_env):
    settings = load_settings()
    expected = {
        "state_dir": ".sessiongate",
        "server.grpc_address": "127.0.0.1:50551",
        "sessions.default_lease_seconds": 1800,
        "sessions.lease_sweep_interval_seconds": 30,
        "sessions.max_sessions": 1000,
        "sessions.max_pending_commands": 128,
        "sessions.command_timeout_seconds": 30,
        "events.queue_capacity": 10000,
        "events.backpressure_policy": "fail_fast",
        "workers.backend": "sim",
        "workers.start_timeout_seconds": 10,
        "plugins.fanout.max_subscribers_per_session": 8,
        "plugins.fanout.replay_buffer_capacity": 1024,
        "plugins.fanout.replay_retention_seconds": 300,
        "plugins.reconnect.detach_grace_seconds": 60,
        "plugins.acl.token_ttl_seconds": 1800,
        "plugins.acl.ldap.enabled": False,
        "plugins.acl.ldap.url": "ldap://127.0.0.1:389",
        "plugins.reattach.adoption_window_seconds": 30,
        "plugins.reattach.max_orphan_lifetime_seconds": 300,
    }
    for key, value in expected.items():
        assert settings.get(key) == value, key


def test_plugin_switch_defaults(monkeypatch):
    for key in list(os.environ):
        if key.startswith("SESSIONGATE_"):
            monkeypatch.delenv(key)
    settings = load_settings()
    switches = {name: settings.get(f"plugins.{name}.enabled")
                for name in ("fanout", "reconnect", "acl", "reattach")}
    assert switches == {"fanout": True, "reconnect": True, "acl": True, "reattach": False}


def test_user_file_overrides_only_its_keys_and_environment_wins(clean_env, tmp_path):
    config = write_config(tmp_path / "user.toml", {
        "sessions.max_sessions": 7,
        "sessions.max_pending_commands": 9,
    })
    settings = load_settings(config)
    assert settings.sessions.max_sessions == 7
    assert settings.sessions.max_pending_commands == 9
    assert settings.sessions.default_lease_seconds == 1800  # untouched neighbour
    clean_env.setenv("SESSIONGATE_SESSIONS__MAX_SESSIONS", "11")
    settings = load_settings(config)
    assert settings.sessions.max_sessions == 11
    assert settings.sessions.max_pending_commands == 9
    # the file can come from the environment too
    clean_env.setenv("SESSIONGATE_SETTINGS_FILE", str(config))
    assert load_settings().sessions.max_pending_commands == 9


def test_every_problem_is_reported_at_once(clean_env, tmp_path):
    config = write_config(tmp_path / "bad.toml", {
        "sessions.max_sessions": 0,
        "sessions.default_lease_seconds": -5,
        "events.backpressure_policy": "sometimes",
        "server.grpc_address": "no-port-here",
        "workers.max_frame_bytes": 10,
        "sessions.max_pending_commands": "many",
        "sessions.no_such_key": 1,
    })
    with pytest.raises(SettingsError) as info:
        load_settings(config)
    problems = info.value.problems
    text = "\n".join(problems)
    for key, value in [("sessions.max_sessions", "0"), ("sessions.default_lease_seconds", "-5"),
                       ("events.backpressure_policy", "sometimes"),
                       ("server.grpc_address", "no-port-here"),
                       ("workers.max_frame_bytes", "10"),
                       ("sessions.max_pending_commands", "many")]:
        line = next((p for p in problems if p.startswith(key)), None)
        assert line is not None, f"{key} not reported:\n{text}"
        assert value in line and "must be" in line, line
    assert any("sessions.no_such_key" in p and "unknown setting" in p for p in problems)
    assert "fail_fast" in next(p for p in problems if p.startswith("events.backpressure_policy"))
    assert len(problems) >= 7


def test_plugin_rules_are_reported_with_core_rules(clean_env, tmp_path):
    class Demo:
        __name__ = "demo"

        @hookimpl
        def sg_add_validators(self, settings):
            return [positive_int("plugins.demo.limit", "A demo limit.")]

    config = write_config(tmp_path / "bad.toml", {
        "sessions.max_sessions": 0,
        "plugins.demo.enabled": True,
        "plugins.demo.limit": 0,
        "plugins.demo.typo": 1,
    })
    with pytest.raises(SettingsError) as info:
        load(str(config), extra_plugins=(Demo(),))
    text = "\n".join(info.value.problems)
    assert "sessions.max_sessions = 0" in text
    assert "plugins.demo.limit = 0" in text
    assert "plugins.demo.typo" in text
    config = write_config(tmp_path / "good.toml", {"plugins.demo.enabled": True,
                                                   "plugins.demo.limit": 3})
    settings, _pm = load(str(config), extra_plugins=(Demo(),))
    assert settings.plugins.demo.limit == 3


def test_bad_plugin_switch(clean_env, tmp_path):
    clean_env.setenv("SESSIONGATE_PLUGINS__REATTACH__ENABLED", "maybe")
    with pytest.raises(SettingsError) as info:
        load(None)
    assert any(p.startswith("plugins.reattach.enabled") and "true or false" in p
               for p in info.value.problems)


def test_check_config_reports_several_problems_and_exits_2(tmp_path):
    result = _sessiongate("check-config", cwd=tmp_path, env={
        "SESSIONGATE_SESSIONS__MAX_SESSIONS": "0",
        "SESSIONGATE_EVENTS__BACKPRESSURE_POLICY": "sometimes",
        "SESSIONGATE_SESSIONS__COMMAND_TIMEOUT_SECONDS": "-1",
        "SESSIONGATE_EVENTS__QUEUE_CAPACITY": "lots",
    })
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stdout == ""
    for key, value in [("sessions.max_sessions", "0"),
                       ("events.backpressure_policy", "sometimes"),
                       ("sessions.command_timeout_seconds", "-1"),
                       ("events.queue_capacity", "lots")]:
        lines = [line for line in result.stderr.splitlines() if key in line]
        assert lines and value in lines[0] and "must be" in lines[0], result.stderr


def test_serve_with_bad_settings_exits_2_before_starting(tmp_path):
    state = tmp_path / "state"
    config = write_config(tmp_path / "s.toml", {"state_dir": str(state),
                                                "server.grpc_address": "127.0.0.1:0",
                                                "sessions.max_sessions": -1})
    result = _sessiongate("serve", "--config", str(config), cwd=tmp_path)
    assert result.returncode == 2
    assert "sessions.max_sessions" in result.stderr
    assert "listening on" not in result.stderr
    assert not state.exists()


def test_missing_settings_file_exits_2(tmp_path):
    result = _sessiongate("check-config", "--config", str(tmp_path / "nope.toml"), cwd=tmp_path)
    assert result.returncode == 2
    assert "nope.toml" in result.stderr


def test_check_config_prints_effective_settings(tmp_path):
    config = write_config(tmp_path / "s.toml", {"sessions.max_sessions": 12})
    result = _sessiongate("check-config", "--config", str(config), cwd=tmp_path,
                          env={"SESSIONGATE_SESSIONS__MAX_PENDING_COMMANDS": "13"})
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "sessions.max_sessions = 12" in lines
    assert "sessions.max_pending_commands = 13" in lines
    assert 'workers.backend = "sim"' in lines


def test_check_config_redacts_secrets(tmp_path):
    secret = "hunter2-very-secret"
    result = _sessiongate("check-config", cwd=tmp_path, env={
        "SESSIONGATE_PLUGINS__ACL__LDAP__BIND_PASSWORD": secret,
        "SESSIONGATE_PLUGINS__ACL__LDAP__BIND_DN": "cn=svc,dc=example,dc=org",
    })
    assert result.returncode == 0, result.stderr
    assert secret not in result.stdout + result.stderr
    assert 'plugins.acl.ldap.bind_password = "***"' in result.stdout.splitlines()
    # not a secret: shown
    assert 'plugins.acl.ldap.bind_dn = "cn=svc,dc=example,dc=org"' in result.stdout.splitlines()


def test_redaction_helper(clean_env, tmp_path):
    config = write_config(tmp_path / "s.toml", {"plugins.acl.ldap.bind_password": "pw",
                                                "plugins.acl.ldap.bind_dn": "cn=x"})
    settings = load_settings(config)
    flat = redacted(settings, {"plugins.acl.ldap.bind_password", "workers.backend"})
    assert flat["plugins.acl.ldap.bind_password"] == "***"
    assert flat["workers.backend"] == "***"
    assert flat["plugins.acl.ldap.bind_dn"] == "cn=x"
    assert flat["sessions.max_sessions"] == 1000
    # a password is redacted even when no loaded plugin declares it (acl switched off)
    assert redacted(settings, set())["plugins.acl.ldap.bind_password"] == "***"
    assert redacted(settings, set())["plugins.acl.token_ttl_seconds"] == 1800
    # an empty secret is shown as empty (nothing is configured), not as ***
    settings = load_settings()
    assert redacted(settings, {"plugins.acl.ldap.bind_password"})[
        "plugins.acl.ldap.bind_password"] == ""
