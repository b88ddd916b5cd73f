"""What the cluster plugin writes to Redis, and the strict reading of it back (S1.DEC).

Three kinds of entry, each a flat map of text fields, on a stream and (the latest per
id) in a hash as a JSON object of the same fields:

* :class:`Snapshot`, a **full** session snapshot (S1.DEC.10: applying one is
  last-write-wins, no partial update), on ``<stream>`` (public, documented);
* :class:`KeyRecord` lines, an API key as other nodes verify it (the secret's
  digest, never the secret), on ``<stream>:keys``;
* :class:`CredentialRecord` lines, a sign-in credential (an acl login token) as other
  nodes accept or refuse it (its id, subject, grants, groups, times: never the
  credential), on ``<stream>:credentials``; last-write-wins by ``updated_at_ms``, a
  revocation sticky.

Reading is strict: a field not in the schema, a required field missing or blank, a
value that is not text or an integer (a float, a bool, bytes that are not UTF-8), a
number or enum that does not parse: the whole entry is refused with a
:class:`Malformed` naming the reason (a metric label) and, when it can be read, the
id it was about (so the caller can fail closed on it).
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping
from typing import Any

from sessiongate.core import CredentialRecord, KeyRecord

__all__ = ["FORMAT", "REASONS", "Malformed", "Snapshot", "decode_credential", "decode_key",
           "decode_snapshot", "encode_credential", "encode_key", "from_json", "newer",
           "to_json"]

#: the format version every entry carries (field ``v``); another version is refused
FORMAT = "1"
#: why an entry was refused (the ``reason`` label of ``cluster_entries_dropped``)
REASONS = ("unknown_field", "missing_field", "blank_field", "bad_value")
STATES = frozenset({"OPENING", "READY", "DETACHED", "CLOSING", "CLOSED", "FAULTED"})
#: states after which a session is gone from the directory
ENDED_STATES = frozenset({"CLOSED", "FAULTED"})
_DIGEST = re.compile(r"[0-9a-f]{64}")
#: a credential's id and kind: short, printable, no spaces
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
_FLAGS = {"0": False, "1": True}
_MAX_INT = 2**63 - 1


class Malformed(ValueError):
    """An entry refused by the strict reading; ``subject`` is its id when readable."""

    def __init__(self, reason: str, message: str, subject: str | None) -> None:
        super().__init__(message)
        self.reason = reason
        self.subject = subject


#: a schema: field name → must be non-blank (every listed field must be present)
Schema = Mapping[str, bool]
SNAPSHOT_SCHEMA: Schema = {
    "v": True, "session_id": True, "node_id": True, "node": True, "state": True,
    "owner_key_id": False, "tag": False, "last_sequence": True, "updated_at_ms": True,
}
KEY_SCHEMA: Schema = {
    "v": True, "key_id": True, "name": True, "digest": True, "scopes": True, "tags": True,
    "created_at_ms": True, "revoked_at_ms": False,
}
CREDENTIAL_SCHEMA: Schema = {
    "v": True, "credential_id": True, "kind": True, "subject": True, "name": True,
    "admin": True, "tags": True, "groups": True, "issued_at_ms": True,
    "expires_at_ms": True, "revoked_at_ms": False, "updated_at_ms": True,
}


def _text(name: str, value: Any) -> str:
    """A field's value as text (S1.DEC.6: text, UTF-8 bytes, or a native integer)."""
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise Malformed("bad_value", f"{name}: not UTF-8 text", None) from None
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise Malformed("bad_value", f"{name}: unsupported value type {type(value).__name__}",
                    None)


def _subject(raw: Mapping[Any, Any], field: str) -> str | None:
    """The entry's id if it can be read at all (for failing closed on a bad entry)."""
    for key, value in raw.items():
        try:
            if _text("field name", key) == field:
                text = _text(field, value)
                return text if text.strip() else None
        except Malformed:
            return None
    return None


def _read(raw: Mapping[Any, Any], schema: Schema, subject_field: str) -> dict[str, str]:
    subject = _subject(raw, subject_field)
    fields: dict[str, str] = {}
    try:
        for key, value in raw.items():
            name = _text("field name", key)
            if name not in schema:
                raise Malformed("unknown_field", f"unsupported field {name[:64]!r}", subject)
            fields[name] = _text(name, value)
    except Malformed as exc:
        raise Malformed(exc.reason, str(exc), subject) from None
    for name, non_blank in schema.items():
        if name not in fields:
            raise Malformed("missing_field", f"missing {name}", subject)
        if non_blank and not fields[name].strip():
            raise Malformed("blank_field", f"{name} must not be empty", subject)
    if fields["v"] != FORMAT:
        raise Malformed("bad_value", f"v: format {fields['v'][:16]!r} is not {FORMAT}", subject)
    return fields


def _integer(fields: Mapping[str, str], name: str, subject: str | None) -> int:
    """A base-10 integer in 0 .. 2**63-1 (S1.DEC.7: trimmed first)."""
    text = fields[name].strip()
    if not text.isdigit() or int(text) > _MAX_INT:
        raise Malformed("bad_value", f"{name}: not a whole number", subject)
    return int(text)


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """One session as its node last published it (the whole of it)."""

    session_id: str
    node_id: str
    node: str  # the node's advertise address
    state: str
    owner_key_id: str
    tag: str
    last_sequence: int
    updated_at_ms: int

    @property
    def ended(self) -> bool:
        return self.state in ENDED_STATES

    def fields(self) -> dict[str, str]:
        return {"v": FORMAT, "session_id": self.session_id, "node_id": self.node_id,
                "node": self.node, "state": self.state, "owner_key_id": self.owner_key_id,
                "tag": self.tag, "last_sequence": str(self.last_sequence),
                "updated_at_ms": str(self.updated_at_ms)}


