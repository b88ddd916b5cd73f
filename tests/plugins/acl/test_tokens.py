"""Signed tokens: accepted as Bearer credentials; expired, tampered, foreign ones refused."""

from __future__ import annotations

import base64
import json
import time

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from sessiongate.plugins.acl import runtime_of
from sessiongate.plugins.acl.tokens import KEY_FILE, TokenSigner

from .conftest import ADMINS_DN
from .helpers import attached, rpc_error, stream_end

pytestmark = [pytest.mark.asyncio, pytest.mark.requires_plugin("acl")]

UNAUTH = grpc.StatusCode.UNAUTHENTICATED


def _b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def _claims(token: str) -> dict:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


async def _ldap_gateway(make_gateway, slapd, **extra):
    gw = await make_gateway(**slapd.settings(), **extra)
    runtime = runtime_of(gw.gateway.api)
    assert runtime is not None and runtime.tokens is not None
    return gw, runtime.tokens


async def test_a_login_token_is_a_bearer_credential(make_gateway, slapd):
    gw, _signer = await _ldap_gateway(make_gateway, slapd)
    token = (await gw.client("").login("alice", "alice-pw")).token
    header = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
    assert header["alg"] == "EdDSA" and header["kid"]
    claims = _claims(token)
    assert claims["sub"] == "ldap:alice" and claims["adm"] is True
    assert claims["tags"] == ["line-1"] and claims["exp"] - claims["iat"] == 1800
    info = await gw.client(token).open()
    assert info.owner_key_id == "ldap:alice"
    key = gw.gateway.state_dir / KEY_FILE
    assert key.stat().st_mode & 0o777 == 0o600


async def test_expired_token_is_unauthenticated(make_gateway, slapd):
    gw, signer = await _ldap_gateway(make_gateway, slapd)
    token = signer.mint("alice", admin=True, tags=(), now=time.time() - 3600, ttl=60).token
    error = await rpc_error(gw.client(token).list())
    assert error.code() == UNAUTH and "expired" in error.details()


async def test_tampered_token_is_unauthenticated(make_gateway, slapd):
    gw, signer = await _ldap_gateway(make_gateway, slapd)
    token = signer.mint("victor", admin=False, tags=("line-1",)).token
    header, payload, signature = token.split(".")
    claims = {**_claims(token), "adm": True}  # promote oneself to admin
    forged = f"{header}.{_b64(claims)}.{signature}"
    error = await rpc_error(gw.client(forged).list())
    assert error.code() == UNAUTH and "not valid" in error.details()
    # a flipped signature byte
    flipped = signature[:-2] + ("A" if signature[-2] != "A" else "B") + signature[-1]
    error = await rpc_error(gw.client(f"{header}.{payload}.{flipped}").list())
    assert error.code() == UNAUTH


async def test_token_signed_by_another_key_is_unauthenticated(make_gateway, slapd):
    gw, signer = await _ldap_gateway(make_gateway, slapd)
    stranger = TokenSigner(Ed25519PrivateKey.generate(), 600)
    token = stranger.mint("alice", admin=True, tags=()).token
    assert (await rpc_error(gw.client(token).list())).code() == UNAUTH
    # same kid header as ours does not help either
    forged = jwt.encode(_claims(token), Ed25519PrivateKey.generate(), algorithm="EdDSA",
                        headers={"kid": signer.kid})
    assert (await rpc_error(gw.client(forged).list())).code() == UNAUTH


async def test_alg_none_and_hmac_tokens_are_refused(make_gateway, slapd):
    gw, signer = await _ldap_gateway(make_gateway, slapd)
    token = signer.mint("alice", admin=True, tags=()).token
    claims = _claims(token)
    unsigned = f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(claims)}."
    assert (await rpc_error(gw.client(unsigned).list())).code() == UNAUTH
    hmac = jwt.encode(claims, "k" * 64, algorithm="HS256")
    assert (await rpc_error(gw.client(hmac).list())).code() == UNAUTH
    assert (await rpc_error(gw.client("a.b.c").list())).code() == UNAUTH


async def test_tokens_are_refused_while_ldap_login_is_off(make_gateway):
    gw = await make_gateway()
    signer = TokenSigner(Ed25519PrivateKey.generate(), 600)
    token = signer.mint("alice", admin=True, tags=()).token
    error = await rpc_error(gw.client(token).list())
    assert error.code() == UNAUTH and "LDAP login is off" in error.details()


async def test_the_next_gateway_on_the_state_dir_accepts_the_token(make_gateway, slapd):
    """A restart keeps tokens valid (one gateway at a time holds a state_dir)."""
    first, _ = await _ldap_gateway(make_gateway, slapd)
    token = (await first.client("").login("victor", "victor-pw")).token
    await first.stop()
    second, _ = await _ldap_gateway(make_gateway, slapd)  # same state_dir, same key file
    assert await second.client(token).list() == []


async def test_an_expiring_token_ends_its_live_stream(make_gateway, slapd):
    gw, _signer = await _ldap_gateway(
        make_gateway, slapd, **{"plugins.acl.revocation_check_interval_seconds": 0.1})
    sid = (await gw.client().open()).session_id
    minted = await runtime_of(gw.gateway.api).issue("alice", groups=(ADMINS_DN,), ttl=2)
    call = gw.client(minted.token).stream(sid)
    await attached(call)
    assert await stream_end(call) == UNAUTH
    assert time.time() >= minted.expires_at
    assert gw.gateway.metrics.get("acl_streams_ended", reason="token expired") == 1


async def test_a_failed_start_fails_closed(make_gateway, tmp_path, caplog):
    """An unusable signing key stops the plugin from starting: then nothing is allowed."""
    state = tmp_path / "state"  # make_gateway's state_dir
    state.mkdir()
    (state / KEY_FILE).write_text("not a key\n")
    gw = await make_gateway(**{"plugins.acl.ldap.enabled": True,
                               "plugins.acl.ldap.user_dn_template": "uid={username},dc=x"})
    assert runtime_of(gw.gateway.api) is None
    assert "sg_startup" in caplog.text
    error = await rpc_error(gw.client().open())
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    signer = TokenSigner(Ed25519PrivateKey.generate(), 600)
    token = signer.mint("alice", admin=True, tags=()).token
    assert (await rpc_error(gw.client(token).list())).code() == UNAUTH
