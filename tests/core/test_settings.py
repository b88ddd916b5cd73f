"""Settings: shipped defaults, user file, environment, validation of everything at once."""

from __future__ import annotations

import importlib.util
import math
import os
import pathlib
import re
import subprocess
import sys
import tomllib

import pytest

from sessiongate.core import hookimpl
from sessiongate.core.config.settings import (
    SettingsError,
    core_settings,
    defaults_path,
    flatten,
    load_settings,
    positive_int,
    redacted,
)
from sessiongate.core.pluginhost.host import load
from sessiongate.testing import write_config

ROOT = pathlib.Path(__file__).resolve().parents[2]


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


# -- issue 13: bounds, unreadable input, unknown plugins -----------------------------------

ALL_ON = {f"SESSIONGATE_PLUGINS__{name}__ENABLED": "true"
          for name in ("FANOUT", "RECONNECT", "ACL", "REATTACH", "ACTIVITY", "WEBHOOKS",
                       "DASHBOARD", "CLUSTER")}


def _shipped() -> dict:
    with open(defaults_path(), "rb") as fh:
        return flatten(tomllib.load(fh))


def _numeric_keys() -> list[str]:
    """Every shipped key whose default is a number: core's and every built-in plugin's."""
    return sorted(k for k, v in _shipped().items()
                  if isinstance(v, int | float) and not isinstance(v, bool))


def _env_name(key: str) -> str:
    return "SESSIONGATE_" + "__".join(part.upper() for part in key.split("."))


def _all_rules() -> list:
    """core's rules and every built-in plugin's, as docs/settings.md is generated."""
    spec = importlib.util.spec_from_file_location("sessiongate_docs_generate",
                                                  ROOT / "docs" / "generate.py")
    assert spec is not None and spec.loader is not None
    generate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generate)
    rules = list(core_settings())
    for _name, contributed in generate.builtin_plugin_rules():
        rules += contributed
    return rules


def test_numeric_keys_include_every_plugin():
    keys = _numeric_keys()
    for key in ("events.stall_timeout_seconds", "plugins.fanout.replay_retention_seconds",
                "plugins.reconnect.detach_grace_seconds", "plugins.acl.token_ttl_seconds",
                "plugins.acl.ldap.timeout_seconds",
                "plugins.reattach.max_orphan_lifetime_seconds"):
        assert key in keys


@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "1e308", str(10**20)])
def test_infinite_nan_and_huge_numbers_are_refused(clean_env, value):
    """Every numeric setting, core's and every plugin's, refuses nan, inf and huge
    values; all of them are reported at once."""
    for name, on in ALL_ON.items():
        clean_env.setenv(name, on)
    keys = _numeric_keys()
    for key in keys:
        clean_env.setenv(_env_name(key), value)
    with pytest.raises(SettingsError) as info:
        load(None)
    problems = info.value.problems
    missing = [k for k in keys if not any(p.startswith(f"{k} = ") and "must be" in p
                                          for p in problems)]
    assert not missing, f"{value} accepted for {missing}"


def test_every_numeric_rule_states_a_finite_upper_bound_that_it_enforces():
    """The bound is in the rule's words (docs/settings.md) and is the one enforced; the
    shipped default is within it."""
    shipped = _shipped()
    numeric = set(_numeric_keys())
    rules = [r for r in _all_rules() if r.key in numeric]
    assert {r.key for r in rules} == numeric
    for rule in rules:
        match = re.search(r"(?:<=|to) (\d+)\b", rule.rule)
        assert match, f"{rule.key}: no upper bound in {rule.rule!r}"
        bound = int(match.group(1))
        assert rule.check(bound), rule.key
        assert not rule.check(bound + 1), rule.key
        assert not rule.check(bound + 0.5), rule.key
        for bad in (math.inf, -math.inf, math.nan, 10**100, True):
            assert not rule.check(bad), (rule.key, bad)
        assert rule.check(shipped[rule.key]), rule.key
    reference = (ROOT / "docs" / "settings.md").read_text()
    for rule in rules:  # a key may have several rows (its rule, then cross-checks)
        rows = [line for line in reference.splitlines()
                if line.startswith(f"| `{rule.key}` |")]
        assert any(rule.rule in row for row in rows), (rule.key, rows)


@pytest.mark.parametrize("key", ["sessions.default_lease_seconds",
                                 "workers.heartbeat_interval_seconds"])
