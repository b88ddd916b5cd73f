"""Settings: shipped defaults, a user file, environment overrides, validated at once.

Loading is dynaconf (``SESSIONGATE_`` prefix, ``__`` for nesting). Validation is
two-phase (CONVENTIONS §2.3): core's rules and the plugin switches first, then
the rules that the enabled plugins contribute through ``sg_add_validators``.
Every problem of both phases is collected into one :class:`SettingsError`,
so a deployer sees everything that is wrong in one go (the CLI exits 2).

Each rule is a :class:`Setting` - a dynaconf ``Validator`` plus the words that
``docs/settings.md`` is generated from, so the documentation cannot drift.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import os
import pathlib
import re
import tempfile
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from dynaconf import Dynaconf, ValidationError, Validator
from dynaconf.validator import ValidatorList

__all__ = [
    "Setting",
    "Settings",
    "SettingsError",
    "boolean",
    "core_settings",
    "defaults_path",
    "flatten",
    "load_settings",
    "non_negative_int",
    "non_negative_number",
    "one_of",
    "positive_int",
    "positive_number",
    "redacted",
    "runtime_dir",
    "string",
]

ENV_PREFIX = "SESSIONGATE"
SETTINGS_FILE_ENV = "SESSIONGATE_SETTINGS_FILE"
#: SESSIONGATE_* variables that are not settings (dynaconf still loads them as keys).
ENV_ONLY = frozenset({"settings_file", "disabled_plugins", "trace_hooks", "client_key",
                      "client_server"})
REDACTED = "***"
#: redacted even when no loaded plugin declares it (a disabled plugin declares nothing)
SECRET_NAME = re.compile(r"(?:^|_)(?:password|passphrase|secret|private_key)$")

Settings = Dynaconf


class SettingsError(Exception):
    """Invalid settings: every problem, one per line, each naming key, value and rule."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid settings:\n" + "\n".join(f"  - {p}" for p in problems))


@dataclasses.dataclass(frozen=True)
class Setting:
    """One validated key: its rule, in code and in words, and what it does.

    :param key: dotted key, lower case (``sessions.max_sessions``).
    :param rule: a human description of the rule (``> 0``).
    :param check: returns True when the value is acceptable.
    :param effect: one sentence for the deployer's guide.
    :param secret: redacted by ``check-config`` and never logged.
    :param when: the rule only applies when this dotted boolean key is true.
    :param required: the key must exist (shipped defaults have every built-in key);
        ``False`` with ``default`` suits third-party plugins' keys.
    :param default: the value used when the key is absent (only with ``required=False``).
    """

    key: str
    rule: str
    check: Callable[[Any], bool]
    effect: str
    secret: bool = False
    when: str | None = None
    required: bool = True
    default: Any = None

    def validator(self) -> Validator:
        """The dynaconf ``Validator`` enforcing this rule, with a message naming all three."""
        # dynaconf str.format()s the messages: braces in a rule ("{username}") are literal
        rule = self.rule.replace("{", "{{").replace("}", "}}")
        message = f"{self.key} = {{value!r}}: must be {rule}"
        kwargs: dict[str, Any] = {
            "must_exist": True if self.required else None,
            "condition": self.check,
            "messages": {
                "must_exist_true": f"{self.key} is missing: must be {rule}",
                "condition": message,
            },
        }
        if self.when:
            kwargs["when"] = Validator(self.when, eq=True)
        if not self.required:
            kwargs["default"] = self.default
        return Validator(self.key, **kwargs)


# -- rule builders --------------------------------------------------------------------


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (_is_int(value) or isinstance(value, float)) and value == value  # not NaN


def positive_int(key: str, effect: str, **kw: Any) -> Setting:
    return Setting(key, "an integer > 0", lambda v: _is_int(v) and v > 0, effect, **kw)


def non_negative_int(key: str, effect: str, **kw: Any) -> Setting:
    return Setting(key, "an integer >= 0", lambda v: _is_int(v) and v >= 0, effect, **kw)


def positive_number(key: str, effect: str, **kw: Any) -> Setting:
    return Setting(key, "a number > 0", lambda v: _is_number(v) and v > 0, effect, **kw)


def non_negative_number(key: str, effect: str, **kw: Any) -> Setting:
    return Setting(key, "a number >= 0", lambda v: _is_number(v) and v >= 0, effect, **kw)


