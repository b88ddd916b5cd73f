"""The dashboard plugin's settings rules (``plugins.dashboard.*``), and what it needs.

Defaults live in ``settings/settings.toml``; these rules only judge them. The plugin
needs three things of the rest of the settings, each checked here with a message that
names every key involved (all problems are reported together, exit 2):

* a way to sign in: the acl plugin with LDAP login on, or
  ``plugins.dashboard.allow_api_key_login``;
* the fanout plugin (its distributor feeds the live pages);
* the HTTP side port (``server.http_address`` not empty).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sessiongate.core import Setting, boolean

if TYPE_CHECKING:
    from sessiongate.core import Settings

__all__ = ["MAX_INTERVAL", "MIN_INTERVAL", "ldap_login_on", "rules"]

P = "plugins.dashboard"
#: the snapshot interval's bounds: faster than 10 a second is a busy loop per page
MIN_INTERVAL = 0.1
MAX_INTERVAL = 60.0


def _get(settings: Settings, key: str, default: Any = None) -> Any:
    try:
        return settings.get(key, default)
    except Exception:  # a malformed table: its own rule reports it
        return default


def ldap_login_on(settings: Settings) -> bool:
    """People can sign in with their directory account (acl on, its LDAP login on)."""
    return (_get(settings, "plugins.acl.enabled") is True
            and _get(settings, "plugins.acl.ldap.enabled") is True)


def _interval(value: Any) -> bool:
    return (isinstance(value, int | float) and not isinstance(value, bool)
            and MIN_INTERVAL <= value <= MAX_INTERVAL)


def rules(settings: Settings) -> list[Setting]:
    """Every ``plugins.dashboard.*`` key with its rule (sg_add_validators)."""
    ldap = ldap_login_on(settings)
    fanout = _get(settings, "plugins.fanout.enabled") is True
    http_address = _get(settings, "server.http_address", "")
    return [
        Setting(f"{P}.snapshot_interval_seconds",
                f"a number of seconds from {MIN_INTERVAL:g} to {MAX_INTERVAL:g}", _interval,
                "How often the overview (sessions, event rates) is pushed to every open "
                "page; a page that connects gets the current one at once."),
        boolean(f"{P}.allow_api_key_login",
                "Offer sign-in with an API key on the sign-in page (for deployments "
                "without LDAP); the key is checked once and never kept."),
        Setting(f"{P}.allow_api_key_login",
                "true when plugins.acl.enabled or plugins.acl.ldap.enabled is false "
                "(the dashboard needs a way to sign in: LDAP through the acl plugin, or "
                "API keys)", lambda v: v is True or ldap,
                "(cross-check with plugins.acl.enabled and plugins.acl.ldap.enabled)"),
        Setting(f"{P}.enabled",
                "false unless plugins.fanout.enabled is true (the live session pages "
                "read events through fanout's many-subscriber distributor)",
                lambda v: v is not True or fanout,
                "(cross-check with plugins.fanout.enabled)"),
        Setting(f"{P}.enabled",
                "false unless server.http_address is set (the dashboard is served on "
                "the HTTP side port)",
                lambda v: v is not True or (isinstance(http_address, str)
                                            and bool(http_address)),
                "(cross-check with server.http_address)"),
    ]
