"""The ``sessiongate`` command line (CONTRACT §5).

Exit codes: 0 success, 1 a failed operation (its message on stderr), 2 invalid
settings or usage (one line naming the cause and the fix), 3 ``stream`` only: the
gateway shut down (``--follow-restarts`` waits for it instead). Output meant for scripts
(a new key, a token, events, a session's state) goes to stdout alone; everything for
people goes to stderr. Output into a pipe whose reader has gone (``| head``) ends the
command quietly, status 0.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import functools
import getpass
import inspect
import json
import os
import pathlib
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from sessiongate.core.config.settings import SettingsError

__all__ = ["add_client_options", "build_parser", "call_gateway", "main"]

KEY_ENV = "SESSIONGATE_CLIENT_KEY"
SERVER_ENV = "SESSIONGATE_CLIENT_SERVER"
CA_FILE_ENV = "SESSIONGATE_CLIENT_CA_FILE"
CERT_FILE_ENV = "SESSIONGATE_CLIENT_CERT_FILE"
KEY_FILE_ENV = "SESSIONGATE_CLIENT_KEY_FILE"
#: ``sessiongate stream``: the gateway shut down and ended the stream
EXIT_GATEWAY_SHUTDOWN = 3
UINT32_MAX = 2**32 - 1
UINT64_MAX = 2**64 - 1


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line naming the problem and where help is, exit status 2."""

    def error(self, message: str) -> Any:
        self.exit(2, f"{self.prog}: {message} (see '{self.prog} --help')\n")


def _whole_number(unit: str, zero: str, limit: int) -> Any:
    """An argparse type: a whole number from 0 to ``limit``; ``zero`` says what 0 means."""
    fix = f"give {unit}, 0 or more ({zero})"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number: {fix}") from None
        if value < 0:
            raise argparse.ArgumentTypeError(f"{value} is negative: {fix}")
        if value > limit:
            raise argparse.ArgumentTypeError(f"{value} is too large: {fix}, at most {limit}")
        return value

    return parse


def _scope(text: str) -> str:
    from sessiongate.core.identity import unknown_scope_message

    problem = unknown_scope_message(text)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return text