def test_check_config_refuses_inf_exit_2(tmp_path, key):
    result = _sessiongate("check-config", cwd=tmp_path, env={_env_name(key): "inf"})
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert f"{key} = inf: must be a number > 0 and <= " in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("command", ["check-config", "serve"])
def test_invalid_toml_is_one_line_naming_file_and_line(tmp_path, command):
    state = tmp_path / "state"
    bad = tmp_path / "bad.toml"
    bad.write_text(f'state_dir = "{state}"\n[sessions\nmax_sessions = 3\n')
    result = _sessiongate(command, "--config", str(bad), cwd=tmp_path)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    problems = [line for line in result.stderr.splitlines() if line.startswith("  - ")]
    assert len(problems) == 1, result.stderr
    assert str(bad) in problems[0] and "not valid TOML" in problems[0]
    assert "line 2" in problems[0], problems[0]
    assert not state.exists()


def test_a_file_that_is_not_utf8_is_refused(clean_env, tmp_path):
    bad = tmp_path / "latin1.toml"
    bad.write_bytes('state_dir = "caf\xe9"\n'.encode("latin-1"))
    with pytest.raises(SettingsError) as info:
        load(str(bad))
    assert len(info.value.problems) == 1
    assert str(bad) in info.value.problems[0] and "UTF-8" in info.value.problems[0]


@pytest.mark.parametrize("command", ["check-config", "serve"])
def test_unparsable_environment_value_is_one_line_naming_the_variable(tmp_path, command):
    result = _sessiongate(command, cwd=tmp_path, env={
        "SESSIONGATE_SESSIONS__MAX_SESSIONS": "@int abc",
        "SESSIONGATE_STATE_DIR": str(tmp_path / "state")})
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    problems = [line for line in result.stderr.splitlines() if line.startswith("  - ")]
    assert len(problems) == 1, result.stderr
    assert "SESSIONGATE_SESSIONS__MAX_SESSIONS" in problems[0]
    assert "'@int abc'" in problems[0]
    assert not (tmp_path / "state").exists()


@pytest.mark.parametrize(("env", "named"), [
    ({"SESSIONGATE_SESSIONS__MAX_SESSIONS": "@int abc",
      "SESSIONGATE_EVENTS__MAX_BATCH": "@float x"},
     ["SESSIONGATE_SESSIONS__MAX_SESSIONS", "SESSIONGATE_EVENTS__MAX_BATCH"]),
    ({"SESSIONGATE_STATE_DIR": "@json {"}, ["SESSIONGATE_STATE_DIR = '@json {'"]),
    ({"SESSIONGATE_STATE_DIR": "@format {this.NOPE}"}, ["SESSIONGATE_STATE_DIR", "NOPE"]),
    ({"SESSIONGATE_STATE_DIR": "@get nope"}, ["nope"]),
    ({"SESSIONGATE_PLUGINS": "5"}, ["plugins = 5: must be a table"]),
    ({"SESSIONGATE_SESSIONS": "5"}, ["sessions = 5: must be a table"]),
    ({"SESSIONGATE_PLUGINS__ACL__LDAP": "[1]"}, ["plugins.acl.ldap = [1]: must be a table"]),
    ({"SESSIONGATE_PLUGINS__FANOUT": "[]"}, ["plugins.fanout = []: must be a table"]),
    ({"SESSIONGATE_SESSIONS": "@none"}, ["sessions = None: must be a table"]),
    ({"SESSIONGATE_PLUGINS__REATTACH": "@note x"}, ["plugins.reattach = None: must be a table"]),
], ids=lambda p: ",".join(f"{k[12:]}={v}" for k, v in p.items()) if isinstance(p, dict)
    else "named")
def test_environment_dynaconf_cannot_use_is_a_settings_error(clean_env, env, named):
    """Whatever dynaconf makes of a variable, the loader answers with SettingsError, in
    words that name the variable or the key."""
    for key, value in env.items():
        clean_env.setenv(key, value)
    with pytest.raises(SettingsError) as info:
        load(None)
    text = "\n".join(info.value.problems)
    assert "Mismatched type" not in text  # dynaconf's words, naming no value
    for words in named:
        assert words in text, text


def test_every_unparsable_environment_value_is_listed(clean_env):
    clean_env.setenv("SESSIONGATE_SESSIONS__MAX_SESSIONS", "@int abc")
    clean_env.setenv("SESSIONGATE_EVENTS__MAX_BATCH", "@float x")
    with pytest.raises(SettingsError) as info:
        load(None)
    text = "\n".join(info.value.problems)
    assert "SESSIONGATE_SESSIONS__MAX_SESSIONS = '@int abc'" in text
    assert "SESSIONGATE_EVENTS__MAX_BATCH = '@float x'" in text


