"""The ``sessiongate`` command line (CONTRACT §5).

Exit codes: 0 success, 1 a failed operation (its message on stderr), 2 invalid
settings or usage. Output meant for scripts (a new key, a token, events) goes to
stdout alone; everything for people goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import functools
import getpass
import json
import os
import pathlib
import sys
import time
from collections.abc import Sequence
from typing import Any

from sessiongate.core.settings import SettingsError

__all__ = ["build_parser", "main"]

KEY_ENV = "SESSIONGATE_CLIENT_KEY"
SERVER_ENV = "SESSIONGATE_CLIENT_SERVER"


def _add_config(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", help="user settings file (TOML)")


def _add_client(p: argparse.ArgumentParser) -> None:
    _add_config(p)
    p.add_argument("--server", help=f"host:port (default: ${SERVER_ENV} or "
                   "server.grpc_address)")
    p.add_argument("--key", help=f"API key or token (default: ${KEY_ENV}, else the "
                   "bootstrap admin key in state_dir)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sessiongate", description="Session gateway.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("serve", help="run the gateway until SIGINT/SIGTERM")
    _add_config(p)
    p.add_argument("--log-format", choices=("text", "json"), help="overrides log.format")

    p = sub.add_parser("check-config", help="validate and print the effective settings")
    _add_config(p)

    p = sub.add_parser("plugins", help="list plugins and the hooks each implements")
    _add_config(p)

    keys = sub.add_parser("keys", help="manage API keys").add_subparsers(
        dest="keys_command", required=True, metavar="ACTION")
    p = keys.add_parser("create", help="create a key; prints the secret once")
    _add_config(p)
    p.add_argument("--name", required=True)
    p.add_argument("--scope", action="append", default=[], help="e.g. sessions:admin")
    p.add_argument("--tag", action="append", default=[], help="read-only session tag")
    p = keys.add_parser("list", help="list keys (never secrets)")
    _add_config(p)
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
    p.add_argument("--lease-seconds", type=int, default=0)

    p = sub.add_parser("invoke", help="send a command; prints the reply payload")
    _add_client(p)
    p.add_argument("session_id")
    p.add_argument("cmd", metavar="COMMAND")
    p.add_argument("payload", nargs="?", default="", help="JSON text")
    p.add_argument("--timeout-ms", type=int, default=0)

    p = sub.add_parser("stream", help="print a session's events as JSON lines")
    _add_client(p)
    p.add_argument("session_id")
    p.add_argument("--after", type=int, default=None, help="resume after this sequence")
    p.add_argument("--subscriber-id", default="")
    p.add_argument("--max-events", type=int, default=0, help="stop after this many events")
    p.add_argument("--no-reconnect", action="store_true",
                   help="do not resume by itself when the stream breaks")

    p = sub.add_parser("close", help="close a session")
    _add_client(p)
    p.add_argument("session_id")

    p = sub.add_parser("get", help="print a session as JSON")
    _add_client(p)
    p.add_argument("session_id")
    return parser


def _err(message: str) -> None:
    print(f"sessiongate: {message}", file=sys.stderr)


def _load(args: argparse.Namespace) -> tuple[Any, Any]:
    from sessiongate.core.plugins import load

    return load(args.config)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "serve":
            return _serve(args)
        if args.command == "check-config":
            return _check_config(args)
        if args.command == "plugins":
            return _plugins(args)
        if args.command == "keys":
            return asyncio.run(_keys(args))
        return asyncio.run(_client(args))
    except SettingsError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


# -- server-side commands ------------------------------------------------------------------


def _serve(args: argparse.Namespace) -> int:
    from sessiongate.core import logs
    from sessiongate.core.gateway import Gateway
    from sessiongate.core.server import serve

    settings, pm = _load(args)
    logs.configure(str(settings.log.level), args.log_format or str(settings.log.format))
    gateway = Gateway(settings, pm)

    def ready(address: str) -> None:
        if gateway.bootstrap_key:
            print(gateway.bootstrap_key, flush=True)  # shown once, alone on stdout

    try:
        asyncio.run(serve(gateway, ready=ready))
    except OSError as exc:
        _err(str(exc))
        return 1
    return 0


def _secret_keys(settings: Any, pm: Any) -> set[str]:
    """Keys to redact: rules flagged ``secret`` and what ``sg_secret_settings`` names."""
    from sessiongate.core.plugins import Hooks
    from sessiongate.core.settings import core_settings

    hooks = Hooks(pm)
    rules = list(core_settings())
    for contributed in hooks.collect("sg_add_validators", settings=settings):
        rules.extend(contributed)
    keys = {rule.key for rule in rules if rule.secret}
    for names in hooks.collect("sg_secret_settings"):
        keys.update(names)
    return keys


def _check_config(args: argparse.Namespace) -> int:
    from sessiongate.core.settings import redacted

    settings, pm = _load(args)
    for key, value in redacted(settings, _secret_keys(settings, pm)).items():
        print(f"{key} = {json.dumps(value, default=str)}")
    print("settings are valid", file=sys.stderr)
    return 0


def _plugins(args: argparse.Namespace) -> int:
    from sessiongate.core.plugins import plugin_listing

    _settings, pm = _load(args)
    for row in plugin_listing(pm):
        state = "enabled " if row["enabled"] else "disabled"
        origin = "builtin" if row["builtin"] else "external"
        print(f"{row['name']:<12} {state} {origin:<8} {row['module']}")
        for hook in row["hooks"]:
            print(f"    {hook}")
    return 0


async def _keys(args: argparse.Namespace) -> int:
    from sessiongate.core.auth import KeyStore
    from sessiongate.core.errors import GatewayError

    settings, _pm = _load(args)
    state_dir = pathlib.Path(str(settings.state_dir))
    state_dir.mkdir(parents=True, exist_ok=True)
    async with KeyStore(state_dir / "keys.sqlite3") as store:
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
            return 1
    return 0


# -- client commands -----------------------------------------------------------------------


def _client_target(args: argparse.Namespace) -> tuple[str, str]:
    from sessiongate.core.gateway import BOOTSTRAP_KEY_FILE
    from sessiongate.core.settings import load_settings

    settings = load_settings(args.config)
    server = args.server or os.environ.get(SERVER_ENV) or str(settings.server.grpc_address)
    key = args.key or os.environ.get(KEY_ENV, "")
    if not key:
        bootstrap = pathlib.Path(str(settings.state_dir)) / BOOTSTRAP_KEY_FILE
        if bootstrap.is_file():
            key = bootstrap.read_text().strip()
    return server, key


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

    from sessiongate.core import client as api
    from sessiongate.v1 import gateway_pb2

    server, key = _client_target(args)
    async with api.connect(server, key) as gw:
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
                print(gateway_pb2.SessionState.Name(info.state), file=sys.stderr)
            elif args.command == "get":
                print(api.info_json(await gw.get(args.session_id)))
            elif args.command == "login":
                password = (getpass.getpass("LDAP password: ") if sys.stdin.isatty()
                            else sys.stdin.readline().rstrip("\n"))
                response = await gw.login(args.user, password)
                print(response.token)
            elif args.command == "stream":
                return await _stream(gw, args)
        except grpc.aio.AioRpcError as exc:
            _err(f"{exc.code().name}: {exc.details()}")
            return 1
    return 0


async def _stream(gw: Any, args: argparse.Namespace) -> int:
    """Events as JSON lines on stdout, one write and flush per response."""
    from sessiongate.core import client as api

    printed = 0
    out = sys.stdout
    async for batch in gw.follow_batches(args.session_id, after_sequence=args.after,
                                         subscriber_id=args.subscriber_id,
                                         reconnect=not args.no_reconnect):
        lines = []
        for item in batch:
            if isinstance(item, api.GapNotice):
                _flush_lines(out, lines)
                print(f"gap: events {item.requested_after + 1}..{item.oldest_available - 1} "
                      f"are lost ({item.reason}); re-read the state you depend on",
                      file=sys.stderr, flush=True)
            elif isinstance(item, api.Reconnecting):
                print(f"stream broken ({item.error}); reconnecting in {item.delay:.1f} s, "
                      f"resuming after {item.after_sequence}", file=sys.stderr, flush=True)
            else:
                lines.append(event_json(item))
                printed += 1
                if args.max_events and printed >= args.max_events:
                    _flush_lines(out, lines)
                    return 0
        _flush_lines(out, lines)
    return 0


def _flush_lines(out: Any, lines: list[str]) -> None:
    if lines:
        out.write("\n".join(lines) + "\n")
        out.flush()
        lines.clear()