def boolean(key: str, effect: str, **kw: Any) -> Setting:
    return Setting(key, "true or false", lambda v: isinstance(v, bool), effect, **kw)


def one_of(key: str, choices: Iterable[str], effect: str, **kw: Any) -> Setting:
    options = tuple(choices)
    return Setting(key, "one of " + ", ".join(repr(c) for c in options),
                   lambda v: v in options, effect, **kw)


def string(key: str, effect: str, *, pattern: str | None = None, rule: str = "a string",
           **kw: Any) -> Setting:
    regex = re.compile(pattern) if pattern else None

    def check(value: Any) -> bool:
        return isinstance(value, str) and (regex is None or bool(regex.fullmatch(value)))

    return Setting(key, rule, check, effect, **kw)


def _host_port(value: Any) -> bool:
    if not isinstance(value, str) or ":" not in value:
        return False
    host, _, port = value.rpartition(":")
    return bool(host) and port.isdigit() and 0 <= int(port) <= 65535


def core_settings() -> list[Setting]:
    """The rules core owns (CONTRACT §4); plugins add theirs through ``sg_add_validators``."""
    return [
        string("state_dir", "Folder for the SQLite files, the instance id and the bootstrap key.",
               pattern=r".+", rule="a non-empty path"),
        string("runtime_dir", "Folder for worker sockets (created 0700); empty: a private "
               "folder under the system temp dir."),
        Setting("server.grpc_address", "host:port (port 0 picks a free port and logs it)",
                _host_port, "Where the gRPC API listens."),
        non_negative_number("server.shutdown_grace_seconds",
                            "On SIGTERM, how long active calls get before they are cancelled."),
        one_of("log.level", ("DEBUG", "INFO", "WARNING", "ERROR"), "Log threshold."),
        one_of("log.format", ("text", "json"), "Human-readable lines, or one JSON object a line."),
        positive_number("sessions.default_lease_seconds",
                        "Lease of a new session, and the extension each Invoke grants."),
        positive_number("sessions.lease_sweep_interval_seconds",
                        "How often expired sessions are looked for and closed."),
        positive_int("sessions.max_sessions", "Open sessions at most; more: RESOURCE_EXHAUSTED."),
        positive_int("sessions.max_pending_commands",
                     "Commands in flight per session at most; more: RESOURCE_EXHAUSTED."),
        positive_number("sessions.command_timeout_seconds",
                        "Default per-command timeout; when it passes: DEADLINE_EXCEEDED."),
        positive_int("events.queue_capacity",
                     "How far a subscriber may fall behind the head (the newest event handed "
                     "to the fastest complete subscriber) beyond what the replay ring keeps "
                     "anyway; past it the subscriber meets the overflow policy. Independent "
                     "of plugins.fanout.replay_buffer_capacity."),
        one_of("events.backpressure_policy", ("fail_fast", "disconnect_subscriber"),
               "On overflow: fault the session, or end only that subscriber's stream."),
        positive_number("events.stall_timeout_seconds",
                        "How long the subscriber that paces the worker may take nothing while "
                        "the worker waits for it; then it meets the overflow policy."),
        Setting("events.max_batch", "an integer from 1 to 10000",
                lambda v: _is_int(v) and 1 <= v <= 10000,
                "Events per StreamEvents response at most (a client may ask for fewer)."),
        string("workers.backend", "Backend of sessions that do not name one.",
               pattern=r"[A-Za-z0-9_.-]+", rule="a backend name"),
        positive_number("workers.start_timeout_seconds",
                        "How long a new worker may take to connect and become Ready."),
        positive_number("workers.stop_timeout_seconds",
                        "How long a closing worker gets to exit before it is killed."),
        Setting("workers.max_frame_bytes", "an integer from 1024 to 67108864",
                lambda v: _is_int(v) and 1024 <= v <= 64 * 1024 * 1024,
                "Largest IPC frame; a larger one faults its session."),
        positive_number("workers.heartbeat_interval_seconds",
                        "How often gateway and worker send heartbeats when idle."),
        positive_number("workers.heartbeat_timeout_seconds",
                        "Silence from a worker for this long faults its session."),
        string("workers.python", "Python interpreter for workers; empty: the gateway's own."),
        non_negative_int("workers.spare_workers",
                         "Workers of the default backend started ahead of time, so an open "
                         "skips the worker's start-up (0: start each on demand)."),
    ]


