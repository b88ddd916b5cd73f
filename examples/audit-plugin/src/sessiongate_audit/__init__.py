"""sessiongate-audit: an audit line per session, and a client-name deny list.

An example third-party plugin (see docs/plugin-authors-guide.md). It is found
through the entry point ``audit = "sessiongate_audit"`` in the group
``sessiongate.plugins``; the module itself is the plugin (pluggy collects the
functions marked ``@hookimpl``).

State: none at module level. A process may run several gateways (tests do), so
everything is read from the gateway the session belongs to.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import pathlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from dynaconf import Validator

from sessiongate.core import hookimpl
from sessiongate.core.errors import PermissionDenied
from sessiongate.core.settings import Setting

if TYPE_CHECKING:
    from sessiongate.core.auth import Identity
    from sessiongate.core.session import Session
    from sessiongate.core.settings import Settings

__all__ = ["AUDIT_LOGGER", "DEFAULTS"]

AUDIT_LOGGER = "sessiongate.audit"
log = logging.getLogger(AUDIT_LOGGER)

#: The plugin's settings and their defaults. The shipped settings.toml knows only the
#: built-in plugins, so a third-party plugin brings its defaults with its rules.
DEFAULTS: dict[str, Any] = {
    "plugins.audit.file": "",
    "plugins.audit.deny_client_names": [],
}


@dataclasses.dataclass(frozen=True)
class _DefaultedSetting(Setting):
    """A rule whose key may be absent from the user's settings (then: ``default``)."""

    default: Any = None

    def validator(self) -> Validator:
        return Validator(self.key, default=self.default, condition=self.check,
                         messages={"condition": f"{self.key} = {{value!r}}: must be "
                                                f"{self.rule}"})


def _names(value: Any) -> bool:
    return isinstance(value, list | tuple) and all(isinstance(v, str) and v for v in value)


@hookimpl
def sg_add_validators(settings: Settings) -> Sequence[Setting]:
    """Rules for ``plugins.audit.*`` (the host reports every failure at once, exit 2)."""
    return [
        _DefaultedSetting(
            "plugins.audit.file", "a string (a path; empty: the log)",
            lambda v: isinstance(v, str),
            "Append the audit lines (JSON) to this file; empty: log them on the "
            f"{AUDIT_LOGGER} logger.", default=DEFAULTS["plugins.audit.file"]),
        _DefaultedSetting(
            "plugins.audit.deny_client_names", "a list of non-empty strings", _names,
            "OpenSession from these client names is refused with PERMISSION_DENIED.",
            default=DEFAULTS["plugins.audit.deny_client_names"]),
    ]


def _settings(session: Session) -> Any:
    return session.attributes["gateway"].settings


def _write(session: Session, event: str, **extra: Any) -> None:
    """One JSON line; an OSError propagates, and the host applies the hook's rule."""
    record = {
        "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds"),
        "event": event,
        # A refused open creates no session: its pre-allocated id (a spare worker's)
        # serves the next open, so a "denied" line carries none.
        "session_id": None if event == "denied" else session.session_id,
        "client_name": session.client_name,
        "owner_key_id": session.owner_key_id,
        **extra,
    }
    line = json.dumps(record, sort_keys=True)
    target = str(_settings(session).get("plugins.audit.file") or "")
    if not target:
        log.info("audit %s", line)
        return
    with pathlib.Path(target).open("a", encoding="utf-8") as fh:
        fh.write(line + "\n")


@hookimpl
def sg_session_open(session: Session, identity: Identity) -> None:
    """Veto hook: refuse deny-listed client names (before any worker starts)."""
    denied = _settings(session).get("plugins.audit.deny_client_names") or []
    if session.client_name in denied:
        _write(session, "denied", key_id=identity.key_id)
        raise PermissionDenied(
            f"client name {session.client_name!r} may not open sessions "
            "(plugins.audit.deny_client_names)")


@hookimpl
def sg_session_opened(session: Session) -> None:
    """Observer: the session is READY."""
    _write(session, "opened", backend=session.backend, tag=session.tag)


@hookimpl
def sg_session_closed(session: Session, reason: str) -> None:
    """Observer: the session is CLOSED or FAULTED."""
    _write(session, "closed", reason=reason, state=str(session.state))
