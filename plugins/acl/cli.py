"""``sessiongate tokens list`` / ``tokens revoke ID``: the sign-in tokens on record.

Both work on the token store in ``state_dir`` (:mod:`.tokenstore`), with or without
a gateway running (like ``sessiongate keys``): a running gateway refuses a revoked
token at its next call, ends its live streams within a quarter of a second (its token
watcher) and announces the revocation (with the cluster plugin, every node applies
it). Tokens themselves are never stored, so never shown.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
from typing import Any

from sessiongate.core import PluginCommand

from .tokenstore import STORE_FILE, TokenStore

__all__ = ["TOKENS_COMMAND"]


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="tokens_command", required=True, metavar="ACTION")
    listing = actions.add_parser(
        "list", help="the tokens not yet expired, one JSON object a line (token_id, "
        "username, admin, tags, groups, issued_at, expires_at, revoked)")
    revoke = actions.add_parser("revoke", help="revoke one token by id (see list)")
    revoke.add_argument("token_id", help="the token's id (its jti claim)")
    for action in (listing, revoke):
        # core puts --config before the action; accept it after too, like `keys revoke`
        action.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS,
                            help="user settings file (TOML)")


async def _run(args: argparse.Namespace, settings: Any) -> int:
    state_dir = pathlib.Path(str(settings.state_dir))
    path = state_dir / STORE_FILE
    if not path.exists():
        print(f"sessiongate: no token store at {path.absolute()}: no LDAP login has "
              "happened with this state_dir (run it in the folder the gateway runs in, or "
              "pass --config with the gateway's settings)", file=sys.stderr)
        return 2
    async with TokenStore(path) as store:
        if args.tokens_command == "list":
            for row in await store.live():
                print(json.dumps(row))
        else:
            await store.revoke(args.token_id)
            print(f"revoked sign-in token {args.token_id}", file=sys.stderr)
    return 0


TOKENS_COMMAND = PluginCommand(
    name="tokens", help="list or revoke LDAP sign-in tokens",
    add_arguments=_add_arguments, run=_run)
