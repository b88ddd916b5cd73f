"""TLS and mutual TLS on the gRPC API (CONTRACT §8.3): ``server.tls.*``,
``server.allow_insecure``, the Python client's and the CLI's ``--ca-file``,
``--cert-file``, ``--key-file``.

Certificates are made here, per module, with ``cryptography``: a CA, a server
certificate for 127.0.0.1 and localhost, a client certificate, and an unrelated CA with
its own client certificate. Real gateways, real gRPC on 127.0.0.1.
"""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import os
import pathlib
import subprocess
import sys
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from sessiongate.client import TlsFileError, connect, tls_credentials
from sessiongate.core.config.settings import SettingsError, load_settings
from sessiongate.core.config.tls import client_tls, server_tls
from sessiongate.core.errors import StartupError
from sessiongate.testing import GRPC_LISTENING, open_streaming, rpc_error, write_config
from sessiongate.v1 import gateway_pb2

pytestmark = pytest.mark.once  # core: the plugin set changes nothing here

CLIENT_ENV = ("SESSIONGATE_CLIENT_KEY", "SESSIONGATE_CLIENT_SERVER", "SESSIONGATE_CLIENT_CA_FILE",
              "SESSIONGATE_CLIENT_CERT_FILE", "SESSIONGATE_CLIENT_KEY_FILE")
NOW = datetime.datetime.now(datetime.UTC)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_key(path: pathlib.Path, key: Any) -> pathlib.Path:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.chmod(0o600)
    return path


def _write_certificate(path: pathlib.Path, certificate: x509.Certificate) -> pathlib.Path:
    path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return path


@dataclasses.dataclass
class Authority:
    """A CA that issues certificates into a folder: ``issue`` → (cert path, key path)."""

    name: str
    folder: pathlib.Path

    def __post_init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        certificate = (self._builder(_name(self.name), self.key.public_key())
                       .add_extension(x509.BasicConstraints(ca=True, path_length=None),
                                      critical=True)
                       .add_extension(x509.KeyUsage(
                           digital_signature=True, content_commitment=False,
                           key_encipherment=False, data_encipherment=False,
                           key_agreement=False, key_cert_sign=True, crl_sign=True,
                           encipher_only=False, decipher_only=False), critical=True)
                       .add_extension(x509.SubjectKeyIdentifier.from_public_key(
                           self.key.public_key()), critical=False)
                       .sign(self.key, hashes.SHA256()))
        self.cert_file = _write_certificate(self.folder / f"{self.name}.pem", certificate)

    def _builder(self, subject: x509.Name, public_key: Any,
                 not_after: datetime.datetime | None = None) -> x509.CertificateBuilder:
        return (x509.CertificateBuilder().subject_name(subject).issuer_name(_name(self.name))
                .public_key(public_key).serial_number(x509.random_serial_number())
                .not_valid_before(NOW - datetime.timedelta(days=2))
                .not_valid_after(not_after or NOW + datetime.timedelta(days=1)))

    def issue(self, name: str, *, server: bool,
              not_after: datetime.datetime | None = None) -> tuple[pathlib.Path, pathlib.Path]:
        key = ec.generate_private_key(ec.SECP256R1())
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = (self._builder(_name(name), key.public_key(), not_after)
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None),
                                  critical=True)
                   .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
                   # Python 3.13's strict X.509 checks want both key identifiers
                   .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                                  critical=False)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                       self.key.public_key()), critical=False))
        if server:
            builder = builder.add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
        certificate = builder.sign(self.key, hashes.SHA256())
        return (_write_certificate(self.folder / f"{name}.pem", certificate),
                _write_key(self.folder / f"{name}.key", key))


