"""Short-lived sign-in tokens: JWTs signed with an Ed25519 key.

The private key is ``plugins.acl.token_key_file`` (PKCS#8 PEM, mode 0600), or by
default ``state_dir/acl-token-key.pem``, created on first use, atomically (several
gateway processes may share a state dir). A configured file is never created: it is
the key several gateway nodes share (cluster), made once by the deployer. Every
process that reads the same file accepts the same signatures; replacing the file and
restarting invalidates every token issued so far.

The claims ``adm`` and ``tags`` say what the login granted when it was made (for
clients); the gateway itself decides from the token's record, with the current
group mapping (see :mod:`.runtime`).

Only ``EdDSA`` is accepted (never the token's own ``alg`` choice), with issuer,
audience, expiry, issue time and id (``jti``) required. A token is never logged;
its id is (it names the token in ``sessiongate tokens list`` and ``revoke``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import pathlib
import re
import secrets
import time
from collections.abc import Iterable
from typing import Any

import jwt
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from sessiongate.core import ADMIN_SCOPE, Identity
from sessiongate.core.errors import Unauthenticated

__all__ = ["ISSUER", "KEY_FILE", "SUBJECT_PREFIX", "TOKEN_ID", "TOKEN_KIND", "MintedToken",
           "TokenIdentity", "TokenSigner", "is_ours", "is_signing_key", "key_path",
           "looks_like_jwt"]

log = logging.getLogger("sessiongate.plugins.acl")

KEY_FILE = "acl-token-key.pem"
ISSUER = "sessiongate"
AUDIENCE = "sessiongate"
ALGORITHM = "EdDSA"
TOKEN_KIND = "token"
#: subjects of LDAP logins; never collides with an API key id (hex)
SUBJECT_PREFIX = "ldap:"
#: a token's id (``jti``): 16 hex digits
TOKEN_ID = re.compile(r"[0-9a-f]{16}")


@dataclasses.dataclass(frozen=True)
class TokenIdentity(Identity):
    """The identity a sign-in token carries, with the token's id (to check revocation)."""

    token_id: str = ""


@dataclasses.dataclass(frozen=True)
class MintedToken:
    """A new token and what is recorded about it (everything but the token itself)."""

    token: str = dataclasses.field(repr=False)  # a secret: never in a repr or a log
    token_id: str
    username: str
    admin: bool
    tags: tuple[str, ...]
    issued_at: float
    expires_at: float


def looks_like_jwt(credential: str) -> bool:
    """Three dot-separated parts (API keys, ``sg_<id>_<secret>``, have no dot)."""
    return credential.count(".") == 2


def is_ours(credential: str) -> bool:
    """A JWT that names this product as issuer (read unverified: only to route it).

    Another plugin's tokens (another issuer) and anything that is not a JWT are
    left to others; every token that claims to be ours is verified in full.
    """
    if not looks_like_jwt(credential):
        return False
    try:
        claims = jwt.decode(credential, options={"verify_signature": False})
    except jwt.PyJWTError:
        return True  # mangled: ours to refuse, with a clear message
    return claims.get("iss") == ISSUER


def key_path(configured: str, state_dir: pathlib.Path) -> pathlib.Path:
    """The signing key's file: ``plugins.acl.token_key_file``, else the state dir's."""
    return pathlib.Path(configured) if configured else state_dir / KEY_FILE


def _private_key(data: bytes) -> Ed25519PrivateKey | None:
    """The Ed25519 private key a PEM holds, or None (not PEM, encrypted, another kind)."""
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return None
    return key if isinstance(key, Ed25519PrivateKey) else None


def is_signing_key(path: Any) -> bool:
    """Is ``path`` a readable file holding an unencrypted Ed25519 private key in PEM?
    (The settings rule of ``plugins.acl.token_key_file``; never says what it holds.)"""
    try:
        data = pathlib.Path(path).read_bytes()
    except (OSError, TypeError, ValueError):
        return False
    return _private_key(data) is not None


