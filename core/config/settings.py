"""Settings: shipped defaults, a user file, environment overrides, validated at once.

Loading is dynaconf (``SESSIONGATE_`` prefix, ``__`` for nesting). Validation is
two-phase (CONVENTIONS §2.3): core's rules and the plugin switches first, then
the rules that the enabled plugins contribute through ``sg_add_validators``.
Every problem of both phases is collected into one :class:`SettingsError`,
so a deployer sees everything that is wrong in one go (the CLI exits 2). Whatever
dynaconf cannot read (a file that is not TOML, ``SESSIONGATE_X='@int abc'``) is a
:class:`SettingsError` too, never a traceback; every numeric rule has a finite upper
bound, and a ``plugins.<name>`` table must name an installed plugin.

Each rule is a :class:`Setting` - a dynaconf ``Validator`` plus the words that
``docs/settings.md`` is generated from, so the documentation cannot drift.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.resources
import ipaddress
import math
import os
import pathlib
import re
import tempfile
import tomllib
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from dynaconf import Dynaconf, ValidationError, Validator
from dynaconf.utils.parse_conf import Lazy, boolean_fix, parse_conf_data
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
                      "client_server", "client_ca_file", "client_cert_file", "client_key_file"})
REDACTED = "***"
#: redacted even when no loaded plugin declares it (a disabled plugin declares nothing)
SECRET_NAME = re.compile(r"(?:^|_)(?:password|passphrase|secret|private_key)$")

Settings = Dynaconf


class SettingsError(Exception):
    """Invalid settings: every problem, one per line, each naming key, value and rule."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = [printable(p) for p in problems]
        super().__init__("invalid settings:\n" + "\n".join(f"  - {p}" for p in self.problems))