def decode_snapshot(raw: Mapping[Any, Any]) -> Snapshot:
    """A stream entry's (or hash value's) fields as a :class:`Snapshot`.

    :raises Malformed: see the module's docstring.
    """
    fields = _read(raw, SNAPSHOT_SCHEMA, "session_id")
    subject = fields["session_id"]
    if fields["state"] not in STATES:
        raise Malformed("bad_value", f"state: {fields['state'][:32]!r} is not a session state",
                        subject)
    return Snapshot(session_id=subject, node_id=fields["node_id"], node=fields["node"],
                    state=fields["state"], owner_key_id=fields["owner_key_id"],
                    tag=fields["tag"], last_sequence=_integer(fields, "last_sequence", subject),
                    updated_at_ms=_integer(fields, "updated_at_ms", subject))


def encode_key(record: KeyRecord) -> dict[str, str]:
    """A key's replicated fields: the secret's digest, never the secret."""
    return {"v": FORMAT, "key_id": record.key_id, "name": record.name,
            "digest": record.digest.hex(), "scopes": json.dumps(sorted(record.scopes)),
            "tags": json.dumps(sorted(record.tags)),
            "created_at_ms": str(int(record.created_at * 1000)),
            "revoked_at_ms": "" if record.revoked_at is None
            else str(int(record.revoked_at * 1000))}


def _names(fields: Mapping[str, str], name: str, subject: str) -> tuple[str, ...]:
    try:
        value = json.loads(fields[name])
    except ValueError:
        value = None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise Malformed("bad_value", f"{name}: not a JSON list of strings", subject)
    return tuple(value)


def decode_key(raw: Mapping[Any, Any]) -> KeyRecord:
    """A key entry's fields as a :class:`~sessiongate.core.KeyRecord`.

    :raises Malformed: see the module's docstring.
    """
    fields = _read(raw, KEY_SCHEMA, "key_id")
    subject = fields["key_id"]
    if not _DIGEST.fullmatch(fields["digest"]):
        raise Malformed("bad_value", "digest: not 64 lower-case hex digits", subject)
    revoked = (_integer(fields, "revoked_at_ms", subject) / 1000
               if fields["revoked_at_ms"].strip() else None)
    return KeyRecord(key_id=subject, name=fields["name"],
                     digest=bytes.fromhex(fields["digest"]),
                     scopes=_names(fields, "scopes", subject),
                     tags=_names(fields, "tags", subject),
                     created_at=_integer(fields, "created_at_ms", subject) / 1000,
                     revoked_at=revoked)


def _ms(seconds: float) -> str:
    return str(round(seconds * 1000))


def encode_credential(record: CredentialRecord) -> dict[str, str]:
    """A credential's replicated fields (never the credential itself)."""
    return {"v": FORMAT, "credential_id": record.credential_id, "kind": record.kind,
            "subject": record.subject, "name": record.name,
            "admin": "1" if record.admin else "0",
            "tags": json.dumps(sorted(record.tags)), "groups": json.dumps(list(record.groups)),
            "issued_at_ms": _ms(record.issued_at), "expires_at_ms": _ms(record.expires_at),
            "revoked_at_ms": "" if record.revoked_at is None else _ms(record.revoked_at),
            "updated_at_ms": _ms(record.updated_at)}


def decode_credential(raw: Mapping[Any, Any]) -> CredentialRecord:
    """A credential entry's fields as a :class:`~sessiongate.core.CredentialRecord`.

    :raises Malformed: see the module's docstring.
    """
    fields = _read(raw, CREDENTIAL_SCHEMA, "credential_id")
    subject = fields["credential_id"]
    for name in ("credential_id", "kind"):
        if not _NAME.fullmatch(fields[name]):
            raise Malformed("bad_value", f"{name}: not 1-128 of A-Z a-z 0-9 . _ : -",
                            subject)
    if fields["admin"] not in _FLAGS:
        raise Malformed("bad_value", "admin: not 0 or 1", subject)

    def seconds(name: str) -> float:
        return _integer(fields, name, subject) / 1000

    return CredentialRecord(
        credential_id=subject, kind=fields["kind"], subject=fields["subject"],
        name=fields["name"], admin=_FLAGS[fields["admin"]],
        tags=_names(fields, "tags", subject), groups=_names(fields, "groups", subject),
        issued_at=seconds("issued_at_ms"), expires_at=seconds("expires_at_ms"),
        revoked_at=seconds("revoked_at_ms") if fields["revoked_at_ms"].strip() else None,
        updated_at=seconds("updated_at_ms"))


def newer(record: CredentialRecord, known: CredentialRecord | None) -> bool:
    """Does ``record`` tell more than ``known``: a later version, or a revocation?"""
    return (known is None or record.updated_at > known.updated_at
            or (record.revoked and not known.revoked))


def to_json(fields: Mapping[str, str]) -> str:
    """An entry's fields as the JSON object its hash keeps."""
    return json.dumps(fields, separators=(",", ":"), sort_keys=True)


def from_json(value: Any) -> Mapping[Any, Any]:
    """A hash value back to fields (a value that is not a JSON object is malformed)."""
    try:
        fields = json.loads(value)
    except (ValueError, TypeError):
        fields = None
    if not isinstance(fields, dict):
        raise Malformed("bad_value", "not a JSON object", None)
    return fields
