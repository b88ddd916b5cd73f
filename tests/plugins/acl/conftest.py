"""A real, throwaway OpenLDAP server (Debian's ``slapd``) for the acl plugin's tests.

``slapd`` is started once per test session on 127.0.0.1 with a free port, from a
``cn=config`` directory made with ``slapadd`` in a temp dir, loaded with a small
directory (people, groups with ``member``, a service account) through ldap3 as
the root DN, and stopped (SIGTERM, then waited for) at the end. Its ``cn=Monitor``
database (readable by the root DN) counts the requests it served:
:meth:`Slapd.requests` reads them.

Install it with ``apt-get install slapd ldap-utils`` (CI does). Without it the LDAP
tests are skipped locally and fail under CI (``CI`` set), so a CI without slapd
cannot look green.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import os
import pathlib
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

from sessiongate.testing import stop_server

SUFFIX = "dc=example,dc=org"
ROOT_DN = f"cn=admin,{SUFFIX}"
PEOPLE = f"ou=people,{SUFFIX}"
GROUPS = f"ou=groups,{SUFFIX}"
SERVICE_DN = f"cn=sessiongate,ou=services,{SUFFIX}"
ADMINS_DN = f"cn=gw-admins,{GROUPS}"
VIEWERS_DN = f"cn=line1-viewers,{GROUPS}"
UNMAPPED_DN = f"cn=unmapped,{GROUPS}"
MODULE_PATH = "/usr/lib/ldap"
SCHEMA_DIR = "/etc/ldap/schema"
START_TIMEOUT = 15.0

#: uid → (password, groups). The password is never one of the others'.
USERS = {
    "alice": ("alice-pw", [ADMINS_DN, VIEWERS_DN]),  # admin
    "victor": ("victor-pw", [VIEWERS_DN]),  # viewer of tag line-1
    "nora": ("nora-pw", [UNMAPPED_DN]),  # in a group no setting maps
}


@dataclasses.dataclass(frozen=True)
class Slapd:
    uri: str
    port: int
    root_dn: str
    root_pw: str
    service_dn: str
    service_pw: str
    ca_file: str
    process: subprocess.Popen[bytes]

    def settings(self, **extra: Any) -> dict[str, Any]:
        """make_gateway overrides for search-then-bind against this directory."""
        values: dict[str, Any] = {
            "plugins.acl.ldap.enabled": True,
            "plugins.acl.ldap.url": self.uri,
            "plugins.acl.ldap.timeout_seconds": 5,
            "plugins.acl.ldap.bind_dn": self.service_dn,
            "plugins.acl.ldap.bind_password": self.service_pw,
            "plugins.acl.ldap.user_search_base": PEOPLE,
            "plugins.acl.ldap.group_search_base": GROUPS,
            "plugins.acl.ldap.admin_groups": [ADMINS_DN],
            "plugins.acl.ldap.group_tags": {VIEWERS_DN: ["line-1"]},
        }
        values.update({f"plugins.acl.ldap.{k}": v for k, v in extra.items()})
        return values

    def requests(self) -> dict[str, int]:
        """Connections accepted and binds and searches begun so far, from cn=Monitor
        (blocking). Counters only go up; compare two readings. The reading itself adds
        one connection, one bind and one search."""
        from sessiongate.plugins.acl.directory import SUBTREE, Connection, Server

        conn = Connection(Server(self.uri, get_info="NO_INFO"), user=self.root_dn,
                          password=self.root_pw, auto_bind=True, raise_exceptions=True,
                          check_names=False)
        try:
            conn.search("cn=Monitor", "(|(monitorOpInitiated=*)(monitorCounter=*))",
                        search_scope=SUBTREE, attributes=["monitorOpInitiated",
                                                            "monitorCounter"])
            by_dn = {str(e["dn"]).lower(): e["raw_attributes"] for e in conn.response
                     if e.get("type") == "searchResEntry"}
        finally:
            conn.unbind()

        def count(dn: str, attribute: str) -> int:
            return int(by_dn[dn][attribute][0])

        return {"connections": count("cn=total,cn=connections,cn=monitor", "monitorCounter"),
                "binds": count("cn=bind,cn=operations,cn=monitor", "monitorOpInitiated"),
                "searches": count("cn=search,cn=operations,cn=monitor",
                                  "monitorOpInitiated")}


def _ssha(password: str) -> str:
    salt = os.urandom(8)
    digest = hashlib.sha1(password.encode() + salt).digest()
    return "{SSHA}" + base64.b64encode(digest + salt).decode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _port_answers(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
        return True
    return False


def _config_ldif(data: pathlib.Path, root_pw: str) -> str:
    hashed = _ssha(root_pw)
    return f"""\
dn: cn=config
objectClass: olcGlobal
cn: config
olcPidFile: {data}/slapd.pid
olcArgsFile: {data}/slapd.args
olcTLSCACertificateFile: {data}/ca.pem
olcTLSCertificateFile: {data}/server.pem
olcTLSCertificateKeyFile: {data}/server.key

dn: cn=module{{0}},cn=config
objectClass: olcModuleList
cn: module{{0}}
olcModulePath: {MODULE_PATH}
olcModuleLoad: back_mdb

dn: cn=schema,cn=config
objectClass: olcSchemaConfig
cn: schema

include: file://{SCHEMA_DIR}/core.ldif

include: file://{SCHEMA_DIR}/cosine.ldif

include: file://{SCHEMA_DIR}/inetorgperson.ldif

dn: olcDatabase={{-1}}frontend,cn=config
objectClass: olcDatabaseConfig
objectClass: olcFrontendConfig
olcDatabase: {{-1}}frontend