@pytest.mark.parametrize(("table", "enabled", "suggestion"), [
    ("fanuot", "false", "fanout"), ("quorum", "true", None), ("reatach", "true", "reattach")])
def test_a_misspelt_plugin_name_is_refused(clean_env, tmp_path, table, enabled, suggestion):
    config = tmp_path / "typo.toml"
    config.write_text(f"[plugins.{table}]\nenabled = {enabled}\n")
    with pytest.raises(SettingsError) as info:
        load(str(config))
    lines = [p for p in info.value.problems if table in p]
    assert len(lines) == 1, info.value.problems
    assert "not installed" in lines[0]
    installed = lines[0].split("installed: ")[1].split(", ")
    assert {"acl", "fanout", "reattach", "reconnect"} <= set(installed)
    if suggestion:
        assert f"did you mean {suggestion!r}?" in lines[0]
    else:
        assert "did you mean" not in lines[0]


def test_a_misspelt_plugin_name_in_the_environment_is_refused(clean_env):
    clean_env.setenv("SESSIONGATE_PLUGINS__FANUOT__ENABLED", "false")
    with pytest.raises(SettingsError) as info:
        load(None)
    assert any("plugins.fanuot" in p and "did you mean 'fanout'?" in p
               for p in info.value.problems), info.value.problems


def test_check_config_refuses_a_misspelt_plugin_exit_2(tmp_path):
    config = tmp_path / "typo.toml"
    config.write_text("[plugins.fanuot]\nenabled = false\n")
    result = _sessiongate("check-config", "--config", str(config), cwd=tmp_path)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "settings are valid" not in result.stderr
    assert "plugins.fanuot" in result.stderr and "did you mean 'fanout'?" in result.stderr


def test_installed_plugins_keep_their_settings_when_switched_off(clean_env, tmp_path):
    """A switched-off plugin, built-in or registered (entry points: the audit example in
    tests/platform), still accepts its table."""

    class Demo:
        __name__ = "demo"

        @hookimpl
        def sg_add_validators(self, settings):
            return [positive_int("plugins.demo.limit", "A demo limit.")]

    config = write_config(tmp_path / "ok.toml", {
        "plugins.reattach.enabled": False,
        "plugins.reattach.adoption_window_seconds": 5,
        "plugins.demo.enabled": False,
        "plugins.demo.anything": 1,
    })
    settings, pm = load(str(config), extra_plugins=(Demo(),))
    assert settings.plugins.reattach.adoption_window_seconds == 5
    assert pm.get_plugin("demo") is None
    config = write_config(tmp_path / "typo.toml", {"plugins.dmeo.enabled": False})
    with pytest.raises(SettingsError) as info:
        load(str(config), extra_plugins=(Demo(),))
    assert any("did you mean 'demo'?" in p and "demo" in p.split("installed: ")[1]
               for p in info.value.problems), info.value.problems


def test_a_list_given_replaces_the_shipped_list(clean_env, tmp_path):
    """dynaconf's merge appends a user's list to the shipped one; a list a deployer
    gives, in the file or the environment, is the whole value."""
    key = "plugins.webhooks.retry_schedule_seconds"
    config = write_config(tmp_path / "s.toml", {"plugins.webhooks.enabled": True, key: [0, 60]})
    settings, _pm = load(str(config))
    assert list(settings.plugins.webhooks.retry_schedule_seconds) == [0, 60]
    clean_env.setenv(_env_name(key), "[1, 2]")
    settings, _pm = load(str(config))
    assert list(settings.plugins.webhooks.retry_schedule_seconds) == [1, 2]
    clean_env.delenv(_env_name(key))
    settings, _pm = load(None)
    assert list(settings.plugins.webhooks.retry_schedule_seconds) == [
        0, 5, 300, 1800, 7200, 18000, 36000, 36000]


def test_a_wrong_secret_setting_is_named_but_not_shown(clean_env):
    """A secret's value stays out of the error even when it is wrong (it may be nearly
    right: a password, a URL with one)."""
    clean_env.setenv("SESSIONGATE_PLUGINS__CLUSTER__ENABLED", "true")
    clean_env.setenv("SESSIONGATE_PLUGINS__CLUSTER__ADVERTISE_ADDRESS", "127.0.0.1:50551")
    clean_env.setenv("SESSIONGATE_PLUGINS__CLUSTER__REDIS_URL", "http://:hunter2@db:6379/0")
    with pytest.raises(SettingsError) as info:
        load(None)
    [problem] = [p for p in info.value.problems if p.startswith("plugins.cluster.redis_url")]
    assert "(a secret, not shown)" in problem and "hunter2" not in str(info.value.problems)
