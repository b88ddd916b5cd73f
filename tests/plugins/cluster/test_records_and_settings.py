"""The strict reading of entries (S1.DEC rules, one by one) and the settings rules."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

from sessiongate.core import CredentialRecord, KeyRecord
from sessiongate.plugins.cluster.directory import Directory
from sessiongate.plugins.cluster.records import (
    Malformed,
    Snapshot,
    decode_credential,
    decode_key,
    decode_snapshot,
    encode_credential,
    encode_key,
    from_json,
    newer,
    to_json,
)
from sessiongate.testing import write_config

pytestmark = pytest.mark.once

GOOD = Snapshot(session_id="s1", node_id="n1", node="10.0.0.1:50551", state="READY",
                owner_key_id="k1", tag="", last_sequence=3, updated_at_ms=1000)


def refused(raw: dict[Any, Any]) -> Malformed:
    with pytest.raises(Malformed) as info:
        decode_snapshot(raw)
    return info.value


def test_a_full_snapshot_round_trips_through_the_stream_and_the_hash():
    assert decode_snapshot(GOOD.fields()) == GOOD
    assert decode_snapshot(from_json(to_json(GOOD.fields()))) == GOOD
    as_bytes = {k.encode(): v.encode() for k, v in GOOD.fields().items()}
    assert decode_snapshot(as_bytes) == GOOD  # what redis-py hands over
    assert decode_snapshot({**GOOD.fields(), "last_sequence": 3}) == GOOD  # a native int


@pytest.mark.parametrize(("change", "reason"), [
    ({"extra": "x"}, "unknown_field"),                  # S1.DEC.2
    ({"state": None}, "missing_field"),                 # S1.DEC.3
    ({"owner_key_id": None}, "missing_field"),          # present even when empty
    ({"node": "  "}, "blank_field"),                    # S1.DEC.5
    ({"session_id": ""}, "blank_field"),
    ({"last_sequence": 1.5}, "bad_value"),              # S1.DEC.4/6: a float
    ({"last_sequence": True}, "bad_value"),             # a bool
    ({"tag": b"\xff"}, "bad_value"),                    # bytes that are not UTF-8
    ({"last_sequence": "x1"}, "bad_value"),             # S1.DEC.7: not a number
    ({"updated_at_ms": str(2**63)}, "bad_value"),       # beyond int64
    ({"state": "SLEEPING"}, "bad_value"),
    ({"v": "2"}, "bad_value"),
])
def test_each_rule_refuses_the_whole_entry_naming_its_session(change, reason):
    raw = {k: v for k, v in {**GOOD.fields(), **change}.items() if v is not None}
    error = refused(raw)
    assert error.reason == reason
    expected = None if change.get("session_id") == "" else "s1"
    assert error.subject == expected


def test_an_entry_without_a_readable_id_names_no_session():
    assert refused({"session_id": b"\xff", "x": "y"}).subject is None
    assert refused({"x": "y"}).subject is None
    with pytest.raises(Malformed):
        from_json("[1, 2]")


def test_values_are_kept_as_given_and_only_trimmed_for_the_blank_check():
    snapshot = decode_snapshot({**GOOD.fields(), "tag": " t ", "last_sequence": " 4 "})
    assert snapshot.tag == " t " and snapshot.last_sequence == 4


def test_a_key_record_carries_the_digest_never_a_secret():
    record = KeyRecord(key_id="abc", name="ci", digest=bytes(32), scopes=("sessions:admin",),
                       tags=("t",), created_at=1.5, revoked_at=None)
    fields = encode_key(record)
    assert fields["digest"] == "00" * 32 and "secret" not in fields
    assert decode_key(fields) == record
    revoked = decode_key({**fields, "revoked_at_ms": "2000"})
    assert revoked.revoked_at == 2.0
    for bad in ({"digest": "zz"}, {"scopes": "[1]"}, {"tags": "{}"}):
        with pytest.raises(Malformed) as info:
            decode_key({**fields, **bad})
        assert info.value.reason == "bad_value" and info.value.subject == "abc"


CREDENTIAL = CredentialRecord(
    credential_id="0123456789abcdef", kind="token", subject="ldap:ann", name="ann",
    admin=True, tags=("line-1", "line-2"), groups=("cn=Ops,ou=groups,dc=x", "cn=b,dc=x"),
    issued_at=1700000000.0, expires_at=1700001800.0, revoked_at=None,
    updated_at=1700000000.123)


def test_a_credential_record_round_trips_and_carries_no_token():
    fields = encode_credential(CREDENTIAL)
    assert set(fields) == {"v", "credential_id", "kind", "subject", "name", "admin", "tags",
                           "groups", "issued_at_ms", "expires_at_ms", "revoked_at_ms",
                           "updated_at_ms"}
    assert fields["admin"] == "1" and fields["updated_at_ms"] == "1700000000123"
    assert decode_credential(fields) == CREDENTIAL
    assert decode_credential(from_json(to_json(fields))) == CREDENTIAL
    as_bytes = {k.encode(): v.encode() for k, v in fields.items()}
    assert decode_credential(as_bytes) == CREDENTIAL  # what redis-py hands over
    revoked = decode_credential({**fields, "revoked_at_ms": "1700000100000"})
    assert revoked.revoked_at == 1700000100.0 and revoked.revoked


@pytest.mark.parametrize(("change", "reason"), [
    ({"token": "x"}, "unknown_field"),                  # S1.DEC.2: never a token field
    ({"groups": None}, "missing_field"),                # S1.DEC.3
    ({"revoked_at_ms": None}, "missing_field"),         # present even when empty
    ({"kind": " "}, "blank_field"),                     # S1.DEC.5
    ({"subject": ""}, "blank_field"),
    ({"credential_id": ""}, "blank_field"),
    ({"expires_at_ms": 1.5}, "bad_value"),              # S1.DEC.4/6: a float
    ({"updated_at_ms": False}, "bad_value"),            # a bool
    ({"name": b"\xff"}, "bad_value"),                   # bytes that are not UTF-8
    ({"issued_at_ms": "soon"}, "bad_value"),            # S1.DEC.7: not a number
    ({"revoked_at_ms": "-5"}, "bad_value"),
    ({"updated_at_ms": str(2**63)}, "bad_value"),       # beyond int64
    ({"admin": "yes"}, "bad_value"),                    # 0 or 1 only
    ({"tags": "line-1"}, "bad_value"),                  # a JSON list of strings
    ({"groups": "[1]"}, "bad_value"),
    ({"kind": "a kind"}, "bad_value"),                  # no spaces, short
    ({"credential_id": "x" * 129}, "bad_value"),
    ({"v": "2"}, "bad_value"),
])
def test_each_rule_refuses_the_whole_credential_entry_naming_it(change, reason):
    raw = {k: v for k, v in {**encode_credential(CREDENTIAL), **change}.items()
           if v is not None}
    with pytest.raises(Malformed) as info:
        decode_credential(raw)
    assert info.value.reason == reason
    named = change.get("credential_id", CREDENTIAL.credential_id)
    assert info.value.subject == (named if named else None)


def test_a_credential_record_is_news_when_newer_or_newly_revoked():
    older = CREDENTIAL
    later = CredentialRecord(**{**older.__dict__, "updated_at": older.updated_at + 0.001})
    revoked_older = CredentialRecord(**{**older.__dict__, "revoked_at": 1.0})
    assert newer(older, None) and newer(later, older) and not newer(older, later)
    assert not newer(older, older)
    assert newer(revoked_older, later)  # a revocation is news whatever its version
    assert newer(later, revoked_older)  # news too: the node's merge keeps the revocation


def test_the_directory_is_last_write_wins_and_forgets_ended_sessions():
    directory = Directory("n2")
    assert directory.apply(GOOD)
    older = Snapshot(**{**GOOD.__dict__, "state": "DETACHED", "updated_at_ms": 999})
    assert not directory.apply(older)  # stale: never rolls back
    closed = Snapshot(**{**GOOD.__dict__, "state": "CLOSED", "updated_at_ms": 1001})
    assert directory.apply(closed) and directory.get("s1") is None
    assert not directory.apply(GOOD)  # an older snapshot cannot bring it back
    assert [r.node for r in Directory("n2").remote()] == []


def check_config(config: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sessiongate", "check-config", "--config",
                           str(config)], capture_output=True, text=True, timeout=60,
                          check=False)


def test_every_settings_problem_is_reported_at_once(tmp_path):
    config = write_config(tmp_path / "bad.toml", {
        "state_dir": str(tmp_path / "state"), "plugins.cluster.enabled": True,
        "plugins.cluster.redis_url": "http://x", "plugins.cluster.stream": "has space",
        "plugins.cluster.node_id": "-x", "plugins.cluster.advertise_address": "0.0.0.0:50551"})
    done = check_config(config)
    assert done.returncode == 2
    for key in ("redis_url", "stream", "node_id", "advertise_address"):
        assert f"plugins.cluster.{key}" in done.stderr, done.stderr


def test_advertise_address_is_required_when_on(tmp_path):
    config = write_config(tmp_path / "on.toml", {
        "state_dir": str(tmp_path / "state"), "plugins.cluster.enabled": True})
    done = check_config(config)
    assert done.returncode == 2 and "plugins.cluster.advertise_address" in done.stderr
