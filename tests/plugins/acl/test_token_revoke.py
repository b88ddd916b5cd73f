"""One sign-in token revoked before it expires: `sessiongate tokens list` / `revoke`,
refused at its next call, its live streams ended; only recorded tokens are accepted."""

from __future__ import annotations

import asyncio
import json
import sys

import grpc
import pytest

from sessiongate.plugins.acl import runtime_of
from sessiongate.plugins.acl.tokenstore import STORE_FILE

from .helpers import attached, rpc_error, stream_end

pytestmark = [pytest.mark.asyncio, pytest.mark.requires_plugin("acl")]

UNAUTH = grpc.StatusCode.UNAUTHENTICATED
FAST = {"plugins.acl.revocation_check_interval_seconds": 0.1}


async def _tokens(gw, *args: str) -> tuple[int, str, str]:
    """``sessiongate tokens ARGS`` in another process: exit status, stdout, stderr."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sessiongate", "tokens", *args, "--config", str(gw.config),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.mark.requires_plugin("fanout")  # two streams of one session
async def test_revoking_one_token_ends_its_stream_and_refuses_its_next_call(make_gateway,
                                                                            slapd):
    gw = await make_gateway(**slapd.settings(), **FAST)
    anon = gw.client("")
    doomed = (await anon.login("alice", "alice-pw")).token
    kept = (await anon.login("alice", "alice-pw")).token  # the same user, another token
    status, out, err = await _tokens(gw, "list")
    assert status == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert [(r["username"], r["admin"], r["tags"], r["revoked"]) for r in rows] == \
        [("alice", True, ["line-1"], False)] * 2
    assert doomed not in out + err and kept not in out + err  # ids only, never tokens
    doomed_id, kept_id = (runtime_of(gw.gateway.api).tokens.verify(t).token_id
                          for t in (doomed, kept))
    assert {r["token_id"] for r in rows} == {doomed_id, kept_id}

    sid = (await gw.client(doomed).open()).session_id
    call, other = gw.client(doomed).stream(sid), gw.client(kept).stream(sid)
    await attached(call)
    await attached(other)
    status, _out, err = await _tokens(gw, "revoke", doomed_id)
    assert status == 0 and f"revoked sign-in token {doomed_id}" in err
    assert await stream_end(call) == UNAUTH
    assert await call.details() == \
        f"the sign-in token {doomed_id} has been revoked; log in again"
    error = await rpc_error(gw.client(doomed).get(sid))
    assert error.code() == UNAUTH and "has been revoked" in error.details()
    # the other token of the same user, and its stream, carry on
    await gw.client(kept).invoke_json(sid, "write", {"tag": "a", "value": 1})
    assert len((await asyncio.wait_for(other.read(), 15)).events) == 1
    other.cancel()
    assert gw.gateway.metrics.get("acl_streams_ended", reason="token revoked") == 1
    status, out, _err = await _tokens(gw, "list")
    assert {json.loads(line)["token_id"]: json.loads(line)["revoked"]
            for line in out.splitlines()} == {doomed_id: True, kept_id: False}


async def test_revoke_names_an_unknown_id_and_list_needs_a_store(make_gateway, slapd):
    gw = await make_gateway()  # LDAP off: no login ever happened on this state_dir
    status, out, err = await _tokens(gw, "list")
    assert status == 2 and out == "" and "no token store at" in err
    await gw.stop()
    gw = await make_gateway(**slapd.settings())  # the same state_dir, LDAP on
    await gw.client("").login("victor", "victor-pw")
    status, _out, err = await _tokens(gw, "revoke", "0123456789abcdef")
    assert status == 1
    assert err.strip() == ("sessiongate: no live sign-in token with id '0123456789abcdef' "
                           "(`sessiongate tokens list` shows them)")


async def test_a_token_not_on_record_is_refused(make_gateway, slapd):
    """Validly signed but never recorded (or its record lost): not accepted."""
    gw = await make_gateway(**slapd.settings())
    runtime = runtime_of(gw.gateway.api)
    minted = runtime.tokens.mint("alice", admin=True, tags=())
    error = await rpc_error(gw.client(minted.token).list())
    assert error.code() == UNAUTH
    assert error.details() == \
        f"the sign-in token {minted.token_id} is unknown to this gateway; log in again"


async def test_the_token_store_never_holds_a_token(make_gateway, slapd):
    gw = await make_gateway(**slapd.settings())
    token = (await gw.client("").login("alice", "alice-pw")).token
    files = sorted(gw.gateway.state_dir.glob(f"{STORE_FILE}*"))
    assert files and all(f.stat().st_mode & 0o777 == 0o600 for f in files)
    for part in (token, *token.split(".")):
        assert all(part.encode() not in f.read_bytes() for f in files)
