"""TLS files (PEM) named by settings or command-line options, read and checked up front.

A wrong path, an unreadable file, a file that is not what it should be, or a key that
does not belong to its certificate is one line naming where the path was given and
why, before anything listens or connects, instead of an OpenSSL error at the first
handshake. Messages and logs name paths only, never what a file holds.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import pathlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cryptography import x509

__all__ = ["ClientTls", "ServerTls", "TlsFileError", "client_tls", "server_tls"]


class TlsFileError(ValueError):
    """A TLS file cannot be used: one line naming where it was given, the path and why."""


def _read(path: str, source: str) -> bytes:
    where = f"{source} = {path!r}"
    try:
        return pathlib.Path(path).read_bytes()
    except FileNotFoundError:
        raise TlsFileError(f"{where}: no such file") from None
    except IsADirectoryError:
        raise TlsFileError(f"{where}: is a folder, not a file") from None
    except PermissionError:
        raise TlsFileError(f"{where}: this user may not read it (permission denied)") from None
    except OSError as exc:
        raise TlsFileError(f"{where}: cannot be read ({exc.strerror or exc})") from None


# cryptography is imported when a file is read: a plaintext client never loads it


def _certificates(path: str, source: str) -> tuple[bytes, list[x509.Certificate]]:
    from cryptography import x509

    data = _read(path, source)
    try:
        return data, x509.load_pem_x509_certificates(data)
    except ValueError:
        raise TlsFileError(f"{source} = {path!r}: not a PEM certificate file (it must hold "
                           "'-----BEGIN CERTIFICATE-----' blocks)") from None


def _private_key(path: str, source: str) -> tuple[bytes, Any]:
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization

    data = _read(path, source)
    try:
        return data, serialization.load_pem_private_key(data, password=None)
    except TypeError:  # cryptography's word for "encrypted, and no password given"
        raise TlsFileError(f"{source} = {path!r}: the key is encrypted; gRPC needs it "
                           "unencrypted (openssl pkey -in KEY -out PLAIN_KEY)") from None
    except (ValueError, UnsupportedAlgorithm):
        raise TlsFileError(f"{source} = {path!r}: not a PEM private key") from None


def _public(key: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.public_bytes(serialization.Encoding.DER,
                            serialization.PublicFormat.SubjectPublicKeyInfo)


def _pair(cert_path: str, cert_source: str, key_path: str,
          key_source: str) -> tuple[bytes, bytes, x509.Certificate]:
    """A certificate chain and its key, checked to belong together."""
    chain, certificates = _certificates(cert_path, cert_source)
    key, private = _private_key(key_path, key_source)
    if _public(certificates[0].public_key()) != _public(private.public_key()):
        raise TlsFileError(f"{key_source} = {key_path!r}: not the key of the certificate in "
                           f"{cert_source} = {cert_path!r} (a key and a certificate of "
                           "different pairs)")
    return chain, key, certificates[0]


@dataclasses.dataclass(frozen=True)
class ServerTls:
    """What the gateway serves TLS with (``client_ca`` set: mutual TLS)."""

    certificate_chain: bytes
    private_key: bytes = dataclasses.field(repr=False)
    client_ca: bytes | None
    #: one line each, to log: nothing stops the gateway, but a deployer should know
    warnings: tuple[str, ...] = ()

    @property
    def mode(self) -> str:
        return "mTLS" if self.client_ca is not None else "TLS"


def server_tls(settings: Any) -> ServerTls | None:
    """The gateway's TLS files read and checked, or None without ``server.tls.cert_file``.

    :raises TlsFileError: a file is missing, unreadable, not PEM, or the key is not
        the certificate's.
    """
    cert_file = str(settings.get("server.tls.cert_file") or "")
    if not cert_file:
        return None
    key_file = str(settings.get("server.tls.key_file") or "")
    ca_file = str(settings.get("server.tls.client_ca_file") or "")
    chain, key, leaf = _pair(cert_file, "server.tls.cert_file", key_file,
                             "server.tls.key_file")
    client_ca = _certificates(ca_file, "server.tls.client_ca_file")[0] if ca_file else None
    warnings = []
    mode = os.stat(key_file).st_mode
    if mode & 0o044:
        warnings.append(f"server.tls.key_file = {key_file!r} may be read by other users "
                        f"(mode {mode & 0o777:04o}): chmod 600 it")
    if leaf.not_valid_after_utc < datetime.datetime.now(datetime.UTC):
        warnings.append(f"server.tls.cert_file = {cert_file!r}: the certificate expired on "
                        f"{leaf.not_valid_after_utc:%Y-%m-%d %H:%M} UTC; clients will "
                        "refuse it")
    return ServerTls(chain, key, client_ca, tuple(warnings))


@dataclasses.dataclass(frozen=True)
class ClientTls:
    """What a client connects over TLS with: the CAs it trusts (None: the system's) and
    its own certificate for mutual TLS (or None)."""

    root_certificates: bytes | None
    private_key: bytes | None = dataclasses.field(repr=False)
    certificate_chain: bytes | None


def client_tls(ca_file: str | None = None, cert_file: str | None = None,
               key_file: str | None = None, *,
               names: tuple[str, str, str] = ("ca_file", "cert_file", "key_file"),
               ) -> ClientTls | None:
    """A client's TLS files read and checked, or None when none is given (plaintext).

    :param names: how the caller calls the three (``--ca-file``...), for messages.
    :raises TlsFileError: a file is missing, unreadable or not PEM, the key is not the
        certificate's, or only one of certificate and key is given.
    """
    ca_name, cert_name, key_name = names
    if bool(cert_file) != bool(key_file):
        raise TlsFileError(f"{cert_name} and {key_name} go together (the client certificate "
                           "and its key): give both or neither")
    if not (ca_file or cert_file):
        return None
    roots = _certificates(ca_file, ca_name)[0] if ca_file else None
    chain = key = None
    if cert_file and key_file:
        chain, key, _leaf = _pair(cert_file, cert_name, key_file, key_name)
    return ClientTls(roots, key, chain)