dn: olcDatabase={{0}}config,cn=config
objectClass: olcDatabaseConfig
olcDatabase: {{0}}config
olcRootDN: cn=admin,cn=config

dn: olcDatabase={{1}}mdb,cn=config
objectClass: olcDatabaseConfig
objectClass: olcMdbConfig
olcDatabase: {{1}}mdb
olcSuffix: {SUFFIX}
olcRootDN: {ROOT_DN}
olcRootPW: {hashed}
olcDbDirectory: {data}/db
olcDbMaxSize: 104857600
olcDbNoSync: TRUE
olcDbIndex: objectClass eq
olcDbIndex: uid,cn eq
olcDbIndex: member eq
olcAccess: {{0}}to attrs=userPassword by self write by anonymous auth by * none
olcAccess: {{1}}to * by * read

dn: olcDatabase={{2}}monitor,cn=config
objectClass: olcDatabaseConfig
olcDatabase: {{2}}monitor
olcAccess: {{0}}to * by dn.exact="{ROOT_DN}" read by * none
"""


def _write_certificates(data: pathlib.Path) -> None:
    """A throwaway CA and a server certificate for 127.0.0.1 (for StartTLS)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sessiongate test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                       key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, key_cert_sign=True,
                                       crl_sign=True, encipher_only=False,
                                       decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                         critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            # Python 3.13 verifies strictly (VERIFY_X509_STRICT): key identifiers needed
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca_key.public_key()), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    (data / "ca.pem").write_bytes(ca.public_bytes(pem))
    (data / "server.pem").write_bytes(cert.public_bytes(pem))
    (data / "server.key").write_bytes(key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))


def _entries(service_pw: str) -> list[tuple[str, list[str], dict[str, Any]]]:
    org = ("dcObject", "organization")
    unit = ("organizationalUnit",)
    out: list[tuple[str, list[str], dict[str, Any]]] = [
        (SUFFIX, list(org), {"dc": "example", "o": "Example"}),
        (PEOPLE, list(unit), {"ou": "people"}),
        (GROUPS, list(unit), {"ou": "groups"}),
        (f"ou=services,{SUFFIX}", list(unit), {"ou": "services"}),
        (SERVICE_DN, ["applicationProcess", "simpleSecurityObject"],
         {"cn": "sessiongate", "userPassword": _ssha(service_pw)}),
    ]
    for uid, (password, _groups) in USERS.items():
        out.append((f"uid={uid},{PEOPLE}", ["inetOrgPerson"],
                    {"uid": uid, "cn": uid.title(), "sn": "Example",
                     "userPassword": _ssha(password)}))
    members: dict[str, list[str]] = {ADMINS_DN: [], VIEWERS_DN: [], UNMAPPED_DN: []}
    for uid, (_password, groups) in USERS.items():
        for group in groups:
            members[group].append(f"uid={uid},{PEOPLE}")
    for dn, member in members.items():
        out.append((dn, ["groupOfNames"], {"cn": dn.split(",")[0][3:], "member": member}))
    return out


def _load(uri: str, root_pw: str, service_pw: str) -> None:
    # the plugin imports ldap3 with its (harmless) pyasn1 deprecation warnings silenced
    from sessiongate.plugins.acl.directory import Connection, Server

    conn = Connection(Server(uri), user=ROOT_DN, password=root_pw, auto_bind=True,
                      raise_exceptions=True)
    try:
        for dn, classes, attrs in _entries(service_pw):
            conn.add(dn, classes, attrs)
    finally:
        conn.unbind()


def _wait_ready(proc: subprocess.Popen[bytes], port: int, log: pathlib.Path) -> None:
    """slapd has no readiness signal: poll its port (while checking it is alive)."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"slapd exited ({proc.returncode}):\n{log.read_text()}")
        if _port_answers(port):
            return
        time.sleep(0.05)
    raise RuntimeError(f"slapd not ready after {START_TIMEOUT} s:\n{log.read_text()}")


def _binary(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin")


@pytest.fixture(scope="session")
def slapd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Slapd]:
    """A running slapd with the test directory; stopped after the session."""
    slapd_bin, slapadd_bin = _binary("slapd"), _binary("slapadd")
    if not slapd_bin or not slapadd_bin or not os.path.isdir(SCHEMA_DIR):
        message = ("slapd is not installed: apt-get install -y --no-install-recommends "
                   "slapd ldap-utils")
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    data = tmp_path_factory.mktemp("slapd")
    (data / "slapd.d").mkdir()
    (data / "db").mkdir()
    root_pw, service_pw = "root-secret", "service-secret"
    _write_certificates(data)
    config = data / "config.ldif"
    config.write_text(_config_ldif(data, root_pw))
    made = subprocess.run([slapadd_bin, "-n", "0", "-F", str(data / "slapd.d"), "-l",
                           str(config)], capture_output=True, text=True, check=False)
    if made.returncode != 0:
        raise RuntimeError(f"slapadd failed:\n{made.stdout}{made.stderr}")
    port = free_port()
    uri = f"ldap://127.0.0.1:{port}"
    log = data / "slapd.log"
    with open(log, "wb") as out:
        # -d keeps it in the foreground (our child: we reap it); "none" still logs errors
        proc = subprocess.Popen([slapd_bin, "-h", f"{uri}/", "-F", str(data / "slapd.d"),
                                 "-d", "none"], stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env={**os.environ, "LDAPNOINIT": "1"})
    try:
        _wait_ready(proc, port, log)
        _load(uri, root_pw, service_pw)
        yield Slapd(uri=uri, port=port, root_dn=ROOT_DN, root_pw=root_pw,
                    service_dn=SERVICE_DN, service_pw=service_pw,
                    ca_file=str(data / "ca.pem"), process=proc)
    finally:
        stop_server(proc)