def _load_or_create(path: pathlib.Path, *, create: bool = True) -> Ed25519PrivateKey:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        if not create:
            raise
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(pem)
                fh.flush()
                os.fsync(fh.fileno())
            try:
                os.link(tmp, path)  # atomic; loses to a concurrent creator, then reads theirs
                log.info("created the token signing key %s", path)
            except FileExistsError:
                pass
        finally:
            os.unlink(tmp)
        data = path.read_bytes()
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        log.warning("token signing key %s was readable by others (mode %o); set to 0600",
                    path, mode)
        os.chmod(path, 0o600)
    key = _private_key(data)
    if key is None:
        raise ValueError(f"{path} does not hold an unencrypted Ed25519 private key (PEM)")
    return key


class TokenSigner:
    """Mints and verifies tokens with one Ed25519 key."""

    def __init__(self, key: Ed25519PrivateKey, ttl_seconds: float) -> None:
        self._key = key
        self._public = key.public_key()
        raw = self._public.public_bytes(serialization.Encoding.Raw,
                                        serialization.PublicFormat.Raw)
        #: names the key in the token header (a fingerprint, not a secret)
        self.kid = hashlib.sha256(raw).hexdigest()[:16]
        self.ttl = float(ttl_seconds)

    @classmethod
    def from_file(cls, configured: str, state_dir: pathlib.Path,
                  ttl_seconds: float) -> TokenSigner:
        """The key of ``plugins.acl.token_key_file`` (never created), else the state
        dir's (created on first use). Blocking file I/O: call it in a thread."""
        path = key_path(configured, state_dir)
        return cls(_load_or_create(path, create=not configured), ttl_seconds)

    def mint(self, username: str, *, admin: bool, tags: Iterable[str],
             now: float | None = None, ttl: float | None = None) -> MintedToken:
        """A token for ``username`` (times in whole epoch seconds, as in the claims)."""
        issued = int(time.time() if now is None else now)
        expires = int(issued + (self.ttl if ttl is None else ttl))
        token_id = secrets.token_hex(8)
        granted = tuple(sorted(set(tags)))
        claims: dict[str, Any] = {
            "iss": ISSUER, "aud": AUDIENCE,
            "sub": SUBJECT_PREFIX + username,
            "name": username,
            "adm": bool(admin),
            "tags": list(granted),
            "iat": issued, "exp": expires,
            "jti": token_id,
        }
        token = jwt.encode(claims, self._key, algorithm=ALGORITHM, headers={"kid": self.kid})
        return MintedToken(token=token, token_id=token_id, username=username,
                           admin=bool(admin), tags=granted, issued_at=float(issued),
                           expires_at=float(expires))

    def verify(self, token: str) -> TokenIdentity:
        """The identity a token carries; ``Unauthenticated`` when it is not valid now."""
        try:
            claims = jwt.decode(
                token, self._public, algorithms=[ALGORITHM], audience=AUDIENCE,
                issuer=ISSUER, options={"require": ["exp", "iat", "sub", "iss", "aud", "jti"]})
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("the sign-in token has expired; log in again") from None
        except jwt.PyJWTError:
            raise Unauthenticated("the sign-in token is not valid (tampered, or not "
                                  "issued by this gateway)") from None
        sub, tags, admin = claims.get("sub"), claims.get("tags", []), claims.get("adm", False)
        token_id = claims.get("jti")
        if (not isinstance(sub, str) or not sub.startswith(SUBJECT_PREFIX)
                or not isinstance(token_id, str) or not TOKEN_ID.fullmatch(token_id)
                or not isinstance(tags, list) or not all(isinstance(t, str) for t in tags)
                or not isinstance(admin, bool)):
            raise Unauthenticated("the sign-in token is not valid (unexpected claims)")
        return TokenIdentity(key_id=sub, name=str(claims.get("name") or sub),
                             scopes=frozenset({ADMIN_SCOPE}) if admin else frozenset(),
                             tags=frozenset(tags), kind=TOKEN_KIND,
                             expires_at=float(claims["exp"]), token_id=token_id)