def printable(text: str) -> str:
    """``text`` on one line, whatever a key holds: control characters shown escaped."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


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
        # a secret's value is never shown, not even a wrong one (it may be nearly right)
        shown = ("(a secret, not shown)" if self.secret or SECRET_NAME.search(
            self.key.rsplit(".", 1)[-1]) else "{value!r}")
        message = f"{self.key} = {shown}: must be {rule}"
        check = self.check

        def condition(value: Any) -> bool:
            try:  # a check that cannot cope with a value (None < 5) refuses it
                return bool(check(value))
            except Exception:
                return False

        kwargs: dict[str, Any] = {
            "must_exist": True if self.required else None,
            "condition": condition,
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
    """An int, or a finite float (not NaN, not ±inf)."""
    return _is_int(value) or (isinstance(value, float) and math.isfinite(value))


#: Upper bound of a numeric rule that names none: a year for ``*_seconds`` keys, else
#: the int32 range. Every numeric rule is bounded, so ``inf`` and huge values never pass.
MAX_SECONDS = 365 * 86400
MAX_COUNT = 2**31 - 1
_SPANS = {60: "a minute", 3600: "an hour", 86400: "a day", 7 * 86400: "a week",
          30 * 86400: "30 days", MAX_SECONDS: "365 days"}


def _maximum(key: str, maximum: int | None) -> int:
    if maximum is not None:
        return maximum
    return MAX_SECONDS if key.endswith("_seconds") else MAX_COUNT


def _bounded(kind: str, low: str, key: str, maximum: int) -> str:
    """``an integer > 0 and <= 86400 (a day)``: the words of a bounded numeric rule."""
    span = _SPANS.get(maximum) if key.endswith("_seconds") else None
    return f"{kind} {low} and <= {maximum}" + (f" ({span})" if span else "")


def positive_int(key: str, effect: str, *, maximum: int | None = None, **kw: Any) -> Setting:
    top = _maximum(key, maximum)
    return Setting(key, _bounded("an integer", "> 0", key, top),
                   lambda v: _is_int(v) and 0 < v <= top, effect, **kw)


def non_negative_int(key: str, effect: str, *, maximum: int | None = None,
                     **kw: Any) -> Setting:
    top = _maximum(key, maximum)
    return Setting(key, _bounded("an integer", ">= 0", key, top),
                   lambda v: _is_int(v) and 0 <= v <= top, effect, **kw)


def positive_number(key: str, effect: str, *, maximum: int | None = None,
                    **kw: Any) -> Setting:
    top = _maximum(key, maximum)
    return Setting(key, _bounded("a number", "> 0", key, top),
                   lambda v: _is_number(v) and 0 < v <= top, effect, **kw)


def non_negative_number(key: str, effect: str, *, maximum: int | None = None,
                        **kw: Any) -> Setting:
    top = _maximum(key, maximum)
    return Setting(key, _bounded("a number", ">= 0", key, top),
                   lambda v: _is_number(v) and 0 <= v <= top, effect, **kw)


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


def _is_loopback(address: Any) -> bool:
    """``host:port`` on a loopback host: ``localhost``, 127.0.0.0/8 or ``[::1]``.
    Any other name is not (it may resolve anywhere), nor are 0.0.0.0 and ``[::]``."""
    host = str(address).rpartition(":")[0].strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _tls_rules(settings: Settings | None) -> list[Setting]:
    """``server.tls.*`` and ``server.allow_insecure``, and how they constrain each other
    and ``server.grpc_address`` (the files themselves are read when the server binds:
    a client reading these settings may not be allowed to read the gateway's key)."""

    def get(key: str, default: Any = "") -> Any:
        try:
            return settings.get(key, default) if settings is not None else default
        except Exception:  # a malformed table: its own rule reports it
            return default

    cert_file, key_file = get("server.tls.cert_file"), get("server.tls.key_file")
    insecure_ok = get("server.allow_insecure", False) is True
    return [
        Setting("server.grpc_address", "a loopback address (localhost, 127.0.0.0/8 or [::1]) "
                "while server.tls.cert_file is empty: set server.tls.cert_file and "
                "server.tls.key_file to serve TLS, or server.allow_insecure = true to serve "
                "plaintext gRPC on it",
                lambda v: bool(cert_file) or insecure_ok or not _host_port(v)
                or _is_loopback(v),
                "(cross-check with server.tls.cert_file and server.allow_insecure)"),
        Setting("server.http_address", "empty or a loopback address (localhost, 127.0.0.0/8 "
                "or [::1]) while server.tls.cert_file is empty: set server.tls.cert_file and "
                "server.tls.key_file to serve TLS, or server.allow_insecure = true to serve "
                "plaintext HTTP on it",
                lambda v: bool(cert_file) or insecure_ok or not _host_port(v)
                or _is_loopback(v),
                "(cross-check with server.tls.cert_file and server.allow_insecure)"),
        boolean("server.allow_insecure", "Allows plaintext gRPC and HTTP (no "
                "server.tls.cert_file) on an address that is not loopback: API keys and "
                "tokens then cross the network in clear. Only for a network you trust, or "
                "behind a TLS-terminating proxy."),
        string("server.tls.cert_file", "PEM file with the gateway's certificate, followed by "
               "any intermediate CA certificates; set: the gRPC API and the HTTP side port "
               "are served over TLS only. Empty: plaintext."),
        string("server.tls.key_file", "PEM file with the certificate's private key "
               "(unencrypted; a warning is logged when group or others may read it)."),
        Setting("server.tls.key_file", "set when server.tls.cert_file is set (the two go "
                "together)", lambda v: bool(v) or not cert_file,
                "(cross-check with server.tls.cert_file)"),
        Setting("server.tls.cert_file", "set when server.tls.key_file is set (the two go "
                "together)", lambda v: bool(v) or not key_file,
                "(cross-check with server.tls.key_file)"),
        string("server.tls.client_ca_file", "PEM file of the CA(s) whose client "
               "certificates are accepted; set: mutual TLS, a client without such a "
               "certificate cannot connect. Empty: no client certificates."),
        Setting("server.tls.client_ca_file", "empty when server.tls.cert_file is empty "
                "(mutual TLS needs TLS)", lambda v: not v or bool(cert_file),
                "(cross-check with server.tls.cert_file)"),
    ]


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def _logger_levels(value: Any) -> bool:
    return isinstance(value, Mapping) and all(
        isinstance(name, str) and re.fullmatch(r"[A-Za-z_][\w.]*", name)
        and level in LOG_LEVELS for name, level in value.items())


def core_settings(settings: Settings | None = None) -> list[Setting]:
    """The rules core owns (CONTRACT §4); plugins add theirs through ``sg_add_validators``.

    :param settings: the loaded settings, for the rules that look at two keys (without
        them, those rules are listed with the loose defaults: for docs and key lists).
    """
    return [
        string("state_dir", "Folder for the SQLite files, the instance id and the bootstrap key.",
               pattern=r".+", rule="a non-empty path"),
        string("runtime_dir", "Folder for worker sockets (created 0700); empty: a private "
               "folder under the system temp dir."),
        Setting("server.grpc_address", "host:port (port 0 picks a free port and logs it)",
                _host_port, "Where the gRPC API listens."),
        Setting("server.http_address", 'host:port (port 0 picks a free port and logs it) or '
                '"" (off)', lambda v: v == "" or _host_port(v),
                "Where the HTTP side port listens: GET /metrics (Prometheus), /healthz, "
                "/readyz, and plugins' routes under /plugins/<name>/; with the same TLS as "
                "gRPC. Empty: no side port."),
        *_tls_rules(settings),
        non_negative_number("server.shutdown_grace_seconds",
                            "On SIGTERM, how long active calls get before they are cancelled.",
                            maximum=3600),
        one_of("log.level", LOG_LEVELS, "Log threshold."),
        one_of("log.format", ("text", "json"), "Human-readable lines, or one JSON object a line "
               "(keys ts, level, logger, msg, and session_id, subscriber_id, key_id where "
               "known)."),
        Setting("log.levels", "a table of logger name = DEBUG, INFO, WARNING or ERROR",
                _logger_levels, "A threshold per logger and its children, over log.level: "
                '{"sessiongate.events" = "DEBUG"}.'),
        positive_number("sessions.default_lease_seconds",
                        "Lease of a new session, and the extension each Invoke grants.",
                        maximum=MAX_SECONDS),
        positive_number("sessions.lease_sweep_interval_seconds",
                        "How often expired sessions are looked for and closed.",
                        maximum=3600),
        positive_int("sessions.max_sessions", "Open sessions at most; more: RESOURCE_EXHAUSTED.",
                     maximum=100_000),
        positive_int("sessions.max_pending_commands",
                     "Commands in flight per session at most; more: RESOURCE_EXHAUSTED.",
                     maximum=100_000),
        positive_number("sessions.command_timeout_seconds",
                        "Default per-command timeout; when it passes: DEADLINE_EXCEEDED.",
                        maximum=86400),
        positive_int("events.queue_capacity",
                     "How far a subscriber may fall behind the head (the newest event handed "
                     "to the fastest complete subscriber) beyond what the replay ring keeps "
                     "anyway; past it the subscriber meets the overflow policy. Independent "
                     "of plugins.fanout.replay_buffer_capacity.", maximum=1_000_000),
        one_of("events.backpressure_policy", ("fail_fast", "disconnect_subscriber"),
               "On overflow: fault the session, or end only that subscriber's stream."),
        positive_number("events.stall_timeout_seconds",
                        "How long the subscriber that paces the worker may take nothing while "
                        "the worker waits for it; then it meets the overflow policy.",
                        maximum=86400),
        non_negative_int("events.max_loop_lag_ms",
                         "Workers get no new credit while the gateway's event loop runs "
                         "this many ms behind (new calls wait one loop turn each); their "
                         "events are delayed, never dropped. 0: never held.",
                         maximum=60000),
        Setting("events.max_batch", "an integer from 1 to 10000",
                lambda v: _is_int(v) and 1 <= v <= 10000,
                "Events per StreamEvents response at most (a client may ask for fewer)."),
        string("workers.backend", "Backend of sessions that do not name one.",
               pattern=r"[A-Za-z0-9_.-]+", rule="a backend name"),
        positive_number("workers.start_timeout_seconds",
                        "How long a new worker may take to connect and become Ready.",
                        maximum=3600),
        positive_number("workers.stop_timeout_seconds",
                        "How long a closing worker gets to exit before it is killed.",
                        maximum=3600),
        Setting("workers.max_frame_bytes", "an integer from 1024 to 67108864",
                lambda v: _is_int(v) and 1024 <= v <= 64 * 1024 * 1024,
                "Largest IPC frame; a larger one faults its session."),
        positive_number("workers.heartbeat_interval_seconds",
                        "How often gateway and worker send heartbeats when idle.",
                        maximum=3600),
        positive_number("workers.heartbeat_timeout_seconds",
                        "Silence from a worker for this long faults its session.",
                        maximum=86400),
        string("workers.python", "Python interpreter for workers; empty: the gateway's own."),
        non_negative_int("workers.nice",
                         "How much lower the CPU priority of workers is than the gateway's "
                         "(added to its niceness, up to 19; 0: the same). Under CPU "
                         "saturation the gateway, which serves every session, keeps its "
                         "share.", maximum=19),
        non_negative_int("workers.spare_workers",
                         "Workers of the default backend started ahead of time, so an open "
                         "skips the worker's start-up (0: start each on demand).",
                         maximum=100),
    ]


# -- loading ---------------------------------------------------------------------------


def defaults_path() -> pathlib.Path:
    """The shipped ``settings.toml`` (from the installed package or the checkout)."""
    return pathlib.Path(str(importlib.resources.files("sessiongate.settings") / "settings.toml"))


def _plugin_names(settings: Any) -> list[str]:
    plugins = settings.get("plugins") if settings is not None else None
    return sorted(str(k).lower() for k in plugins) if isinstance(plugins, Mapping) else []


def _reason(exc: BaseException) -> str:
    """An exception as one line of text (never a traceback)."""
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def _markers(data: Any, where: str, path: str = "") -> list[str]:
    """Problems with dynaconf's ``@int``-style markers in a settings file's strings."""
    problems: list[str] = []
    if isinstance(data, Mapping):
        for key, value in data.items():
            problems += _markers(value, where, f"{path}.{key}" if path else str(key))
    elif isinstance(data, list):
        for value in data:
            problems += _markers(value, where, path)
    elif isinstance(data, str) and data.startswith("@"):
        try:
            parse_conf_data(data, tomlfy=False, box_settings={})
        except Exception as exc:
            problems.append(f"{where}: {path.lower()} = {data!r}: cannot be parsed: "
                            f"{_reason(exc)}")
    return problems


def _file_problems(path: pathlib.Path) -> list[str]:
    """Read a settings file before dynaconf does: a broken one becomes one line naming
    the file (and, for bad TOML, the line and column)."""
    where = f"settings file {str(path)!r}"
    try:
        raw = path.read_bytes()
    except OSError as exc:
        return [f"{where} cannot be read: {exc.strerror or _reason(exc)}"]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        return [f"{where} is not UTF-8 text (line {line}); TOML files must be UTF-8"]
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        return [f"{where} is not valid TOML: {_reason(exc)}"]
    return _markers(data, where)


def _environment_problems() -> list[str]:
    """Every ``SESSIONGATE_*`` value that dynaconf cannot parse (``'@int abc'``)."""
    problems = []
    for name, value in sorted(os.environ.items()):
        if not name.startswith(f"{ENV_PREFIX}_"):
            continue
        try:
            parse_conf_data(boolean_fix(value), tomlfy=True, box_settings={})
        except Exception as exc:
            problems.append(f"environment variable {name} = {value!r}: cannot be parsed: "
                            f"{_reason(exc)}")
    return problems


def _env_name(key: str) -> str:
    return f"{ENV_PREFIX}_" + "__".join(part.upper() for part in key.split("."))


def _is_lazy(value: Any, tomlfy: bool) -> bool:
    try:
        return isinstance(parse_conf_data(value, tomlfy=tomlfy, box_settings={}), Lazy)
    except Exception:
        return False


def _deferred(files: Iterable[pathlib.Path]) -> list[str]:
    """Where dynaconf evaluates a value late (``@format``, ``@get``...): the usual suspects
    when loading fails without naming a key."""
    found = [name for name, value in sorted(os.environ.items())
             if name.startswith(f"{ENV_PREFIX}_") and value.startswith("@")
             and _is_lazy(value, tomlfy=True)]
    for path in files:
        try:
            data = flatten(tomllib.loads(path.read_text(encoding="utf-8")))
        except Exception:
            continue
        found += [f"{key} in {str(path)!r}" for key, value in data.items()
                  if isinstance(value, str) and value.startswith("@")
                  and _is_lazy(value, tomlfy=False)]
    return found


def _unreadable(settings: Dynaconf, data: Mapping[str, Any]) -> list[str]:
    """Evaluate every value now (dynaconf evaluates ``@format`` and the like on access):
    a value that cannot be evaluated is a problem naming its key."""
    problems: list[str] = []

    def walk(get: Callable[[], Any], key: str) -> None:
        try:
            value = get()
        except Exception as exc:
            origin = _env_name(key)
            hint = (f" (environment variable {origin} = {os.environ[origin]!r})"
                    if origin in os.environ else "")
            problems.append(f"{key}: cannot be read{hint}: {_reason(exc)}")
            return
        if isinstance(value, Mapping):
            for sub in list(value.keys()):
                walk(lambda sub=sub: value[sub], f"{key}.{str(sub).lower()}")

    for top in list(data.keys()):
        walk(lambda top=top: settings.get(top), str(top).lower())
    return problems


def _dynaconf(config_file: str | os.PathLike[str] | None) -> Dynaconf:
    """The settings, every source read and every value evaluated now: whatever dynaconf
    cannot make of a file or a variable is a :class:`SettingsError`, never a traceback."""
    files = [defaults_path()]
    user = config_file or os.environ.get(SETTINGS_FILE_ENV)
    if user:
        path = pathlib.Path(user)
        if not path.is_file():
            raise SettingsError([f"settings file {str(path)!r} does not exist or is not a file"])
        files.append(path)
    problems = [p for f in files for p in _file_problems(f)] + _environment_problems()
    if problems:
        raise SettingsError(problems)
    settings = Dynaconf(
        envvar_prefix=ENV_PREFIX,
        settings_files=[str(f) for f in files],
        environments=False,
        merge_enabled=True,
    )
    try:
        data = settings.as_dict()  # reads every source now, not at the first access
    except Exception as exc:
        deferred = _deferred(files)
        hint = f" (evaluated late: {', '.join(deferred)})" if deferred else ""
        raise SettingsError([f"settings cannot be loaded{hint}: {_reason(exc)}"]) from None
    problems = _unreadable(settings, data)
    if problems:
        raise SettingsError(problems)
    for key, value in _given_lists(files[1:]).items():
        parent, _, name = key.rpartition(".")
        table = settings.get(parent) if parent else settings
        table[name] = value  # set in place: dynaconf's set() would merge again
    return settings


def _given_lists(user_files: Iterable[pathlib.Path]) -> dict[str, list[Any]]:
    """Every list a deployer gave (user file, then ``SESSIONGATE_*`` variables).

    ``merge_enabled`` lets a user's table add to the shipped one, which is right for
    tables; but dynaconf also *appends* a user's list to the shipped list, so a list
    given is set again, whole, to replace the shipped value as it says.
    """
    from dynaconf.utils.parse_conf import parse_conf_data

    with open(defaults_path(), "rb") as fh:
        lists = {k for k, v in flatten(tomllib.load(fh)).items() if isinstance(v, list)}
    found: dict[str, list[Any]] = {}
    for path in user_files:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
        found.update({k: v for k, v in flatten(data).items()
                      if k in lists and isinstance(v, list)})
    for name, raw in os.environ.items():
        key = ".".join(name[len(ENV_PREFIX) + 1:].lower().split("__"))
        if not name.startswith(f"{ENV_PREFIX}_") or key not in lists:
            continue
        value = parse_conf_data(raw, tomlfy=True)
        if isinstance(value, list):
            found[key] = value
    return found


def flatten(data: Mapping[str, Any], prefix: str = "",
            leaves: frozenset[str] | set[str] = frozenset()) -> dict[str, Any]:
    """``{"a": {"b": 1}}`` → ``{"a.b": 1}``, keys lower-cased.

    :param leaves: keys whose value is a table held whole (a setting such as a mapping
        of names to lists), not looked into.
    """
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{str(key).lower()}"
        if isinstance(value, Mapping) and value and name not in leaves:
            out.update(flatten(value, name + ".", leaves))
        else:
            out[name] = value
    return out


def _problems(settings: Dynaconf, rules: list[Setting]) -> list[str]:
    validators = [r.validator() for r in rules]
    try:  # a list of its own: each phase reports its own rules once
        ValidatorList(settings, validators=validators).validate_all()
    except ValidationError as exc:
        return [str(message) for _validator, message in exc.details]
    except Exception:  # one rule cannot cope: check them one by one, name the culprit
        problems = []
        for rule, validator in zip(rules, validators, strict=True):
            try:
                ValidatorList(settings, validators=[validator]).validate_all()
            except ValidationError as exc:
                problems += [str(message) for _validator, message in exc.details]
            except Exception as exc:
                problems.append(f"{rule.key}: cannot be checked: {_reason(exc)}")
        return problems
    return []


def _shipped_switches() -> set[str]:
    """The plugins the shipped defaults have a switch for (``plugins.<name>.enabled``)."""
    with open(defaults_path(), "rb") as fh:
        plugins = tomllib.load(fh).get("plugins", {})
    return {str(name).lower() for name, table in plugins.items()
            if isinstance(table, Mapping) and "enabled" in table}


def builtin_plugins() -> dict[str, str]:
    """The plugins this distribution ships: its own entry points, name → module."""
    from importlib.metadata import entry_points

    from sessiongate.core import ENTRY_POINT_GROUP, PROJECT

    return {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)
            if ep.dist is not None and ep.dist.name == PROJECT}