def _add_config(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", help="user settings file (TOML)")


def _add_client(p: argparse.ArgumentParser) -> None:
    _add_config(p)
    add_client_options(p)


def add_client_options(p: argparse.ArgumentParser) -> None:
    """The client commands' connection options (``--server``, ``--key``, ``--ca-file``,
    ``--cert-file``, ``--key-file``), for a plugin's command that calls the gateway
    (:func:`call_gateway`); core has given it ``--config`` already."""
    p.add_argument("--server", help=f"host:port (default: ${SERVER_ENV} or "
                   "server.grpc_address)")
    p.add_argument("--key", help=f"API key or token (default: ${KEY_ENV}, else the "
                   "bootstrap admin key in state_dir)")
    p.add_argument("--ca-file", metavar="PEM", help="connect over TLS, trusting the CA(s) "
                   f"in this file for the gateway's certificate (default: ${CA_FILE_ENV})")
    p.add_argument("--cert-file", metavar="PEM", help="this client's TLS certificate, for a "
                   f"gateway with mutual TLS; needs --key-file (default: ${CERT_FILE_ENV})")
    p.add_argument("--key-file", metavar="PEM", help="the private key of --cert-file (not an "
                   f"API key: that is --key) (default: ${KEY_FILE_ENV})")


def build_parser(plugin_commands: Mapping[str, tuple[str, Any]] | None = None,
                 ) -> argparse.ArgumentParser:
    """The whole command line; ``plugin_commands`` (name → (plugin, PluginCommand)) adds
    the commands plugins contribute (``sg_cli_commands``)."""
    parser = _Parser(prog="sessiongate", description="Session gateway.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_core_commands(sub)
    for name, (plugin, command) in (plugin_commands or {}).items():
        p = sub.add_parser(name, help=f"{command.help} (plugin {plugin})")
        _add_config(p)
        command.add_arguments(p)
        p.set_defaults(plugin_command=(plugin, command))
    return parser


def _add_core_commands(sub: Any) -> None:

    p = sub.add_parser("serve", help="run the gateway until SIGINT/SIGTERM")
    _add_config(p)
    p.add_argument("--log-format", choices=("text", "json"), help="overrides log.format")

    p = sub.add_parser("check-config", help="validate and print the effective settings")
    _add_config(p)

    p = sub.add_parser("plugins", help="list plugins and the hooks each implements")
    _add_config(p)

    keys = sub.add_parser("keys", help="manage API keys").add_subparsers(
        dest="keys_command", required=True, metavar="ACTION")
    init_help = ("create a new key store if state_dir has none (a gateway first started "
                 "on it then creates no bootstrap admin key)")
    p = keys.add_parser("create", help="create a key; prints the secret once")
    _add_config(p)
    p.add_argument("--name", required=True)
    p.add_argument("--scope", action="append", default=[], type=_scope,
                   help="sessions:admin (every session, every action)")
    p.add_argument("--tag", action="append", default=[], help="read-only session tag")
    p.add_argument("--init", action="store_true", help=init_help)
    p = keys.add_parser("list", help="list keys (never secrets)")
    _add_config(p)
    p.add_argument("--init", action="store_true", help=init_help)
    p = keys.add_parser("revoke", help="revoke a key by id")
    _add_config(p)
    p.add_argument("key_id")

    p = sub.add_parser("login", help="LDAP login; prints a token")
    _add_client(p)
    p.add_argument("--user", required=True)

    p = sub.add_parser("open", help="open a session; prints its id")
    _add_client(p)
    p.add_argument("--client-name", default="cli")
    p.add_argument("--backend", default="")
    p.add_argument("--tag", default="")
    p.add_argument("--lease-seconds", default=0, type=_whole_number(
        "seconds", "0: the gateway's sessions.default_lease_seconds", UINT32_MAX))

    p = sub.add_parser("invoke", help="send a command; prints the reply payload")
    _add_client(p)
    p.add_argument("session_id")
    p.add_argument("cmd", metavar="COMMAND")
    p.add_argument("payload", nargs="?", default="", help="JSON text")
    p.add_argument("--timeout-ms", default=0, type=_whole_number(
        "milliseconds", "0: the gateway's sessions.command_timeout_seconds", UINT32_MAX))

    p = sub.add_parser(
        "stream", help="print a session's events as JSON lines",
        description="Print a session's events as JSON lines on stdout until the session "
        "ends; resume by itself when the stream breaks.",
        epilog="Exits 0 when the session closes (or after --max-events), 1 when the stream "
        "fails, 2 on bad usage, and with exit status 3 when the gateway shuts down "
        "(unless --follow-restarts).")
    _add_client(p)
    p.add_argument("session_id")
    p.add_argument("--after", default=None, help="resume after this sequence", type=(
        _whole_number("a sequence number", "0: every event the gateway still holds",
                      UINT64_MAX)))
    p.add_argument("--subscriber-id", default="")
    p.add_argument("--max-events", default=0, help="stop after this many events", type=(
        _whole_number("a number of events", "0: no limit", UINT64_MAX)))
    p.add_argument("--no-reconnect", action="store_true",
                   help="do not resume by itself when the stream breaks")
    p.add_argument("--follow-restarts", action="store_true",
                   help="when the gateway shuts down, keep reconnecting until it is back "
                   "(with the reattach plugin a restart keeps the session) instead of "
                   "exiting with status 3")

    p = sub.add_parser("close", help="close a session")
    _add_client(p)
    p.add_argument("session_id")

    p = sub.add_parser(
        "status", help="a short summary of a running gateway (from its HTTP side port)",
        description="Sessions by state, subscribers, events per second over the last "
        "minute, overflows and faults, read from the gateway's /metrics page.")
    _add_config(p)
    p.add_argument("--server", help="the gateway's HTTP side port, host:port (default: "
                   "server.http_address)")
    p.add_argument("--ca-file", metavar="PEM", help="the side port serves TLS "
                   "(server.tls.*): trust the CA(s) in this file")
    p.add_argument("--cert-file", metavar="PEM", help="this client's certificate (mutual "
                   "TLS); needs --key-file")
    p.add_argument("--key-file", metavar="PEM", help="the private key of --cert-file")
    p.add_argument("--json", action="store_true", help="one JSON object instead of text")

    p = sub.add_parser("get", help="print a session as JSON")
    _add_client(p)
    p.add_argument("session_id")


def core_command_names() -> set[str]:
    """The commands core itself defines."""
    sub = _Parser(prog="sessiongate").add_subparsers()
    _add_core_commands(sub)
    return set(sub.choices)


def _wanted_command(argv: Sequence[str]) -> str | None:
    """The command word of ``argv`` (its first word that is not an option)."""
    return next((word for word in argv if not word.startswith("-")), None)


def plugin_commands(argv: Sequence[str]) -> dict[str, tuple[str, Any]]:
    """Commands the installed plugins add, name → (plugin, PluginCommand).

    Plugins are loaded only when ``argv`` does not name a core command (their import
    would slow every ``sessiongate invoke``). A plugin that fails to load, or a name
    already taken, is reported on stderr and left out.
    """
    core = core_command_names()
    if _wanted_command(argv) in core:
        return {}
    from sessiongate.core.pluginhost.host import Hooks, make_plugin_manager

    try:
        contributed = Hooks(make_plugin_manager(None)).collect_by_plugin("sg_cli_commands")
    except Exception as exc:  # a broken third-party plugin must not break the CLI
        _err(f"plugin commands are unavailable: a plugin failed to load ({exc})")
        return {}
    commands: dict[str, tuple[str, Any]] = {}
    for plugin, offered in contributed:
        for command in offered:
            taken = "core" if command.name in core else commands.get(command.name, ("",))[0]
            if taken:
                _err(f"plugin {plugin}: command {command.name!r} is already defined by "
                     f"{taken}; left out")
                continue
            commands[command.name] = (plugin, command)
    return commands


def _err(message: str) -> None:
    print(f"sessiongate: {message}", file=sys.stderr)


def _load(args: argparse.Namespace) -> tuple[Any, Any]:
    from sessiongate.core.pluginhost.host import load

    return load(args.config)


def main(argv: Sequence[str] | None = None) -> int:
    # gRPC's C core logs "Handshake failed" and the like at INFO on stderr, unformatted
    # (breaking log.format = "json", doubling the CLI's one-line errors); read once, when
    # grpc is first imported, so set here, before any command imports it.
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(plugin_commands(argv)).parse_args(argv)
    try:
        status = _run(args)
        sys.stdout.flush()  # here, not at exit: a closed pipe is then caught below
        return status
    except SettingsError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # our reader has gone (`| head`): nothing more to say
        _silence_closed_pipes()
        return 0


def _run(args: argparse.Namespace) -> int:
    if getattr(args, "plugin_command", None):
        return _plugin_command(args)
    if args.command == "serve":
        return _serve(args)
    if args.command == "check-config":
        return _check_config(args)
    if args.command == "plugins":
        return _plugins(args)
    if args.command == "keys":
        return asyncio.run(_keys(args))
    if args.command == "status":
        return asyncio.run(_status(args))
    return asyncio.run(_client(args))


def _silence_closed_pipes() -> None:
    """Point a closed stdout/stderr at /dev/null, so the exit's flush does not complain."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, stream.fileno())
            os.close(devnull)


def _plugin_command(args: argparse.Namespace) -> int:
    """Run a command a plugin added, with the validated settings, if the plugin is on."""
    from sessiongate.core.errors import GatewayError

    plugin, command = args.plugin_command
    settings, pm = _load(args)
    if pm.get_plugin(plugin) is None:
        _err(f"'{command.name}' belongs to the {plugin} plugin, which these settings switch "
             f"off: set plugins.{plugin}.enabled = true (or pass --config with the "
             f"gateway's settings)")
        return 2
    try:
        status = command.run(args, settings)
        if inspect.isawaitable(status):
            status = asyncio.run(_awaited(status))
    except GatewayError as exc:
        _err(exc.message)
        return 2 if exc.code == "INVALID_ARGUMENT" else 1
    except (OSError, ValueError) as exc:
        _err(f"{command.name}: {exc}")
        return 1
    return int(status or 0)


async def _awaited(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


# -- server-side commands ------------------------------------------------------------------


def _serve(args: argparse.Namespace) -> int:
    from sessiongate.core.config import logs
    from sessiongate.core.errors import StartupError
    from sessiongate.core.gateway import Gateway
    from sessiongate.core.rpc.server import serve

    settings, pm = _load(args)
    logs.configure(str(settings.log.level), args.log_format or str(settings.log.format),
                   {str(name): str(level) for name, level in settings.log.levels.items()})
    gateway = Gateway(settings, pm)

    def ready(address: str) -> None:
        if gateway.bootstrap_key:
            print(gateway.bootstrap_key, flush=True)  # shown once, alone on stdout

    try:
        asyncio.run(serve(gateway, ready=ready))
    except StartupError as exc:  # another gateway on the state dir or the address
        _err(exc.message)
        return 2
    except OSError as exc:
        _err(str(exc))
        return 1
    return 0


def _secret_keys(settings: Any, pm: Any) -> tuple[set[str], set[str]]:
    """Keys to redact (rules flagged ``secret`` and what ``sg_secret_settings`` names),
    and the key of every rule."""
    from sessiongate.core.config.settings import core_settings
    from sessiongate.core.pluginhost.host import Hooks

    hooks = Hooks(pm)
    rules = list(core_settings())
    for contributed in hooks.collect("sg_add_validators", settings=settings):
        rules.extend(contributed)
    keys = {rule.key for rule in rules if rule.secret}
    for names in hooks.collect("sg_secret_settings"):
        keys.update(names)
    return keys, {rule.key for rule in rules}


def _check_config(args: argparse.Namespace) -> int:
    from sessiongate.core.config.settings import redacted

    settings, pm = _load(args)
    secret, known = _secret_keys(settings, pm)
    for key, value in redacted(settings, secret, known).items():
        print(f"{key} = {json.dumps(value, default=str)}")
    print("settings are valid", file=sys.stderr)
    return 0


def _plugins(args: argparse.Namespace) -> int:
    from sessiongate.core.pluginhost.host import plugin_listing

    _settings, pm = _load(args)
    for row in plugin_listing(pm):
        state = "enabled " if row["enabled"] else "disabled"
        origin = "builtin" if row["builtin"] else "external"
        print(f"{row['name']:<12} {state} {origin:<8} {row['module']}")
        for hook in row["hooks"]:
            print(f"    {hook}")
    return 0


async def _keys(args: argparse.Namespace) -> int:
    from sessiongate.core.errors import GatewayError
    from sessiongate.core.identity import KeyStore

    settings, _pm = _load(args)
    state_dir = pathlib.Path(str(settings.state_dir))
    path = state_dir / "keys.sqlite3"
    if not path.exists():
        if not getattr(args, "init", False):
            where = f"state_dir {str(settings.state_dir)!r}" + (
                "" if state_dir.is_absolute() else f" in {os.getcwd()}")
            fix = ("run it in the folder the gateway runs in, or pass --config with the "
                   "gateway's settings")
            if args.keys_command != "revoke":
                fix += ", or add --init to create a new key store there"
            _err(f"no key store at {path.absolute()} ({where}): {fix}")
            return 2
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        print(f"created a new key store at {path.absolute()}", file=sys.stderr)
    async with KeyStore(path) as store:
        try:
            if args.keys_command == "create":
                key_id, key = await store.create(args.name, scopes=args.scope, tags=args.tag)
                print(f"created key {key_id}; the secret is shown once", file=sys.stderr)
                print(key)
            elif args.keys_command == "list":
                for row in await store.list():
                    print(json.dumps(row))
            elif args.keys_command == "revoke":
                await store.revoke(args.key_id)
                print(f"revoked {args.key_id}", file=sys.stderr)
        except GatewayError as exc:
            _err(exc.message)
            return 2 if exc.code == "INVALID_ARGUMENT" else 1
    return 0


# -- status ----------------------------------------------------------------------------------


async def _status(args: argparse.Namespace) -> int:
    """``sessiongate status``: what /metrics says, summed up for a person."""
    import ssl

    import aiohttp

    from sessiongate.core.config.settings import load_settings

    settings = load_settings(args.config)
    address = args.server or str(settings.server.http_address)
    if not address:
        _err("the gateway's HTTP side port is off (server.http_address is empty): switch it "
             "on, or pass --server HOST:PORT")
        return 2
    context: ssl.SSLContext | None = None
    if args.ca_file or str(settings.server.tls.cert_file):
        context = ssl.create_default_context(cafile=args.ca_file or None)
        if args.cert_file:
            context.load_cert_chain(args.cert_file, args.key_file)
    url = f"{'https' if context else 'http'}://{address}/metrics"
    try:
        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(timeout=timeout, trust_env=False) as session, \
                session.get(url, ssl=context if context else False,
                            allow_redirects=False) as response:
            text = await response.text()
            if response.status != 200:
                _err(f"{url} answered {response.status}: {text.strip()[:200]}")
                return 1
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        _err(f"cannot read {url}: {exc or type(exc).__name__} (is the gateway running, "
             "and is that its server.http_address?)")
        return 1
    summary = status_summary(text)
    if args.json:
        print(json.dumps(summary, sort_keys=True))
    else:
        print(status_text(summary))
    return 0


def status_summary(metrics_text: str) -> dict[str, Any]:
    """The figures ``status`` shows, from a /metrics page."""
    from prometheus_client.parser import text_string_to_metric_families

    values: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            values.setdefault(sample.name, []).append((sample.labels, sample.value))

    def total(name: str) -> float:
        return sum(value for _labels, value in values.get(name, ()))

    states = {labels["state"]: int(value) for labels, value in
              values.get("sessiongate_sessions", ()) if value}
    return {
        "sessions": states,
        "subscribers": int(total("sessiongate_subscribers")),
        "events_per_second": round(total("sessiongate_events_delivered_per_second"), 1),
        "events_delivered": int(total("sessiongate_events_delivered_total")),
        "overflows": int(total("sessiongate_queue_overflows_total")),
        "faults": int(total("sessiongate_session_faults_total")),
    }


def status_text(summary: dict[str, Any]) -> str:
    states = summary["sessions"]
    shown = ", ".join(f"{count} {state.lower()}" for state, count in sorted(states.items()))
    return "\n".join([
        f"sessions:     {sum(states.values())}" + (f" ({shown})" if shown else ""),
        f"subscribers:  {summary['subscribers']}",
        f"events/s:     {summary['events_per_second']:g} (last minute; "
        f"{summary['events_delivered']} delivered in all)",
        f"overflows:    {summary['overflows']}",
        f"faults:       {summary['faults']}",
    ])


# -- client commands -----------------------------------------------------------------------


def _client_target(args: argparse.Namespace) -> tuple[str, str, str]:
    """The server, the key, and what to tell a user whose key the gateway refuses."""
    from sessiongate.core.config.settings import load_settings
    from sessiongate.core.gateway import BOOTSTRAP_KEY_FILE

    settings = load_settings(args.config)
    server = args.server or os.environ.get(SERVER_ENV) or str(settings.server.grpc_address)
    bootstrap = (pathlib.Path(str(settings.state_dir)) / BOOTSTRAP_KEY_FILE).absolute()
    another = f"pass another with --key KEY or {KEY_ENV}"
    if args.key:
        return server, args.key, f"the key from --key was refused; {another}"
    if os.environ.get(KEY_ENV):
        return server, os.environ[KEY_ENV], f"the key from {KEY_ENV} was refused; {another}"
    if bootstrap.is_file():
        return server, bootstrap.read_text().strip(), (
            f"the key read from {bootstrap} was refused (another gateway's?); {another}")
    relative = pathlib.PurePath(str(settings.state_dir), BOOTSTRAP_KEY_FILE)
    return server, "", (
        f"no API key: none given with --key or {KEY_ENV}, and no {bootstrap}; pass "
        f"--key KEY, set {KEY_ENV}=KEY, or run in the folder the gateway was started in "
        f"(its {relative} is read by default)")


def _client_tls_files(args: argparse.Namespace) -> list[tuple[str | None, str]]:
    """``--ca-file``, ``--cert-file``, ``--key-file`` (else their environment variables):
    (path or None, the option or variable that gave it) each."""
    found: list[tuple[str | None, str]] = []
    for option, env in (("ca_file", CA_FILE_ENV), ("cert_file", CERT_FILE_ENV),
                        ("key_file", KEY_FILE_ENV)):
        flag = "--" + option.replace("_", "-")
        if getattr(args, option, None):
            found.append((getattr(args, option), flag))
        elif os.environ.get(env):
            found.append((os.environ[env], env))
        else:
            found.append((None, flag))
    return found


def _client_credentials(args: argparse.Namespace) -> Any:
    """The TLS credentials the options ask for, None for plaintext.

    :raises ValueError: a file is missing, unreadable or not PEM, or a certificate came
        without its key (a usage error: exit 2).
    """
    from sessiongate import client as api

    (ca, ca_name), (cert, cert_name), (key, key_name) = _client_tls_files(args)
    return api.tls_credentials(ca, cert, key, names=(ca_name, cert_name, key_name))


def _connection_hint(details: str, server: str, args: argparse.Namespace) -> str | None:
    """What a failed connection most likely means, when it failed at TLS (None: not
    recognisably a TLS problem)."""
    (ca, ca_name), (cert, _cert_name), _key = _client_tls_files(args)
    if not (ca or cert):
        if "Socket closed" in details or "Connection reset" in details:
            return (f"the gateway at {server} closed the connection: it may serve TLS only; "
                    "pass --ca-file with the CA that signed its certificate")
        return None
    if "WRONG_VERSION_NUMBER" in details:
        return (f"TLS handshake with {server} failed: the gateway does not serve TLS (its "
                "server.tls.cert_file is empty); connect without --ca-file, --cert-file and "
                "--key-file")
    if "CERTIFICATE_VERIFY_FAILED" in details:
        if "expired" in details:
            return f"TLS handshake with {server} failed: the gateway's certificate has expired"
        trusted = f"a CA in {ca_name} (the wrong CA file?)" if ca else (
            "a CA this system trusts; pass --ca-file with the CA that signed it")
        return (f"TLS handshake with {server} failed: the gateway's certificate is not "
                f"signed by {trusted}")
    if "not in peer certificate" in details or "Peer name" in details:
        return (f"TLS handshake with {server} failed: the gateway's certificate does not "
                "name this host; use --server with a name or address its certificate has")
    if "Socket closed" in details or "Connection reset" in details:
        if not cert:
            return (f"the gateway at {server} closed the connection during the TLS "
                    "handshake: it may want a client certificate (mutual TLS); pass "
                    "--cert-file and --key-file")
        return (f"the gateway at {server} closed the connection during the TLS handshake: "
                "it may not accept this client certificate (not signed by a CA in its "
                "server.tls.client_ca_file?)")
    return None


#: the first byte of a JSON text (after optional whitespace): anything else is binary
_JSON_START = frozenset(b'{["-0123456789tfn \t\r\n')


def event_json(event: Any) -> str:
    """One event as a JSON line: the payload decoded when it is JSON, else base64."""
    row: dict[str, Any] = {"sequence": event.sequence, "kind": event.kind,
                           "time": _timestamp_json(event.time.seconds, event.time.nanos)}
    payload = event.payload
    try:
        if not payload:
            row["payload"] = None
        elif payload[0] not in _JSON_START:
            raise ValueError("not JSON")  # skips the parser for plainly binary payloads
        else:
            row["payload"] = json.loads(payload)
    except ValueError:
        row["payload_b64"] = base64.b64encode(payload).decode()
    return json.dumps(row)


@functools.lru_cache(maxsize=4)
def _utc_second(seconds: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))


def _timestamp_json(seconds: int, nanos: int) -> str:
    """As protobuf's ``Timestamp.ToJsonString``, at a fraction of its cost (per event)."""
    if not 0 <= seconds < 253402300800:
        from google.protobuf.timestamp_pb2 import Timestamp

        return Timestamp(seconds=seconds, nanos=nanos).ToJsonString()
    if not nanos:
        return _utc_second(seconds) + "Z"
    if nanos % 1_000_000 == 0:
        return f"{_utc_second(seconds)}.{nanos // 1_000_000:03d}Z"
    if nanos % 1000 == 0:
        return f"{_utc_second(seconds)}.{nanos // 1000:06d}Z"
    return f"{_utc_second(seconds)}.{nanos:09d}Z"


async def _client(args: argparse.Namespace) -> int:
    import grpc

    from sessiongate import client as api
    from sessiongate.v1 import gateway_pb2

    server, key, refused = _client_target(args)
    try:
        credentials = _client_credentials(args)
    except ValueError as exc:  # a TLS file missing, unreadable or not PEM
        _err(str(exc))
        return 2
    async with api.connect(server, key, credentials=credentials) as gw:
        try:
            if args.command == "open":
                info = await gw.open(client_name=args.client_name, backend=args.backend,
                                     tag=args.tag, lease_seconds=args.lease_seconds)
                print(info.session_id)
            elif args.command == "invoke":
                payload = await gw.invoke(args.session_id, args.cmd, args.payload.encode(),
                                          timeout_ms=args.timeout_ms)
                sys.stdout.write(payload.decode(errors="replace") + "\n")
            elif args.command == "close":
                info = await gw.close(args.session_id)
                print(gateway_pb2.SessionState.Name(info.state))
            elif args.command == "get":
                print(api.info_json(await gw.get(args.session_id)))
            elif args.command == "login":
                password = (getpass.getpass("LDAP password: ") if sys.stdin.isatty()
                            else sys.stdin.readline().rstrip("\n"))
                response = await gw.login(args.user, password)
                if response.token_id:
                    print(f"token {response.token_id} (revoke it alone with 'sessiongate "
                          f"tokens revoke {response.token_id}')", file=sys.stderr)
                print(response.token)
            elif args.command == "stream":
                return await _stream(gw, args)
        except grpc.aio.AioRpcError as exc:
            _err(_rpc_failure(exc, args, server, key, refused))
            return 1
    return 0


def _rpc_failure(exc: Any, args: argparse.Namespace, server: str, key: str,
                 refused: str) -> str:
    """The line a client command prints for a failed call (its code and details, and what
    to do about a refused key or a connection that failed at TLS)."""
    import grpc

    message = f"{exc.code().name}: {exc.details()}"
    if exc.code() == grpc.StatusCode.UNAUTHENTICATED and args.command != "login":
        # where the key came from, or where we looked for one, and how to pass one
        return f"UNAUTHENTICATED: {refused}" if not key else f"{message} ({refused})"
    if exc.code() == grpc.StatusCode.UNAVAILABLE:
        hint = _connection_hint(exc.details() or "", server, args)
        return f"{hint} ({message})" if hint else message
    return message


async def call_gateway(args: argparse.Namespace,
                       call: Callable[[Any, tuple[tuple[str, str], ...]], Awaitable[int]],
                       ) -> int:
    """For a plugin's command (with :func:`add_client_options`): connect to the gateway
    as the client commands do (``--server``, ``--key`` and the TLS options, else their
    environment variables, else the settings' address and the bootstrap admin key), and
    return ``await call(channel, metadata)``: ``channel`` a ``grpc.aio.Channel`` for the
    plugin's stubs, ``metadata`` the ``authorization`` pair to send with each call. A
    call that fails (``grpc.aio.AioRpcError``) is reported on stderr as the client
    commands report theirs, exit status 1; an unusable TLS file, exit status 2."""
    import grpc

    from sessiongate import client as api

    server, key, refused = _client_target(args)
    try:
        credentials = _client_credentials(args)
    except ValueError as exc:  # a TLS file missing, unreadable or not PEM
        _err(str(exc))
        return 2
    async with api.connect(server, key, credentials=credentials) as gw:
        try:
            return int(await call(gw.channel, gw.metadata) or 0)
        except grpc.aio.AioRpcError as exc:
            _err(_rpc_failure(exc, args, server, key, refused))
            return 1


async def _stream(gw: Any, args: argparse.Namespace) -> int:
    """Events as JSON lines on stdout, one write and flush per response."""
    from sessiongate import client as api

    printed = 0
    last = args.after  # the newest sequence on stdout (or where we started)
    out = sys.stdout
    status = _ReconnectStatus(sys.stderr)
    loop = asyncio.get_running_loop()
    reader_gone = asyncio.Event()
    watching = _watch_reader(out, reader_gone)
    try:
        async for batch in gw.follow_batches(args.session_id, after_sequence=args.after,
                                             subscriber_id=args.subscriber_id,
                                             reconnect=not args.no_reconnect,
                                             follow_restarts=args.follow_restarts):
            if len(batch) == 1 and isinstance(batch[0], api.Reconnecting):
                status.reconnecting(batch[0])
                continue
            status.resumed()
            lines = []
            for item in batch:
                if isinstance(item, api.GapNotice):
                    _flush_lines(out, lines)
                    print(f"gap: events {item.requested_after + 1}.."
                          f"{item.oldest_available - 1} are lost ({item.reason}); re-read "
                          "the state you depend on", file=sys.stderr, flush=True)
                else:
                    lines.append(event_json(item))
                    last = item.sequence
                    printed += 1
                    if args.max_events and printed >= args.max_events:
                        _flush_lines(out, lines)
                        return 0
            _flush_lines(out, lines)
    except api.GatewayShutdown as exc:
        status.end()
        after = last if last is not None else exc.after_sequence
        resume = f"sessiongate stream {args.session_id}" + (
            f" --after {after}" if after is not None else "")
        _err(f"the gateway shut down, ending the stream"
             f"{f' after sequence {after}' if after is not None else ''}; when it is back "
             f"(a restart keeps the session with the reattach plugin) go on with "
             f"'{resume}', or wait for it with --follow-restarts")
        return EXIT_GATEWAY_SHUTDOWN
    except asyncio.CancelledError:
        if reader_gone.is_set():
            raise BrokenPipeError("stdout: the reader has gone") from None
        raise
    finally:
        status.end()
        if watching:
            loop.remove_reader(out.fileno())
    return 0


def _watch_reader(out: Any, gone: asyncio.Event) -> bool:
    """When stdout is a pipe, cancel this task as soon as its reader goes (``| head``
    has read enough), even while no event comes to write. A pipe's write end reports an
    error to poll then, which asyncio hands to a reader callback. False if not a pipe."""
    import stat

    try:
        fd = out.fileno()
        if not stat.S_ISFIFO(os.fstat(fd).st_mode):
            return False
    except (OSError, ValueError, AttributeError):
        return False
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()

    def closed() -> None:
        loop.remove_reader(fd)
        gone.set()
        if task is not None:
            task.cancel()

    loop.add_reader(fd, closed)
    return True


class _ReconnectStatus:
    """Reconnect progress on stderr: on a terminal one line, rewritten in place at each
    try; elsewhere one line when the stream breaks and one when it is back."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.tries = 0
        self.since = 0.0
        self.cause = ""
        self.pending = False  # a status line without its newline is on the terminal

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()

    def _show(self, text: str) -> None:
        try:
            width = os.get_terminal_size(self.stream.fileno()).columns
        except (OSError, ValueError):
            width = 0  # unknown
        if width > 1:
            text = text[:width - 1]  # a wrapped line could not be rewritten in place
        self._write("\r\x1b[K" + text)
        self.pending = True

    def reconnecting(self, item: Any) -> None:
        import grpc

        from sessiongate.client import is_gateway_shutdown

        self.tries += 1
        if self.tries == 1:
            self.since = time.monotonic()
            code, _, details = item.error.partition(": ")
            self.cause = ("the gateway shut down" if is_gateway_shutdown(
                getattr(grpc.StatusCode, code, None), details)
                else f"stream broken ({item.error})")
        if self.tty:
            self._show(f"sessiongate: {self.cause}; reconnecting (try {self.tries}, "
                       f"{time.monotonic() - self.since:.0f} s), will resume after "
                       f"{item.after_sequence}")
        elif self.tries == 1:
            self._write(f"sessiongate: {self.cause}; reconnecting, will resume after "
                        f"{item.after_sequence}\n")

    def resumed(self) -> None:
        if not self.tries:
            return
        text = (f"sessiongate: reconnected after {self.tries} "
                f"{'try' if self.tries == 1 else 'tries'} "
                f"({time.monotonic() - self.since:.1f} s)")
        self.tries = 0
        if self.tty:
            self._show(text)
            self.end()
        else:
            self._write(text + "\n")

    def end(self) -> None:
        """End a status line left on the terminal (before other output, or at exit)."""
        if self.pending:
            self.pending = False
            self._write("\n")


def _flush_lines(out: Any, lines: list[str]) -> None:
    if lines:
        out.write("\n".join(lines) + "\n")
        out.flush()
        lines.clear()
