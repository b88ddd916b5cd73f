"""Signing secrets: made here, kept encrypted at rest, used to sign (Standard Webhooks v1).

A secret is ``whsec_`` and the base64 of 32 random bytes, made by the gateway and shown
once, when an endpoint is added or its secret rotated. The store keeps it encrypted
with AES-256-GCM under a key of its own, ``state_dir/webhooks.key`` (created 0600, 32
random bytes), the endpoint's id as associated data (a secret copied onto another row
does not decrypt).

Signing is ``standardwebhooks``' ``Webhook.sign`` (Standard Webhooks v1: the
HMAC-SHA256 of ``id.timestamp.body``), with a UTC timestamp: the library treats a naive
or other-zone datetime as UTC, so it would sign the wrong second. A :class:`Signer`
holds the library's signer of each secret, made once (it decodes the key when made).
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import os
import pathlib
import secrets
from collections.abc import Iterable

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from standardwebhooks.webhooks import Webhook

__all__ = ["KEY_FILE", "SECRET_PREFIX", "SecretBox", "Signer", "new_secret", "signature_header"]

KEY_FILE = "webhooks.key"
SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32
_NONCE_BYTES = 12


def new_secret() -> str:
    """A new signing secret (``whsec_…``)."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


class Signer:
    """Signs with a set of secrets (the current one, and the previous one during a
    rotation's grace period), the library's signer of each made once. Holds the
    secrets (never shown: no repr of them)."""

    __slots__ = ("_webhooks", "secrets")

    def __init__(self, secrets_: Iterable[str]) -> None:
        self.secrets = tuple(secrets_)
        self._webhooks = [Webhook(secret) for secret in self.secrets]

    def __repr__(self) -> str:
        return f"<Signer of {len(self.secrets)} secret(s)>"

    def header(self, msg_id: str, timestamp: int, body: bytes) -> str:
        """``webhook-signature`` of ``body`` sent as ``msg_id`` at ``timestamp`` (Unix
        seconds): ``v1,<base64>`` for each secret, space-separated (two while a
        rotation's grace period runs: a receiver with either secret verifies)."""
        when = datetime.datetime.fromtimestamp(timestamp, datetime.UTC)
        text = body.decode()
        return " ".join(webhook.sign(msg_id, when, text) for webhook in self._webhooks)


def signature_header(secrets_: Iterable[str], msg_id: str, body: bytes,
                     when: datetime.datetime) -> str:
    """``webhook-signature`` of ``body`` sent as ``msg_id`` at ``when`` (UTC)."""
    if when.tzinfo is not datetime.UTC:
        raise ValueError("sign with a UTC timestamp (datetime.now(datetime.UTC))")
    return Signer(secrets_).header(msg_id, int(when.timestamp()), body)


class SecretBox:
    """Encrypts secrets for the store with the key in ``state_dir/webhooks.key``."""

    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)

    @classmethod
    def open(cls, state_dir: pathlib.Path) -> SecretBox:
        """The key of ``state_dir``, created (0600, exclusively) if there is none."""
        path = state_dir / KEY_FILE
        with contextlib.suppress(FileExistsError):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.write(fd, AESGCM.generate_key(bit_length=256))
            finally:
                os.close(fd)
        key = path.read_bytes()
        if len(key) != 32:
            raise ValueError(f"{path} is not a webhooks key (32 bytes); move it away to "
                             "start anew (the endpoints' secrets are then lost)")
        os.chmod(path, 0o600)
        return cls(key)

    def seal(self, secret: str, endpoint_id: str) -> bytes:
        nonce = secrets.token_bytes(_NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, secret.encode(), endpoint_id.encode())

    def unseal(self, sealed: bytes, endpoint_id: str) -> str:
        nonce, ciphertext = sealed[:_NONCE_BYTES], sealed[_NONCE_BYTES:]
        return self._aead.decrypt(nonce, ciphertext, endpoint_id.encode()).decode()
