"""The acl plugin's settings rules (``plugins.acl.*``), each naming key, value and rule.

Defaults live in ``settings/settings.toml``; these rules only judge them.
Cross-key rules read the other key from the loaded settings (like fanout's).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from sessiongate.core import (
    TAG_PATTERN,
    Setting,
    boolean,
    non_negative_number,
    positive_int,
    positive_number,
    string,
)

from .tokens import is_signing_key

if TYPE_CHECKING:
    from sessiongate.core import Settings

__all__ = ["SECRET_KEYS", "rules"]

P = "plugins.acl"
L = "plugins.acl.ldap"
ENABLED = f"{L}.enabled"
SECRET_KEYS = (f"{L}.bind_password",)

URL_PATTERN = r"ldaps?://[A-Za-z0-9.\-\[\]:]+(:[0-9]{1,5})?/?"


#: the longest refusal for failed logins, a week
MAX_BACKOFF = 7 * 86400


def _filter_with(*fields: str) -> Any:
    def check(value: Any) -> bool:
        return (isinstance(value, str) and value.startswith("(") and value.endswith(")")
                and any("{" + f + "}" in value for f in fields))
    return check


def _dn_like(value: Any) -> bool:
    return isinstance(value, str) and "=" in value and not value.startswith(("=", ","))


def _dn_list(value: Any) -> bool:
    return isinstance(value, list | tuple) and all(_dn_like(v) for v in value)


def _group_tags(value: Any) -> bool:
    if not isinstance(value, Mapping):
        return False
    for dn, tags in value.items():
        if not _dn_like(dn) or not isinstance(tags, list | tuple) or not tags:
            return False
        if not all(isinstance(t, str) and TAG_PATTERN.fullmatch(t) for t in tags):
            return False
    return True


def _template(value: Any) -> bool:
    return isinstance(value, str) and (
        value == "" or ("{username}" in value and _dn_like(value)
                        and not re.search(r"\{(?!username\})", value)))


def rules(settings: Settings) -> list[Setting]:
    """Every ``plugins.acl.*`` key with its rule (sg_add_validators)."""

    def get(key: str, default: Any = None) -> Any:
        try:
            return settings.get(key, default)
        except Exception:  # a malformed table: its own rule reports it
            return default

    url = get(f"{L}.url", "")
    backoff = get(f"{L}.backoff_seconds", 0)
    bind_dn = get(f"{L}.bind_dn", "")
    groups_mapped = bool(get(f"{L}.admin_groups")) or bool(get(f"{L}.group_tags"))
    return [
        positive_int(f"{P}.token_ttl_seconds",
                     "Lifetime of the token an LDAP login returns; after it, the token is "
                     "refused (UNAUTHENTICATED) and its live streams end.",
                     maximum=30 * 86400),
        positive_number(f"{P}.revocation_check_interval_seconds",
                        "How often live streams are checked against revoked API keys, revoked "
                        "and expired sign-in tokens, and against what a token's groups "
                        "grant now (a revoked key's or token's streams end within about "
                        "this time).",
                        maximum=3600),
        string(f"{P}.token_key_file", "The Ed25519 private key (PEM) that signs sign-in "
               "tokens; empty: state_dir/acl-token-key.pem, created on first use. Every "
               "node of a cluster must name the same key (a copy of one file), or a token "
               "is accepted only by the node that issued it."),
        Setting(f"{P}.token_key_file",
                "empty, or a readable file holding an unencrypted Ed25519 private key in "
                "PEM (openssl genpkey -algorithm ed25519 -out FILE; mode 0600)",
                lambda v: v == "" or is_signing_key(v),
                "(checked when plugins.acl.ldap.enabled: the file is read, never shown)",
                when=ENABLED),
        boolean(ENABLED, "Switches LDAP login (the Login RPC and `sessiongate login`) on."),
        string(f"{L}.url", "The directory: ldap://host[:port] or ldaps://host[:port].",
               pattern=URL_PATTERN, rule="an ldap:// or ldaps:// URL (host and optional port)"),
        boolean(f"{L}.start_tls", "Upgrade an ldap:// connection with StartTLS before "
                "sending any password (the certificate is verified)."),
        Setting(f"{L}.start_tls", "false when plugins.acl.ldap.url is ldaps:// (TLS already)",
                lambda v: not (v is True and isinstance(url, str)
                               and url.lower().startswith("ldaps://")),
                "(cross-check with plugins.acl.ldap.url)"),
        string(f"{L}.ca_file", "PEM file of the CA(s) that signed the directory's "
               "certificate (ldaps:// and StartTLS); empty: the system's CAs."),
        positive_number(f"{L}.timeout_seconds",
                        "Connect and response timeout for each directory request; a "
                        "directory that does not answer in time makes Login UNAVAILABLE.",
                        maximum=300),
        string(f"{L}.bind_dn", "Service account for search-then-bind; empty: bind "
               "directly with plugins.acl.ldap.user_dn_template."),
        string(f"{L}.bind_password", "Password of the service account (a secret: redacted "
               "by check-config, never logged).", secret=True),
        Setting(f"{L}.bind_password",
                "non-empty when plugins.acl.ldap.bind_dn is set (an empty password would be "
                "an anonymous bind)", lambda v: bool(v) or not bind_dn,
                "(cross-check with plugins.acl.ldap.bind_dn)", secret=True, when=ENABLED),
        Setting(f"{L}.user_dn_template",
                "empty, or a DN containing {username} and no other {field}",
                _template, "The user's DN with {username} where the (escaped) login "
                "name goes, e.g. uid={username},ou=people,dc=example,dc=org."),
        Setting(f"{L}.user_dn_template",
                "non-empty when plugins.acl.ldap.bind_dn is empty (one of the two is needed "
                "to find the user)", lambda v: bool(v) or bool(bind_dn),
                "(cross-check with plugins.acl.ldap.bind_dn)", when=ENABLED),
        string(f"{L}.user_search_base", "Where users are searched (with bind_dn)."),
        Setting(f"{L}.user_search_base", "non-empty when plugins.acl.ldap.bind_dn is set",
                lambda v: bool(v) or not bind_dn,
                "(cross-check with plugins.acl.ldap.bind_dn)", when=ENABLED),
        Setting(f"{L}.user_search_filter", "an LDAP filter in parentheses containing "
                "{username}", _filter_with("username"),
                "How a user is found; {username} is replaced by the escaped login name. "
                "Exactly one entry must match."),
        string(f"{L}.group_search_base", "Where the user's groups are searched; empty: no "
               "groups (the user is granted nothing)."),
        Setting(f"{L}.group_search_base",
                "non-empty when admin_groups or group_tags are set (they could never match)",
                lambda v: bool(v) or not groups_mapped,
                "(cross-check with plugins.acl.ldap.admin_groups and group_tags)",
                when=ENABLED),
        Setting(f"{L}.group_search_filter", "an LDAP filter in parentheses containing "
                "{user_dn} or {username}", _filter_with("user_dn", "username"),
                "How the user's groups are found; {user_dn} and {username} are replaced by "
                "escaped values."),
        Setting(f"{L}.admin_groups", "a list of group DNs", _dn_list,
                "Members of these groups get sessions:admin (every session, every action)."),
        Setting(f"{L}.group_tags", "a table of group DN = list of session tags "
                "([a-z0-9][a-z0-9._-]{0,63})", _group_tags,
                "Members of a group may get, list and stream (read-only) the sessions "
                "carrying one of its tags."),
        non_negative_number(
            f"{L}.group_refresh_interval_seconds",
            "How often the groups of people whose sign-in tokens are in use (a live stream, "
            "or a call since the last refresh) are read again with the service account, so "
            "a membership change reaches tokens already issued (a person no longer found "
            "has their tokens revoked); 0: every revocation_check_interval_seconds. "
            "Search-then-bind mode only: without bind_dn, membership changes apply at the "
            "next login.", maximum=3600),
        positive_int(f"{L}.max_logins_in_flight",
                     "Directory exchanges running at once (each on a thread of the plugin's "
                     "own, held until the directory answers or times out, even when the "
                     "caller gave up); a login beyond them is RESOURCE_EXHAUSTED at once.",
                     maximum=256),
        positive_int(f"{L}.user_failures_before_backoff",
                     "Failed logins for one username before it is refused for a while "
                     "(RESOURCE_EXHAUSTED with a retry hint); a successful login resets it.",
                     maximum=1000),
        positive_int(f"{L}.peer_failures_before_backoff",
                     "Failed logins from one client address (an IPv6 /64) before it is "
                     "refused for a while, whatever the username.", maximum=100000),
        positive_number(f"{L}.failure_window_seconds",
                        "A username or address is forgotten after this long without a "
                        "failed login (counted from the end of its refusal).",
                        maximum=7 * 86400),
        positive_number(f"{L}.backoff_seconds",
                        "The first refusal after too many failures; each further failure "
                        "doubles it.", maximum=86400),
        positive_number(f"{L}.backoff_max_seconds",
                        "The longest refusal for failed logins.", maximum=MAX_BACKOFF),
        Setting(f"{L}.backoff_max_seconds",
                f"at least plugins.acl.ldap.backoff_seconds (and <= {MAX_BACKOFF})",
                lambda v: _is_number(v) and 0 < v <= MAX_BACKOFF
                and (not _is_number(backoff) or v >= backoff),
                "(cross-check with plugins.acl.ldap.backoff_seconds)"),
        positive_int(f"{L}.failure_table_size",
                     "Usernames, and addresses, whose failed logins are remembered (each "
                     "table; beyond it the least recently failed are forgotten).",
                     maximum=10_000_000),
    ]


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