def installed_plugin_names(extra_plugins: Iterable[Any] = ()) -> set[str]:
    """Every name a ``plugins.<name>`` settings table may have: the installed entry
    points (read from metadata, nothing imported), the switches of the shipped defaults
    and ``extra_plugins`` (tests), whether switched on or off."""
    from importlib.metadata import entry_points

    from sessiongate.core import ENTRY_POINT_GROUP

    names = _shipped_switches()
    names.update(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))
    for plugin in extra_plugins:
        name = getattr(plugin, "__name__", None)  # pluggy's canonical name
        if isinstance(name, str):
            names.add(name)
    return {name.lower() for name in names}


def _shipped_tables() -> list[str]:
    """Dotted keys that are tables in the shipped defaults (``sessions``, ``plugins.acl``)."""
    with open(defaults_path(), "rb") as fh:
        data = tomllib.load(fh)

    def walk(table: Mapping[str, Any], prefix: str) -> list[str]:
        out = []
        for key, value in table.items():
            if isinstance(value, Mapping) and value:
                out.append(prefix + key)
                out += walk(value, prefix + key + ".")
        return out

    return walk(data, "")


_ABSENT = object()


def _under(key: str, tables: Iterable[str]) -> bool:
    return any(key == t or key.startswith(t + ".") for t in tables)


