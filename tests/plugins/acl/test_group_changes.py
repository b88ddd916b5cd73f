"""What a sign-in token grants follows the directory and the settings, not the sign-in:
groups recorded with the token, grants computed from the current mapping, groups of
token holders read again (search-then-bind), records merged from other nodes.

Real slapd (tests/plugins/acl/conftest.py), real gateways; people made for each test
(helpers.person) so the shared directory's users stay as they are.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sqlite3
import subprocess
import sys
import time
import types

import grpc
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from sessiongate.core import CredentialRecord
from sessiongate.plugins.acl import runtime_of
from sessiongate.plugins.acl.tokenstore import STORE_FILE, TokenStore
from sessiongate.testing import wait_for, write_config

from .conftest import ADMINS_DN, GROUPS, PEOPLE, VIEWERS_DN, free_port
from .helpers import TIMEOUT, attached, leave, person, remove_person, rpc_error, stream_end

pytestmark = [pytest.mark.asyncio, pytest.mark.requires_plugin("acl")]

UNAUTH = grpc.StatusCode.UNAUTHENTICATED
DENIED = grpc.StatusCode.PERMISSION_DENIED
#: refresh the groups of token holders, and check streams, this often
INTERVAL = 0.5
FAST = {"plugins.acl.revocation_check_interval_seconds": INTERVAL}
LINE_2 = f"cn=line2-viewers,{GROUPS}"  # never created: mapped only in settings


async def test_a_viewer_taken_out_of_the_group_loses_the_stream_within_the_interval(
        make_gateway, slapd):
    gw = await make_gateway(**slapd.settings(), **FAST)
    sid = (await gw.client().open(tag="line-1")).session_id
    async with person(slapd, VIEWERS_DN) as (uid, password):
        token = (await gw.client("").login(uid, password)).token
        viewer = gw.client(token)
        call = viewer.stream(sid)
        await attached(call)
        await leave(slapd, uid, VIEWERS_DN)
        rounds = gw.gateway.metrics.get("acl_group_refreshes", outcome="ok")
        code = await stream_end(call)
        assert code == DENIED
        assert f"ldap:{uid} may no longer stream session {sid}" in await call.details()
        # counted in refresh rounds (one each INTERVAL), not seconds: the round under way
        # at the change may have read the old groups, the next one ends the stream (and
        # on a busy machine one more may finish before this reader sees the end)
        after = gw.gateway.metrics.get("acl_group_refreshes", outcome="ok") - rounds
        assert after <= 3, f"the stream ended {after:g} refresh rounds after the change"
        # the token itself still works: it now grants nothing
        assert await viewer.list() == []
        assert (await rpc_error(viewer.get(sid))).code() == DENIED
        runtime = runtime_of(gw.gateway.api)
        (row,) = [r for r in await runtime.store.live() if r["username"] == uid]
        assert row["groups"] == [] and row["tags"] == [] and not row["revoked"]
    assert gw.gateway.metrics.get("acl_streams_ended", reason="access withdrawn") == 1
    assert gw.gateway.metrics.get("acl_group_refreshes", outcome="ok") >= 1


async def test_a_person_gone_from_the_directory_has_their_tokens_revoked(make_gateway, slapd):
    gw = await make_gateway(**slapd.settings(), **FAST)
    sid = (await gw.client().open(tag="line-1")).session_id
    async with person(slapd, VIEWERS_DN) as (uid, password):
        token = (await gw.client("").login(uid, password)).token
        call = gw.client(token).stream(sid)
        await attached(call)
        await remove_person(slapd, uid, VIEWERS_DN)
        assert await stream_end(call) == UNAUTH
        assert "has been revoked" in await call.details()
        error = await rpc_error(gw.client(token).list())
        assert error.code() == UNAUTH and "has been revoked" in error.details()


async def test_while_the_directory_is_away_the_recorded_groups_stand(make_gateway, slapd,
                                                                     caplog):
    first = await make_gateway(**slapd.settings())
    token = (await first.client("").login("victor", "victor-pw")).token
    await first.stop()
    # the same state dir; the directory now unreachable (nothing listens there)
    gw = await make_gateway(**slapd.settings(url=f"ldap://127.0.0.1:{free_port()}"), **FAST)
    sid = (await gw.client().open(tag="line-1")).session_id
    call = gw.client(token).stream(sid)
    await attached(call)
    await wait_for(lambda: gw.gateway.metrics.get("acl_group_refreshes",
                                                  outcome="unavailable") >= 2, TIMEOUT)
    assert {s.session_id for s in await gw.client(token).list()} == {sid}
    await gw.client().invoke_json(sid, "write", {"tag": "t", "value": 1})
    assert len((await asyncio.wait_for(call.read(), TIMEOUT)).events) == 1  # still live
    call.cancel()
    warnings = [r for r in caplog.records if "cannot refresh the groups" in r.getMessage()]
    assert len(warnings) == 1  # once per outage


async def test_a_mapping_change_applies_to_a_token_issued_before_the_restart(
        make_gateway, slapd):
    """The token records the person's groups; what they grant is the settings' business,
    decided each time the token is presented."""
    first = await make_gateway(**slapd.settings())
    token = (await first.client("").login("victor", "victor-pw")).token
    await first.stop()
    # victor's group now maps to line-2 instead of line-1
    second = await make_gateway(**slapd.settings(group_tags={VIEWERS_DN: ["line-2"]}))
    line1 = (await second.client().open(tag="line-1")).session_id
    line2 = (await second.client().open(tag="line-2")).session_id
    victor = second.client(token)
    assert {s.session_id for s in await victor.list()} == {line2}
    assert (await rpc_error(victor.get(line1))).code() == DENIED
    assert (await rpc_error(victor.open())).code() == DENIED  # a viewer is read-only
    await second.stop()
    # and now makes its members admins
    third = await make_gateway(**slapd.settings(admin_groups=[ADMINS_DN, VIEWERS_DN]))
    victor = third.client(token)
    assert (await victor.open()).owner_key_id == "ldap:victor"


async def test_without_a_service_account_groups_are_read_at_login_only(make_gateway, slapd):
    """DN-template mode cannot read someone's groups without their password: no refresh
    task; the mapping still applies to the recorded groups at once."""
    settings = slapd.settings(bind_dn="", bind_password="", user_search_base="",
                              user_dn_template=f"uid={{username}},{PEOPLE}")
    gw = await make_gateway(**settings, **FAST)
    runtime = runtime_of(gw.gateway.api)
    assert not runtime.directory.config.search_then_bind
    names = {task.get_name() for task in asyncio.all_tasks()}
    assert "acl-token-watcher" in names and "acl-group-refresh" not in names
    token = (await gw.client("").login("victor", "victor-pw")).token
    tagged = (await gw.client().open(tag="line-1")).session_id
    assert {s.session_id for s in await gw.client(token).list()} == {tagged}


def _record(minted, **changes) -> CredentialRecord:
    """A record of ``minted`` as another node would send it."""
    values = {"credential_id": minted.token_id, "kind": "token",
              "subject": f"ldap:{minted.username}", "name": minted.username,
              "admin": False, "tags": (), "groups": (VIEWERS_DN,),
              "issued_at": minted.issued_at, "expires_at": minted.expires_at,
              "revoked_at": None, "updated_at": 1000.0}
    return CredentialRecord(**{**values, **changes})


async def test_records_from_other_nodes_are_merged_newest_first_and_revocation_sticks(
        make_gateway, slapd):
    gw = await make_gateway(**slapd.settings(), **FAST)
    runtime = runtime_of(gw.gateway.api)
    api = gw.gateway.api
    admin = gw.client()
    tagged = (await admin.open(tag="line-1")).session_id
    minted = runtime.tokens.mint("ann", admin=False, tags=())  # issued "elsewhere"
    ann = gw.client(minted.token)
    assert (await rpc_error(ann.list())).code() == UNAUTH  # not on record here yet

    record = _record(minted)
    assert await api.apply_credential_record(record) == "added"
    assert {s.session_id for s in await ann.list()} == {tagged}  # computed here: line-1
    call = ann.stream(tagged)
    await attached(call)
    assert await api.apply_credential_record(record) == "unchanged"
    older = dataclasses.replace(record, groups=(ADMINS_DN,), updated_at=999.0)
    assert await api.apply_credential_record(older) == "unchanged"  # never rolls back
    # a newer version without the viewer group: the stream ends before apply returns
    newer = dataclasses.replace(record, groups=(), updated_at=1001.0)
    assert await api.apply_credential_record(newer) == "updated"
    assert await stream_end(call) == DENIED
    assert await ann.list() == []
    # a revocation (of an older version, even) sticks: a later version does not undo it
    revoked = dataclasses.replace(record, revoked_at=1002.0)
    assert await api.apply_credential_record(revoked) == "revoked"
    assert (await rpc_error(ann.list())).code() == UNAUTH
    later = dataclasses.replace(record, updated_at=2000.0)
    assert await api.apply_credential_record(later) == "unchanged"
    assert (await rpc_error(ann.list())).code() == UNAUTH
    # not ours to take: someone else under that id, another kind, an expired token
    assert await api.apply_credential_record(
        dataclasses.replace(record, name="bob", subject="ldap:bob")) == "conflict"
    assert await api.apply_credential_record(
        dataclasses.replace(record, subject="ldap:bob")) == "conflict"
    assert await api.apply_credential_record(
        dataclasses.replace(record, kind="other")) is None
    gone = _record(runtime.tokens.mint("ann", admin=False, tags=()),
                   expires_at=time.time() - 1)
    assert await api.apply_credential_record(gone) == "unchanged"
    # what this node holds, for a full sync: the applied token, revoked, with its groups
    (mine,) = [r for r in await api.credential_records() if r.credential_id == minted.token_id]
    assert mine.revoked and mine.groups == () and mine.updated_at == 1001.0


async def test_changes_are_announced_with_a_record_never_the_token(make_gateway, slapd):
    """Login, sign-out and a revocation by another process each announce the token's
    record (sg_credential_changed); the revocation ends its streams at once."""
    from sessiongate.core import hookimpl

    seen: list[CredentialRecord] = []
    changed = asyncio.Event()

    @hookimpl
    def sg_credential_changed(record):
        seen.append(record)
        changed.set()

    listener = types.SimpleNamespace(__name__="listener",
                                     sg_credential_changed=sg_credential_changed)
    # a slow periodic check: what ends the stream is the token watcher
    gw = await make_gateway(extra_plugins=(listener,), **slapd.settings(),
                            **{"plugins.acl.revocation_check_interval_seconds": 60})
    anon = gw.client("")
    kept = (await anon.login("alice", "alice-pw")).token
    doomed = (await anon.login("alice", "alice-pw")).token
    signer = runtime_of(gw.gateway.api).tokens
    kept_id, doomed_id = signer.verify(kept).token_id, signer.verify(doomed).token_id
    assert [(r.credential_id, r.kind, r.subject, r.admin, r.tags, r.revoked) for r in seen] == [
        (kept_id, "token", "ldap:alice", True, ("line-1",), False),
        (doomed_id, "token", "ldap:alice", True, ("line-1",), False)]
    assert {g.lower() for g in seen[0].groups} == {ADMINS_DN.lower(), VIEWERS_DN.lower()}
    assert all(kept not in repr(r) and doomed not in repr(r) for r in seen)

    sid = (await gw.client(kept).open()).session_id
    call = gw.client(doomed).stream(sid)
    await attached(call)
    changed.clear()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sessiongate", "tokens", "revoke", doomed_id, "--config",
        str(gw.config), stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    _out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    assert await stream_end(call) == UNAUTH  # the token watcher, not the 60 s check
    await asyncio.wait_for(changed.wait(), TIMEOUT)
    assert seen[-1].credential_id == doomed_id and seen[-1].revoked
    assert await gw.gateway.api.revoke_credential(kept)  # sign-out
    assert seen[-1].credential_id == kept_id and seen[-1].revoked
    assert seen[-1].updated_at > seen[0].updated_at


async def test_a_store_from_before_groups_keeps_the_grants_tokens_were_issued_with(
        make_gateway, slapd, tmp_path):
    state = tmp_path / "state"  # make_gateway's state_dir
    state.mkdir()
    old = sqlite3.connect(state / STORE_FILE)
    old.executescript("""CREATE TABLE tokens (token_id TEXT PRIMARY KEY, username TEXT NOT
        NULL, admin INTEGER NOT NULL, tags TEXT NOT NULL, issued_at REAL NOT NULL,
        expires_at REAL NOT NULL, revoked_at REAL);""")
    old.close()
    gw = await make_gateway(**slapd.settings())
    runtime = runtime_of(gw.gateway.api)
    minted = runtime.tokens.mint("olga", admin=False, tags=("line-1",))
    await runtime.store.db.execute(  # a row as the previous version wrote it
        "INSERT INTO tokens (token_id, username, admin, tags, issued_at, expires_at) "
        "VALUES (?, ?, 0, ?, ?, ?)", (minted.token_id, "olga", json.dumps(["line-1"]),
                                      minted.issued_at, minted.expires_at))
    tagged = (await gw.client().open(tag="line-1")).session_id
    assert {s.session_id for s in await gw.client(minted.token).list()} == {tagged}
    # not offered to other nodes: they could not compute its grants
    assert minted.token_id not in {r.credential_id
                                   for r in await gw.gateway.api.credential_records()}
    async with TokenStore(state / STORE_FILE) as store:  # the CLI opens it too
        assert (await store.get(minted.token_id)).groups is None


def _key_file(path, key) -> str:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.chmod(0o600)
    return str(path)


def _check_config(tmp_path, **values) -> subprocess.CompletedProcess[str]:
    config = write_config(tmp_path / "c.toml", {"state_dir": str(tmp_path / "s"), **values})
    return subprocess.run([sys.executable, "-m", "sessiongate", "check-config", "--config",
                           str(config)], capture_output=True, text=True, timeout=60,
                          check=False)


async def test_a_shared_signing_key_file(make_gateway, slapd, tmp_path):
    """``plugins.acl.token_key_file``: two gateways on their own state dirs naming one key
    accept each other's signatures; a key file that cannot be used is a settings error
    (checked only with LDAP on), and a missing one is never created."""
    shared = _key_file(tmp_path / "token-key.pem", ed25519.Ed25519PrivateKey.generate())
    one = await make_gateway(**slapd.settings(), **{"plugins.acl.token_key_file": shared})
    two = await make_gateway(**slapd.settings(), **{
        "plugins.acl.token_key_file": shared, "state_dir": str(tmp_path / "other")})
    minted = runtime_of(one.gateway.api).tokens.mint("alice", admin=True, tags=())
    # the signature verifies on two; the record is what two lacks (cluster brings it)
    error = await rpc_error(two.client(minted.token).list())
    assert error.code() == UNAUTH and "unknown to this gateway" in error.details()
    assert not (tmp_path / "other" / "acl-token-key.pem").exists()

    ldap_on = {"plugins.acl.ldap.enabled": True,
               "plugins.acl.ldap.user_dn_template": f"uid={{username}},{PEOPLE}"}
    not_a_key = tmp_path / "not-a-key.pem"
    not_a_key.write_text("hello\n")
    other_kind = _key_file(tmp_path / "ec.pem", ec.generate_private_key(ec.SECP256R1()))
    for path in (str(tmp_path / "missing.pem"), str(not_a_key), other_kind, str(tmp_path)):
        done = _check_config(tmp_path, **ldap_on, **{"plugins.acl.token_key_file": path})
        assert done.returncode == 2, done.stderr
        assert "plugins.acl.token_key_file" in done.stderr and "Ed25519" in done.stderr
    done = _check_config(tmp_path, **{"plugins.acl.token_key_file": str(not_a_key)})
    assert done.returncode == 0, done.stderr  # LDAP off: no token is signed
    assert not (tmp_path / "missing.pem").exists()
