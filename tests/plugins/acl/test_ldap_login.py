"""LDAP logins against a real slapd, through the Login RPC and `sessiongate login`."""

from __future__ import annotations

import asyncio
import logging
import socket
import sys
import time

import grpc
import pytest

from sessiongate.plugins.acl import runtime_of

from .conftest import PEOPLE
from .helpers import attached, rpc_error

pytestmark = [pytest.mark.asyncio, pytest.mark.requires_plugin("acl")]

UNAUTH = grpc.StatusCode.UNAUTHENTICATED
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
DENIED = grpc.StatusCode.PERMISSION_DENIED


async def test_admin_viewer_and_user_in_no_group(make_gateway, slapd):
    gw = await make_gateway(**slapd.settings(), **{"plugins.acl.token_ttl_seconds": 600})
    _id, owner_key = await gw.create_key("owner")
    owner = gw.client(owner_key)
    tagged = (await owner.open(tag="line-1")).session_id
    untagged = (await owner.open()).session_id
    anon = gw.client("")

    before = time.time()
    alice = await anon.login("alice", "alice-pw")
    assert alice.admin and list(alice.tags) == ["line-1"]
    assert before + 590 <= alice.expires_at.seconds <= time.time() + 601
    victor = await anon.login("victor", "victor-pw")
    assert not victor.admin and list(victor.tags) == ["line-1"]
    nora = await anon.login("nora", "nora-pw")
    assert not nora.admin and list(nora.tags) == []

    as_alice, as_victor, as_nora = (gw.client(r.token) for r in (alice, victor, nora))
    # admin: everything, and may open (becoming the owner)
    assert {s.session_id for s in await as_alice.list()} >= {tagged, untagged}
    assert await as_alice.invoke_json(untagged, "echo", 1) == 1
    mine = await as_alice.open()
    assert mine.owner_key_id == "ldap:alice"
    # viewer: the tagged session, read-only; cannot open sessions
    assert {s.session_id for s in await as_victor.list()} == {tagged}
    call = as_victor.stream(tagged)
    await attached(call)
    call.cancel()
    assert (await rpc_error(as_victor.invoke_json(tagged, "echo", 1))).code() == DENIED
    assert (await rpc_error(as_victor.get(untagged))).code() == DENIED
    assert (await rpc_error(as_victor.open())).code() == DENIED
    # in no mapped group: strict, sees nothing
    assert await as_nora.list() == []
    assert (await rpc_error(as_nora.get(tagged))).code() == DENIED
    assert gw.gateway.metrics.get("acl_logins", outcome="ok") == 3


async def test_wrong_password_and_unknown_user_look_the_same(make_gateway, slapd, caplog):
    caplog.set_level(logging.DEBUG)
    gw = await make_gateway(**slapd.settings())
    anon = gw.client("")
    wrong = await rpc_error(anon.login("alice", "victor-pw"))
    unknown = await rpc_error(anon.login("zed", "victor-pw"))
    empty = await rpc_error(anon.login("alice", ""))
    assert wrong.code() == unknown.code() == empty.code() == UNAUTH
    assert wrong.details() == unknown.details() == empty.details() \
        == "invalid username or password"
    assert "victor-pw" not in caplog.text and "service-secret" not in caplog.text
    assert gw.gateway.metrics.get("acl_logins", outcome="refused") == 3


@pytest.mark.parametrize("mode", ["search", "template"])
@pytest.mark.parametrize("username", ["*)(uid=*", "*", "alice)(|(uid=*", "uid=alice",
                                      f"alice,{PEOPLE}", "alice\\2a"])
async def test_injection_in_the_username_does_not_widen_anything(make_gateway, slapd, mode,
                                                                 username):
    settings = slapd.settings() if mode == "search" else slapd.settings(
        bind_dn="", bind_password="", user_dn_template=f"uid={{username}},{PEOPLE}")
    gw = await make_gateway(**settings)
    anon = gw.client("")
    for password in ("alice-pw", "victor-pw", "x"):
        error = await rpc_error(anon.login(username, password))
        assert error.code() == UNAUTH, (username, password)


