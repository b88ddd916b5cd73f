"""The decision table (pure) and the plugin's settings rules."""

from __future__ import annotations

import pytest

from sessiongate.core.config.settings import SettingsError
from sessiongate.core.identity import ADMIN_SCOPE, Identity
from sessiongate.plugins.acl import decide, keeps_alive
from sessiongate.plugins.acl.directory import normalize_dn
from sessiongate.testing import write_config

pytestmark = [pytest.mark.requires_plugin("acl"), pytest.mark.once]  # unit tests

ACTIONS = ("get", "list", "stream", "invoke", "close", "resume")
READS = {"get", "list", "stream"}


class FakeSession:
    def __init__(self, owner: str, tag: str = "") -> None:
        self.session_id = "s1"
        self.owner_key_id = owner
        self.tag = tag


OWNER = Identity(key_id="k-owner", name="owner")
OTHER = Identity(key_id="k-other", name="other")
ADMIN = Identity(key_id="k-admin", name="admin", scopes=frozenset({ADMIN_SCOPE}))
VIEWER = Identity(key_id="k-viewer", name="viewer", tags=frozenset({"line-1"}))
LDAP_VIEWER = Identity(key_id="ldap:v", name="v", tags=frozenset({"line-1"}), kind="token")
LDAP_ADMIN = Identity(key_id="ldap:a", name="a", scopes=frozenset({ADMIN_SCOPE}),
                      kind="token")


@pytest.mark.parametrize("action", ACTIONS)
def test_decision_table(action):
    tagged, untagged = FakeSession("k-owner", "line-1"), FakeSession("k-owner")
    ownerless = FakeSession("", "line-1")
    for session in (tagged, untagged):
        assert decide(OWNER, action, session)[0]
        assert decide(ADMIN, action, session)[0]
        assert not decide(OTHER, action, session)[0]
    assert decide(VIEWER, action, tagged)[0] is (action in READS)
    assert decide(LDAP_VIEWER, action, tagged)[0] is (action in READS)
    assert not decide(VIEWER, action, untagged)[0]
    assert decide(ADMIN, action, ownerless)[0]
    for identity in (OWNER, VIEWER, OTHER):
        assert not decide(identity, action, ownerless)[0]


def test_open_and_unknown_actions():
    assert decide(OTHER, "open", None)[0] and decide(VIEWER, "open", None)[0]
    assert decide(LDAP_ADMIN, "open", None)[0]
    assert not decide(LDAP_VIEWER, "open", None)[0]
    session = FakeSession("k-owner", "line-1")
    assert decide(OWNER, "frobnicate", session)[0]
    assert not decide(VIEWER, "frobnicate", session)[0]  # unknown: treated as a write


def test_only_owner_and_admin_streams_keep_a_session_alive():
    session = FakeSession("k-owner", "line-1")
    assert keeps_alive(OWNER, session) and keeps_alive(ADMIN, session)
    assert not keeps_alive(VIEWER, session) and not keeps_alive(OTHER, session)
    assert not keeps_alive(Identity(key_id="", name="x"), FakeSession(""))


def test_dn_comparison_ignores_case_and_spaces():
    assert normalize_dn("CN=Ops, OU=Groups,dc=Example,DC=org") == \
        "cn=ops,ou=groups,dc=example,dc=org"
    assert normalize_dn(r"cn=a\,b,dc=x") == r"cn=a\,b,dc=x"


def _problems(tmp_path, **overrides) -> str:
    from sessiongate.core.pluginhost.host import load

    config = write_config(tmp_path / "acl.toml", overrides)
    with pytest.raises(SettingsError) as info:
        load(str(config))
    return str(info.value)


def test_settings_rules_report_every_problem_at_once(tmp_path):
    text = _problems(tmp_path, **{
        "plugins.acl.token_ttl_seconds": 0,
        "plugins.acl.revocation_check_interval_seconds": -1,
        "plugins.acl.ldap.enabled": True,
        "plugins.acl.ldap.url": "http://directory",
        "plugins.acl.ldap.user_search_filter": "uid={username}",
        "plugins.acl.ldap.admin_groups": ["admins"],
        "plugins.acl.ldap.group_tags": {"cn=ops,dc=x": ["Not A Tag"]},
        "plugins.acl.ldap.timeout_seconds": 0,
        "plugins.acl.ldap.unknown_key": 1,
    })
    for expected in (
        "plugins.acl.token_ttl_seconds = 0",
        "plugins.acl.revocation_check_interval_seconds = -1",
        "plugins.acl.ldap.url = 'http://directory': must be an ldap:// or ldaps:// URL",
        "plugins.acl.ldap.user_dn_template = '': must be non-empty when "
        "plugins.acl.ldap.bind_dn is empty",
        "must be an LDAP filter in parentheses containing {username}",
        "plugins.acl.ldap.admin_groups = ['admins']: must be a list of group DNs",
        "plugins.acl.ldap.group_tags",
        "plugins.acl.ldap.timeout_seconds = 0",
        "plugins.acl.ldap.group_search_base = '': must be non-empty",
        "plugins.acl.ldap.unknown_key: unknown setting",
    ):
        assert expected in text, (expected, text)


def test_search_then_bind_needs_a_base_and_a_password(tmp_path):
    text = _problems(tmp_path, **{
        "plugins.acl.ldap.enabled": True,
        "plugins.acl.ldap.url": "ldaps://directory:636",
        "plugins.acl.ldap.start_tls": True,
        "plugins.acl.ldap.bind_dn": "cn=svc,dc=example,dc=org",
    })
    assert "plugins.acl.ldap.start_tls = True: must be false when plugins.acl.ldap.url " \
        "is ldaps://" in text
    assert "plugins.acl.ldap.bind_password = (a secret, not shown): must be non-empty" in text
    assert "plugins.acl.ldap.user_search_base = '': must be non-empty" in text


def test_login_limit_rules(tmp_path):
    text = _problems(tmp_path, **{
        "plugins.acl.ldap.max_logins_in_flight": 0,
        "plugins.acl.ldap.user_failures_before_backoff": 2.5,
        "plugins.acl.ldap.peer_failures_before_backoff": -1,
        "plugins.acl.ldap.failure_window_seconds": 0,
        "plugins.acl.ldap.backoff_seconds": 60,
        "plugins.acl.ldap.backoff_max_seconds": 30,
        "plugins.acl.ldap.failure_table_size": 0,
    })
    for expected in (
        "plugins.acl.ldap.max_logins_in_flight = 0",
        "plugins.acl.ldap.user_failures_before_backoff = 2.5",
        "plugins.acl.ldap.peer_failures_before_backoff = -1",
        "plugins.acl.ldap.failure_window_seconds = 0",
        "plugins.acl.ldap.backoff_max_seconds = 30: must be at least "
        "plugins.acl.ldap.backoff_seconds",
        "plugins.acl.ldap.failure_table_size = 0",
    ):
        assert expected in text, (expected, text)


def test_ldap_rules_only_bite_when_ldap_is_on(tmp_path):
    from sessiongate.core.pluginhost.host import load

    config = write_config(tmp_path / "ok.toml", {"plugins.acl.ldap.bind_dn": "cn=svc,dc=x"})
    settings, _pm = load(str(config))
    assert settings.plugins.acl.ldap.enabled is False


def test_the_bind_password_is_a_secret():
    from sessiongate.core.pluginhost.host import Hooks, load

    _settings, pm = load()
    secrets = {k for keys in Hooks(pm).collect("sg_secret_settings") for k in keys}
    assert "plugins.acl.ldap.bind_password" in secrets