def _not_installed(name: str, installed: Iterable[str]) -> str:
    names = sorted(installed)
    close = difflib.get_close_matches(name, names, n=1)
    guess = f" (did you mean {close[0]!r}?)" if close else ""
    return (f"plugins.{name}: plugin {name!r} is not installed{guess}; installed: "
            f"{', '.join(names)}")


def load_settings(
    config_file: str | os.PathLike[str] | None = None,
    *,
    plugin_rules: Callable[[Dynaconf], list[Setting]] | None = None,
    installed_plugins: Iterable[str] | None = None,
) -> Dynaconf:
    """Load and validate; raise :class:`SettingsError` listing every problem.

    :param plugin_rules: called with the phase-1 settings when the plugin switches
        are valid; returns the rules of the enabled plugins (the plugin host passes
        ``sg_add_validators`` here).
    :param installed_plugins: the plugin names a ``plugins.<name>`` table may have
        (default: the built-in plugins and the installed entry points); a table of any
        other name is refused, with a suggestion.
    """
    settings = _dynaconf(config_file)
    installed = ({str(n).lower() for n in installed_plugins} if installed_plugins is not None
                 else installed_plugin_names())
    problems: list[str] = []
    # A table that is not a table (SESSIONGATE_SESSIONS=5): one problem, and nothing
    # under it is looked at (dynaconf cannot look into it).
    broken: list[str] = []
    unknown = [n for n in _plugin_names(settings) if n not in installed]
    problems += [_not_installed(n, installed) for n in unknown]
    skipped = [f"plugins.{n}" for n in unknown]  # reported once, not looked into
    for table in _shipped_tables() + [f"plugins.{n}" for n in _plugin_names(settings)]:
        if _under(table, broken + skipped):
            continue
        value = settings.get(table, _ABSENT)
        if value is not _ABSENT and not isinstance(value, Mapping):
            broken.append(table)
            problems.append(f"{table} = {value!r}: must be a table")
    names = [] if _under("plugins", broken) else _plugin_names(settings)
    skipped += broken
    rules = [r for r in core_settings(settings) if not _under(r.key, skipped)]
    # Switches shipped in the defaults must stay; a plugin whose table the defaults do not
    # have may leave its switch out (it is on when installed).
    shipped = _shipped_switches()
    switches = [boolean(f"plugins.{name}.enabled", f"Switches the {name} plugin on or off.",
                        required=name in shipped, default=True)
                for name in names if not _under(f"plugins.{name}", skipped)]
    problems += _problems(settings, rules + switches)
    if plugin_rules is not None and not broken and not any(
            p.startswith("plugins.") and ".enabled" in p for p in problems):
        extra = plugin_rules(settings)
        rules += extra
        problems += _problems(settings, extra)
    known = {r.key for r in rules + switches}
    # A plugin's namespace is checked only when the plugin is loaded and has rules there:
    # a disabled (never imported) plugin cannot say which of its keys exist.
    checked = {k.split(".")[1] for k in known if k.startswith("plugins.") and
               not k.endswith(".enabled")} if plugin_rules is not None else set()
    for key in sorted(flatten(settings.as_dict(), leaves=known)):
        if key in known or key in ENV_ONLY or _under(key, skipped):
            continue
        parts = key.split(".")
        if parts[0] == "plugins" and len(parts) > 1 and parts[1] not in checked:
            continue
        problems.append(f"{key}: unknown setting (misspelt, or its plugin is not installed)")
    if problems:
        raise SettingsError(problems)
    return settings


def redacted(settings: Dynaconf, secret_keys: Iterable[str],
             leaves: Iterable[str] = ()) -> dict[str, Any]:
    """The effective settings as a flat dict with every secret replaced by ``***``.

    :param leaves: the keys of every rule: a table-valued setting is shown whole.
    """
    secrets = set(secret_keys)
    flat = {k: v for k, v in flatten(settings.as_dict(), leaves=set(leaves)).items()
            if k not in ENV_ONLY}
    return {printable(k): (REDACTED if (k in secrets or SECRET_NAME.search(k.rsplit(".", 1)[-1]))
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