# -- loading ---------------------------------------------------------------------------


def defaults_path() -> pathlib.Path:
    """The shipped ``settings.toml`` (from the installed package or the checkout)."""
    return pathlib.Path(str(importlib.resources.files("sessiongate.settings") / "settings.toml"))


def _plugin_names(raw: Any) -> list[str]:
    plugins = raw.get("plugins") if raw is not None else None
    return sorted(str(k).lower() for k in plugins.keys()) if plugins else []


def _dynaconf(config_file: str | os.PathLike[str] | None) -> Dynaconf:
    files = [str(defaults_path())]
    user = config_file or os.environ.get(SETTINGS_FILE_ENV)
    if user:
        path = pathlib.Path(user)
        if not path.is_file():
            raise SettingsError([f"settings file {str(path)!r} does not exist or is not a file"])
        files.append(str(path))
    return Dynaconf(
        envvar_prefix=ENV_PREFIX,
        settings_files=files,
        environments=False,
        merge_enabled=True,
    )


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` → ``{"a.b": 1}``, keys lower-cased."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{str(key).lower()}"
        if isinstance(value, Mapping) and value and not name.endswith("group_tags"):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def _problems(settings: Dynaconf, rules: list[Setting]) -> list[str]:
    try:  # a list of its own: each phase reports its own rules once
        ValidatorList(settings, validators=[r.validator() for r in rules]).validate_all()
    except ValidationError as exc:
        return [str(message) for _validator, message in exc.details]
    return []


def load_settings(
    config_file: str | os.PathLike[str] | None = None,
    *,
    plugin_rules: Callable[[Dynaconf], list[Setting]] | None = None,
) -> Dynaconf:
    """Load and validate; raise :class:`SettingsError` listing every problem.

    :param plugin_rules: called with the phase-1 settings when the plugin switches
        are valid; returns the rules of the enabled plugins (the plugin host passes
        ``sg_add_validators`` here).
    """
    settings = _dynaconf(config_file)
    problems: list[str] = []
    rules = core_settings()
    from sessiongate.core.plugins import BUILTIN_PLUGINS

    # Built-in switches are shipped in the defaults; a third-party plugin's table may
    # leave its switch out (it is on when installed).
    switches = [boolean(f"plugins.{name}.enabled", f"Switches the {name} plugin on or off.",
                        required=name in BUILTIN_PLUGINS, default=True)
                for name in _plugin_names(settings)]
    problems += _problems(settings, rules + switches)
    if plugin_rules is not None and not any(p.startswith("plugins.") and ".enabled" in p
                                            for p in problems):
        extra = plugin_rules(settings)
        rules += extra
        problems += _problems(settings, extra)
    known = {r.key for r in rules + switches}
    # A plugin's namespace is checked only when the plugin is loaded and has rules there:
    # a disabled (never imported) plugin cannot say which of its keys exist.
    checked = {k.split(".")[1] for k in known if k.startswith("plugins.") and
               not k.endswith(".enabled")} if plugin_rules is not None else set()
    for key in sorted(flatten(settings.as_dict())):
        if key in known or key in ENV_ONLY:
            continue
        parts = key.split(".")
        if parts[0] == "plugins" and len(parts) > 1 and parts[1] not in checked:
            continue
        problems.append(f"{key}: unknown setting (misspelt, or its plugin is not installed)")
    if problems:
        raise SettingsError(problems)
    return settings


def redacted(settings: Dynaconf, secret_keys: Iterable[str]) -> dict[str, Any]:
    """The effective settings as a flat dict with every secret replaced by ``***``."""
    secrets = set(secret_keys)
    flat = {k: v for k, v in flatten(settings.as_dict()).items() if k not in ENV_ONLY}
    return {k: (REDACTED if (k in secrets or SECRET_NAME.search(k.rsplit(".", 1)[-1]))
                and v not in ("", None) else v)
            for k, v in sorted(flat.items())}


def runtime_dir(settings: Dynaconf) -> pathlib.Path:
    """The socket folder: configured, or private under the temp dir; created 0700."""
    configured = settings.get("runtime_dir") or ""
    path = (pathlib.Path(configured) if configured
            else pathlib.Path(tempfile.gettempdir()) / f"sessiongate-{os.getuid()}")
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path