@dataclasses.dataclass
class Pki:
    ca: pathlib.Path
    server_cert: pathlib.Path
    server_key: pathlib.Path
    client_cert: pathlib.Path
    client_key: pathlib.Path
    other_ca: pathlib.Path
    other_client_cert: pathlib.Path
    other_client_key: pathlib.Path
    authority: Authority

    def tls(self, mutual: bool = False) -> dict[str, str]:
        """Gateway settings serving TLS with the server certificate (and mTLS)."""
        values = {"server.tls.cert_file": str(self.server_cert),
                  "server.tls.key_file": str(self.server_key)}
        if mutual:
            values["server.tls.client_ca_file"] = str(self.ca)
        return values


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    ca, other = Authority("test-ca", folder), Authority("other-ca", folder)
    server_cert, server_key = ca.issue("server", server=True)
    client_cert, client_key = ca.issue("client", server=False)
    other_cert, other_key = other.issue("other-client", server=False)
    return Pki(ca.cert_file, server_cert, server_key, client_cert, client_key,
               other.cert_file, other_cert, other_key, ca)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No SESSIONGATE_* variable from the caller but the plugin switches (tox matrix)."""
    for name in list(os.environ):
        if name.startswith("SESSIONGATE_") and not name.startswith("SESSIONGATE_PLUGINS__"):
            monkeypatch.delenv(name)
    return monkeypatch


def _cli(*args: str, cwd: pathlib.Path, env: dict[str, str] | None = None,
         ) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in CLIENT_ENV}
    return subprocess.run([sys.executable, "-m", "sessiongate", *args], cwd=cwd,
                          env={**base, **(env or {})}, capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL)


def _problems(tmp_path: pathlib.Path, values: dict[str, Any]) -> list[str]:
    """The settings problems of ``values`` (a user file), [] when they are valid."""
    try:
        load_settings(write_config(tmp_path / "s.toml", values))
    except SettingsError as exc:
        return exc.problems
    return []


# -- settings ------------------------------------------------------------------------------


@pytest.mark.parametrize("address", ["0.0.0.0:50551", "[::]:50551", "192.0.2.7:50551",
                                     "gateway.example.org:50551", "localhost.example:1"])
def test_plaintext_on_a_non_loopback_address_is_refused_naming_the_fix(
        clean_env, tmp_path, address):
    problems = _problems(tmp_path, {"server.grpc_address": address})
    assert problems == [
        f"server.grpc_address = {address!r}: must be a loopback address (localhost, "
        "127.0.0.0/8 or [::1]) while server.tls.cert_file is empty: set "
        "server.tls.cert_file and server.tls.key_file to serve TLS, or "
        "server.allow_insecure = true to serve plaintext gRPC on it"]
    assert _problems(tmp_path, {"server.grpc_address": address,
                                "server.allow_insecure": True}) == []


@pytest.mark.parametrize("address", ["127.0.0.1:0", "127.8.9.10:1", "localhost:50551",
                                     "LocalHost:50551", "[::1]:50551"])
def test_plaintext_on_loopback_needs_nothing(clean_env, tmp_path, address):
    assert _problems(tmp_path, {"server.grpc_address": address}) == []


def test_tls_on_any_address_needs_no_allow_insecure(clean_env, tmp_path, pki):
    # the files are read when the server binds, not by validation (a client reading the
    # gateway's settings may not be allowed to read its key)
    values = {"server.grpc_address": "0.0.0.0:50551",
              "server.tls.cert_file": "/nowhere/cert.pem",
              "server.tls.key_file": "/nowhere/key.pem"}
    assert _problems(tmp_path, values) == []


def test_tls_settings_that_do_not_fit_together_are_listed_with_the_others(clean_env, tmp_path):
    problems = _problems(tmp_path, {"server.tls.cert_file": "cert.pem",
                                    "sessions.max_sessions": 0})
    assert "server.tls.key_file = '': must be set when server.tls.cert_file is set (the two " \
        "go together)" in problems
    assert any(p.startswith("sessions.max_sessions = 0") for p in problems)
    assert _problems(tmp_path, {"server.tls.key_file": "key.pem"}) == [
        "server.tls.cert_file = '': must be set when server.tls.key_file is set (the two go "
        "together)"]
    assert _problems(tmp_path, {"server.tls.client_ca_file": "ca.pem"}) == [
        "server.tls.client_ca_file = 'ca.pem': must be empty when server.tls.cert_file is "
        "empty (mutual TLS needs TLS)"]
    assert _problems(tmp_path, {"server.allow_insecure": "yes"}) == [
        "server.allow_insecure = 'yes': must be true or false"]


def test_check_config_refuses_a_public_plaintext_address_exit_2(tmp_path):
    result = _cli("check-config", cwd=tmp_path,
                  env={"SESSIONGATE_SERVER__GRPC_ADDRESS": "0.0.0.0:50551"})
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stdout == "" and "Traceback" not in result.stderr
    line = next(p for p in result.stderr.splitlines() if "server.grpc_address" in p)
    assert "server.allow_insecure = true" in line and "server.tls.cert_file" in line
    result = _cli("check-config", cwd=tmp_path,
                  env={"SESSIONGATE_SERVER__GRPC_ADDRESS": "0.0.0.0:50551",
                       "SESSIONGATE_SERVER__ALLOW_INSECURE": "true"})
    assert result.returncode == 0, result.stderr
    assert "server.allow_insecure = true" in result.stdout.splitlines()


# -- the gateway's files ---------------------------------------------------------------------


def _server_tls(tmp_path: pathlib.Path, **values: str) -> Any:
    return server_tls(load_settings(write_config(tmp_path / "s.toml", values)))


def test_server_files_are_checked_at_start_naming_the_setting(clean_env, tmp_path, pki):
    cert, key = str(pki.server_cert), str(pki.server_key)
    assert _server_tls(tmp_path) is None  # no TLS
    tls = _server_tls(tmp_path, **{"server.tls.cert_file": cert, "server.tls.key_file": key})
    assert tls.mode == "TLS" and tls.client_ca is None and tls.warnings == ()
    assert "PRIVATE" not in repr(tls)
    tls = _server_tls(tmp_path, **pki.tls(mutual=True))
    assert tls.mode == "mTLS" and tls.client_ca == pki.ca.read_bytes()

    def refused(**values: str) -> str:
        with pytest.raises(TlsFileError) as info:
            _server_tls(tmp_path, **{"server.tls.cert_file": cert, "server.tls.key_file": key,
                                     **values})
        assert "\n" not in str(info.value)
        return str(info.value)

    missing = str(tmp_path / "missing.pem")
    assert refused(**{"server.tls.cert_file": missing}) == \
        f"server.tls.cert_file = {missing!r}: no such file"
    assert refused(**{"server.tls.key_file": str(tmp_path)}) == \
        f"server.tls.key_file = {str(tmp_path)!r}: is a folder, not a file"
    assert refused(**{"server.tls.cert_file": key}).startswith(
        f"server.tls.cert_file = {key!r}: not a PEM certificate file")
    assert refused(**{"server.tls.key_file": cert}) == \
        f"server.tls.key_file = {cert!r}: not a PEM private key"
    assert refused(**{"server.tls.key_file": str(pki.client_key)}).startswith(
        f"server.tls.key_file = {str(pki.client_key)!r}: not the key of the certificate in "
        f"server.tls.cert_file = {cert!r}")
    assert refused(**{"server.tls.client_ca_file": key}).startswith(
        f"server.tls.client_ca_file = {key!r}: not a PEM certificate file")
    encrypted = tmp_path / "encrypted.key"
    private = serialization.load_pem_private_key(pki.server_key.read_bytes(), password=None)
    encrypted.write_bytes(private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"passphrase")))
    assert "the key is encrypted" in refused(**{"server.tls.key_file": str(encrypted)})
    if os.geteuid() != 0:  # root reads anything
        unreadable = tmp_path / "unreadable.key"
        unreadable.write_bytes(pki.server_key.read_bytes())
        unreadable.chmod(0)
        assert refused(**{"server.tls.key_file": str(unreadable)}) == \
            f"server.tls.key_file = {str(unreadable)!r}: this user may not read it " \
            "(permission denied)"


def test_a_key_others_may_read_and_an_expired_certificate_are_warned_about(
        clean_env, tmp_path, pki):
    shared = tmp_path / "shared.key"
    shared.write_bytes(pki.server_key.read_bytes())
    shared.chmod(0o644)
    tls = _server_tls(tmp_path, **{"server.tls.cert_file": str(pki.server_cert),
                                   "server.tls.key_file": str(shared)})
    assert tls.warnings == (f"server.tls.key_file = {str(shared)!r} may be read by other "
                            "users (mode 0644): chmod 600 it",)
    cert, key = pki.authority.issue("expired", server=True,
                                    not_after=NOW - datetime.timedelta(days=1))
    tls = _server_tls(tmp_path, **{"server.tls.cert_file": str(cert),
                                   "server.tls.key_file": str(key)})
    assert len(tls.warnings) == 1 and "the certificate expired on" in tls.warnings[0]


def test_serve_with_a_missing_certificate_exits_2_in_one_line(tmp_path, short_tmp, pki):
    missing = tmp_path / "missing.pem"
    config = write_config(tmp_path / "s.toml", {
        "state_dir": str(tmp_path / "state"), "runtime_dir": str(short_tmp / "run"),
        "server.grpc_address": "127.0.0.1:0", "server.tls.cert_file": str(missing),
        "server.tls.key_file": str(pki.server_key)})
    result = _cli("serve", "--config", str(config), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [
        f"sessiongate: server.tls.cert_file = {str(missing)!r}: no such file"]
    assert result.stdout == ""  # no bootstrap key: nothing was started


# -- serving TLS, the Python client ------------------------------------------------------------


@pytest.mark.asyncio
async def test_tls_open_invoke_stream(make_gateway, pki):
    gw = await make_gateway(**pki.tls())
    assert gw.server.tls_mode == "TLS"
    async with connect(gw.address, gw.admin_key, ca_file=str(pki.ca)) as client:
        sid, call = await open_streaming(client, client_name="tls")
        assert await client.invoke_json(sid, "echo", {"over": "tls"}) == {"over": "tls"}
        assert await client.invoke_json(sid, "burst", {"count": 50, "size": 10}) == \
            {"emitted": 50}
        seen: list[int] = []
        while len(seen) < 50:
            seen += [e.sequence for e in (await call.read()).events]
        assert seen == list(range(1, 51))
        assert (await client.close(sid)).state == gateway_pb2.CLOSED
        call.cancel()
    # root certificates held in memory do as well as a file
    credentials = grpc.ssl_channel_credentials(pki.ca.read_bytes())
    async with connect(gw.address, gw.admin_key, credentials=credentials) as client:
        assert (await client.open(client_name="in-memory")).state == gateway_pb2.READY


@pytest.mark.asyncio
async def test_tls_clients_that_cannot_verify_or_do_not_speak_tls_fail_cleanly(
        make_gateway, pki):
    gw = await make_gateway(**pki.tls())
    for options in ({"ca_file": str(pki.other_ca)},  # the wrong CA
                    {"credentials": grpc.ssl_channel_credentials()}):  # the system's CAs
        async with connect(gw.address, gw.admin_key, **options) as client:
            error = await rpc_error(client.open(client_name="refused"))
            assert error.code() == grpc.StatusCode.UNAVAILABLE
            assert "CERTIFICATE_VERIFY_FAILED" in error.details()
    async with connect(gw.address, gw.admin_key) as plaintext:
        error = await rpc_error(plaintext.open(client_name="plaintext"))
        assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert not gw.gateway.sessions.live


@pytest.mark.asyncio
async def test_mutual_tls_refuses_a_client_without_a_certificate_of_its_ca(make_gateway, pki):
    gw = await make_gateway(**pki.tls(mutual=True))
    assert gw.server.tls_mode == "mTLS"
    refused = [{"ca_file": str(pki.ca)},
               {"ca_file": str(pki.ca), "cert_file": str(pki.other_client_cert),
                "key_file": str(pki.other_client_key)}]
    for options in refused:
        async with connect(gw.address, gw.admin_key, **options) as client:
            error = await rpc_error(client.open(client_name="no-certificate"))
            assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert not gw.gateway.sessions.live
    async with connect(gw.address, gw.admin_key, ca_file=str(pki.ca),
                       cert_file=str(pki.client_cert), key_file=str(pki.client_key)) as client:
        sid = (await client.open(client_name="mtls")).session_id
        assert await client.invoke_json(sid, "echo", [1, 2]) == [1, 2]


@pytest.mark.asyncio
async def test_a_gateway_that_cannot_read_its_certificate_does_not_listen(
        make_gateway, tmp_path, pki):
    with pytest.raises(StartupError) as info:
        await make_gateway(**{"server.tls.cert_file": str(tmp_path / "gone.pem"),
                              "server.tls.key_file": str(pki.server_key)})
    assert info.value.message.startswith("server.tls.cert_file = ")


def test_client_files_are_checked_before_connecting(tmp_path, pki):
    assert client_tls() is None and tls_credentials() is None
    tls = client_tls(str(pki.ca), str(pki.client_cert), str(pki.client_key))
    assert tls is not None and tls.root_certificates == pki.ca.read_bytes()
    assert "PRIVATE" not in repr(tls)
    only_certificate = client_tls(cert_file=str(pki.client_cert), key_file=str(pki.client_key))
    assert only_certificate is not None and only_certificate.root_certificates is None
    with pytest.raises(TlsFileError, match=r"^--cert-file and --key-file go together"):
        tls_credentials(str(pki.ca), str(pki.client_cert), None,
                        names=("--ca-file", "--cert-file", "--key-file"))
    missing = str(tmp_path / "nope.pem")
    with pytest.raises(TlsFileError) as info:
        tls_credentials(missing)
    assert str(info.value) == f"ca_file = {missing!r}: no such file"
    with pytest.raises(TlsFileError, match="not the key of the certificate"):
        tls_credentials(cert_file=str(pki.client_cert), key_file=str(pki.server_key))


# -- the CLI against a gateway process ---------------------------------------------------------


def test_cli_over_tls_and_mutual_tls(gateway_process, tmp_path, pki):
    gateway = gateway_process(**pki.tls())
    assert f"listening on {gateway.address} (TLS)" in gateway.log
    target = ("--config", str(gateway.config), "--server", gateway.address)

    opened = _cli("open", *target, "--ca-file", str(pki.ca), cwd=tmp_path)
    assert opened.returncode == 0, opened.stderr
    sid = opened.stdout.strip()
    # the environment variable does as well as the option
    invoked = _cli("invoke", *target, sid, "echo", '{"n": 1}', cwd=tmp_path,
                   env={"SESSIONGATE_CLIENT_CA_FILE": str(pki.ca)})
    assert invoked.returncode == 0, invoked.stderr
    assert invoked.stdout == '{"n": 1}\n'

    wrong = _cli("get", *target, sid, "--ca-file", str(pki.other_ca), cwd=tmp_path)
    assert wrong.returncode == 1 and wrong.stdout == ""
    line = wrong.stderr.splitlines()[-1]  # grpc's own log may print lines before ours
    assert line.startswith(f"sessiongate: TLS handshake with {gateway.address} failed: the "
                           "gateway's certificate is not signed by a CA in --ca-file (the "
                           "wrong CA file?)"), wrong.stderr
    plaintext = _cli("get", *target, sid, cwd=tmp_path)
    assert plaintext.returncode == 1
    assert plaintext.stderr.splitlines()[-1].startswith(
        f"sessiongate: the gateway at {gateway.address} closed the connection: it may serve "
        "TLS only; pass --ca-file"), plaintext.stderr

    missing = str(tmp_path / "missing-ca.pem")
    result = _cli("get", *target, sid, "--ca-file", missing, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr == f"sessiongate: --ca-file = {missing!r}: no such file\n"
    result = _cli("get", *target, sid, "--ca-file", str(pki.ca), cwd=tmp_path,
                  env={"SESSIONGATE_CLIENT_CERT_FILE": str(pki.client_cert)})
    assert result.returncode == 2
    assert result.stderr == ("sessiongate: SESSIONGATE_CLIENT_CERT_FILE and --key-file go "
                             "together (the client certificate and its key): give both or "
                             "neither\n")


def test_cli_against_mutual_tls_and_a_plaintext_gateway(gateway_process, tmp_path, short_tmp,
                                                         pki):
    mutual = gateway_process(**pki.tls(mutual=True))
    assert f"listening on {mutual.address} (mTLS)" in mutual.log
    target = ("--config", str(mutual.config), "--server", mutual.address, "--ca-file",
              str(pki.ca))
    refused = _cli("open", *target, cwd=tmp_path)
    assert refused.returncode == 1
    assert refused.stderr.splitlines()[-1].startswith(
        f"sessiongate: the gateway at {mutual.address} closed the connection during the TLS "
        "handshake: it may want a client certificate (mutual TLS)"), refused.stderr
    opened = _cli("open", *target, "--cert-file", str(pki.client_cert), "--key-file",
                  str(pki.client_key), cwd=tmp_path)
    assert opened.returncode == 0, opened.stderr
    assert opened.stdout.strip()

    plain = gateway_process(**{"state_dir": str(tmp_path / "plain-state"),
                               "runtime_dir": str(short_tmp / "plain-run")})
    assert len(GRPC_LISTENING.findall(plain.log)) == 1 and "(TLS)" not in plain.log
    result = _cli("open", "--config", str(plain.config), "--server", plain.address,
                  "--ca-file", str(pki.ca), cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1].startswith(
        f"sessiongate: TLS handshake with {plain.address} failed: the gateway does not serve "
        "TLS"), result.stderr
