"""The dashboard's settings: every problem at once (exit 2), cross-key rules naming every
key involved (issue 17, item 1)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from sessiongate.core.config.settings import SettingsError
from sessiongate.core.pluginhost.host import load
from sessiongate.testing import write_config

pytestmark = pytest.mark.once  # settings rules: independent of the plugin matrix


def problems_of(tmp_path, **values):
    config = write_config(tmp_path / "bad.toml", {"plugins.dashboard.enabled": True, **values})
    with pytest.raises(SettingsError) as err:
        load(str(config))
    return err.value.problems


def test_every_missing_need_is_reported_together_naming_both_keys(tmp_path):
    problems = problems_of(tmp_path, **{
        "plugins.acl.ldap.enabled": False,
        "plugins.fanout.enabled": False,
        "server.http_address": "",
        "plugins.dashboard.snapshot_interval_seconds": 0,
    })
    text = "\n".join(problems)
    sign_in = next(p for p in problems if p.startswith("plugins.dashboard.allow_api_key_login"))
    assert "plugins.acl.ldap.enabled" in sign_in
    assert any("plugins.dashboard.enabled" in p and "plugins.fanout.enabled" in p
               for p in problems), text
    assert any("plugins.dashboard.enabled" in p and "server.http_address" in p
               for p in problems), text
    assert "plugins.dashboard.snapshot_interval_seconds = 0" in text


def test_acl_switched_off_needs_api_key_login(tmp_path):
    problems = problems_of(tmp_path, **{"plugins.acl.enabled": False})
    assert [p for p in problems if "allow_api_key_login" in p and "plugins.acl.enabled" in p]


@pytest.mark.parametrize("values", [
    {"plugins.acl.enabled": False, "plugins.dashboard.allow_api_key_login": True},
    {"plugins.acl.ldap.enabled": True, "plugins.acl.ldap.url": "ldap://127.0.0.1:1",
     "plugins.acl.ldap.user_dn_template": "uid={username},dc=example,dc=org"},
], ids=["api-keys", "ldap"])
def test_a_way_to_sign_in_is_enough(tmp_path, values):
    config = write_config(tmp_path / "ok.toml", {
        "plugins.dashboard.enabled": True, "plugins.fanout.enabled": True,
        "server.http_address": "127.0.0.1:0", **values})
    settings, _pm = load(str(config))
    assert settings.plugins.dashboard.snapshot_interval_seconds == 1


def test_check_config_exits_2_listing_every_problem(tmp_path):
    config = write_config(tmp_path / "bad.toml", {
        "plugins.dashboard.enabled": True, "plugins.fanout.enabled": False,
        "plugins.dashboard.allow_api_key_login": "yes"})
    done = subprocess.run([sys.executable, "-m", "sessiongate", "check-config", "--config",
                           str(config)], capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 2, done.stderr
    assert "plugins.fanout.enabled" in done.stderr
    assert "plugins.dashboard.allow_api_key_login = 'yes'" in done.stderr