async def test_template_mode_binds_the_user_directly(make_gateway, slapd):
    gw = await make_gateway(**slapd.settings(bind_dn="", bind_password="",
                                             user_dn_template=f"uid={{username}},{PEOPLE}"))
    anon = gw.client("")
    victor = await anon.login("victor", "victor-pw")
    assert list(victor.tags) == ["line-1"] and not victor.admin
    assert (await rpc_error(anon.login("victor", "alice-pw"))).code() == UNAUTH


async def test_directory_down_is_unavailable(make_gateway, slapd):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    gw = await make_gateway(**slapd.settings(url=f"ldap://127.0.0.1:{port}",
                                             timeout_seconds=2))
    error = await rpc_error(gw.client("").login("alice", "alice-pw"))
    assert error.code() == UNAVAILABLE
    assert error.details() == "the directory is unavailable; try again later"
    assert gw.gateway.metrics.get("acl_logins", outcome="unavailable") == 1


async def test_directory_that_never_answers_times_out_unavailable(make_gateway, slapd):
    with socket.socket() as silent:  # accepts connections (backlog), never replies
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        gw = await make_gateway(**slapd.settings(url=f"ldap://127.0.0.1:{port}",
                                                 timeout_seconds=0.5))
        started = time.monotonic()
        error = await rpc_error(gw.client("").login("alice", "alice-pw"))
        assert error.code() == UNAVAILABLE
        assert time.monotonic() - started < 10


async def test_service_account_refused_is_unavailable_not_the_users_fault(make_gateway,
                                                                         slapd):
    gw = await make_gateway(**slapd.settings(bind_password="not-the-password"))
    error = await rpc_error(gw.client("").login("alice", "alice-pw"))
    assert error.code() == UNAVAILABLE


async def test_start_tls_with_a_trusted_certificate(make_gateway, slapd):
    gw = await make_gateway(**slapd.settings(start_tls=True, ca_file=slapd.ca_file))
    assert (await gw.client("").login("alice", "alice-pw")).admin
    assert (await rpc_error(gw.client("").login("alice", "x"))).code() == UNAUTH


async def test_start_tls_with_an_untrusted_certificate_is_unavailable(make_gateway, slapd):
    gw = await make_gateway(**slapd.settings(start_tls=True))  # system CAs only
    error = await rpc_error(gw.client("").login("alice", "alice-pw"))
    assert error.code() == UNAVAILABLE


async def test_start_tls_with_a_certificate_for_another_name_is_unavailable(make_gateway,
                                                                           slapd):
    # the certificate names 127.0.0.1 only; the same server reached as "localhost"
    gw = await make_gateway(**slapd.settings(start_tls=True, ca_file=slapd.ca_file,
                                             url=f"ldap://localhost:{slapd.port}"))
    error = await rpc_error(gw.client("").login("alice", "alice-pw"))
    assert error.code() == UNAVAILABLE


async def test_cli_login_prints_the_token_alone(make_gateway, slapd):
    gw = await make_gateway(**slapd.settings())
    argv = [sys.executable, "-m", "sessiongate", "login", "--user", "victor", "--server",
            gw.address, "--config", str(gw.config)]
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(b"victor-pw\n"), 60)
    assert proc.returncode == 0, err.decode()
    token = out.decode().strip()
    assert out.decode() == token + "\n" and token.count(".") == 2
    assert await gw.client(token).list() == []
    # stderr names the token, for revoking it alone; the id is the token's own
    token_id = runtime_of(gw.gateway.api).tokens.verify(token).token_id
    assert f"tokens revoke {token_id}" in err.decode()
    # a wrong password: exit 1, nothing on stdout, the reason on stderr
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(b"wrong\n"), 60)
    assert proc.returncode == 1 and out == b""
    assert b"UNAUTHENTICATED" in err and b"wrong" not in err


async def test_login_is_unimplemented_while_ldap_is_off(make_gateway):
    gw = await make_gateway()
    error = await rpc_error(gw.client("").login("alice", "alice-pw"))
    assert error.code() == grpc.StatusCode.UNIMPLEMENTED
