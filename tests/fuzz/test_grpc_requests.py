"""Fuzz of every field of every gRPC request, against a real gateway process.

One ``sessiongate serve`` per module (real workers, real gRPC on 127.0.0.1, debug log),
and one more with LDAP login against the test slapd for ``Login``. Each example sends
one request with arbitrary ids (unicode, NUL, line breaks, huge, empty, real ones),
payloads (random bytes, JSON and not, sizes around every limit), out-of-range enum
numbers, ``max_batch`` and ``after_sequence`` at their type's limits, bytes that are no
protobuf at all, or bearer credentials that are no key. Whatever comes:

* the status is one CONTRACT §2 documents for that RPC;
* its message shows no traceback, exception repr or source path;
* the gateway logged no traceback meanwhile, and still answers a normal call.

Hypothesis prints the seed and the shrunk request of any failure.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, currently_in_test_context, event, given, settings
from hypothesis import strategies as st

from sessiongate.core.rpc.server import GRPC_DEFAULT_MAX_RECEIVE, INVOKE_OVERHEAD
from sessiongate.core.workers.terminator import home_marker, leftover_workers
from sessiongate.testing import GatewayProcess, write_config
from sessiongate.v1 import gateway_pb2, gateway_pb2_grpc

from ..plugins.acl import conftest as acl_tests

slapd = acl_tests.slapd  # the test directory server (a session fixture), for Login
USERS = acl_tests.USERS

pytestmark = pytest.mark.once

C = grpc.StatusCode
MAX_FRAME = 256 << 10
#: the largest request the gateway takes in (gRPC's own limit, see GrpcServer)
MAX_REQUEST = max(GRPC_DEFAULT_MAX_RECEIVE, MAX_FRAME + INVOKE_OVERHEAD)
U32, U64 = 2**32 - 1, 2**64 - 1
CALL_TIMEOUT = 60  # seconds: a guard against a hang, never reached
SERVICE = "/sessiongate.v1.Gateway/"

#: examples per test: a CI-sized run; SG_FUZZ_EXAMPLES=N for a longer one (docs/fuzzing.md)
FUZZ = settings(max_examples=int(os.environ.get("SG_FUZZ_EXAMPLES", 40)), deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.large_base_example])

#: CONTRACT §2: the codes each RPC may end with (a request over the size limit ends
#: RESOURCE_EXHAUSTED, whatever the RPC). Any RPC refuses a malformed request.
LOOKUP = {C.NOT_FOUND, C.PERMISSION_DENIED, C.INVALID_ARGUMENT}
CODES = {
    "OpenSession": {C.OK, C.PERMISSION_DENIED, C.RESOURCE_EXHAUSTED, C.UNAVAILABLE,
                    C.INVALID_ARGUMENT},
    "CloseSession": {C.OK} | LOOKUP,
    "GetSession": {C.OK} | LOOKUP,
    "ListSessions": {C.OK, C.INVALID_ARGUMENT},
    "Invoke": {C.OK, C.FAILED_PRECONDITION, C.RESOURCE_EXHAUSTED, C.DEADLINE_EXCEEDED,
               C.UNAVAILABLE} | LOOKUP,
    "StreamEvents": {C.OK, C.ALREADY_EXISTS, C.RESOURCE_EXHAUSTED, C.FAILED_PRECONDITION,
                     C.OUT_OF_RANGE, C.UNAVAILABLE} | LOOKUP,
    "Login": {C.OK, C.UNAUTHENTICATED, C.RESOURCE_EXHAUSTED, C.UNAVAILABLE, C.UNIMPLEMENTED,
              C.INVALID_ARGUMENT},
}
REQUESTS = {name: getattr(gateway_pb2, method.input_type.name) for name, method in
            gateway_pb2.DESCRIPTOR.services_by_name["Gateway"].methods_by_name.items()}
#: what a status message must never show: a traceback, a source file, an exception's
#: repr (``ValueError(...)``, ``<class ...>``, ``<... object at 0x...>``)
LEAK = re.compile(r"Traceback|File \"|\w\.py\b|\b[A-Z]\w*(?:Error|Exception)\(|<class '"
                  r"|object at 0x")

# -- the gateways ------------------------------------------------------------------------


@dataclasses.dataclass
class Target:
    """A running gateway, a channel to it, and what the strategies name by a word."""

    proc: GatewayProcess
    channel: grpc.Channel
    keys: dict[str, str]  # "admin", "user": bearer keys
    sessions: dict[str, str] = dataclasses.field(default_factory=dict)  # "@live"... → id
    log_read: int = 0

    @property
    def stub(self) -> Any:
        return gateway_pb2_grpc.GatewayStub(self.channel)

    def metadata(self, who: str = "admin") -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.keys[who]}"),)

    def open(self, who: str = "admin") -> str:
        return self.stub.OpenSession(gateway_pb2.OpenSessionRequest(client_name="fuzz"),
                                     metadata=self.metadata(who),
                                     timeout=CALL_TIMEOUT).session_id

    def close(self, session_id: str) -> None:
        self.stub.CloseSession(gateway_pb2.CloseSessionRequest(session_id=session_id),
                               metadata=self.metadata(), timeout=CALL_TIMEOUT)

    def new_log(self) -> str:
        """What the gateway (and its workers, on the same stderr) logged since last asked."""
        with open(self.proc.log_path, "rb") as fh:
            fh.seek(self.log_read)
            data = fh.read()
        self.log_read += len(data)
        return data.decode(errors="replace")


@contextlib.contextmanager
def _gateway(folder: pathlib.Path, **overrides: Any) -> Iterator[Target]:
    """``sessiongate serve`` with a debug log, an admin key (the bootstrap key) and a
    key without scopes; stopped, and its workers with it, at the end."""
    runtime = pathlib.Path(tempfile.mkdtemp(prefix="sg-"))  # short: socket paths
    config = write_config(folder / "settings.toml", {
        "state_dir": str(folder / "state"), "runtime_dir": str(runtime),
        "server.grpc_address": "127.0.0.1:0", "server.http_address": "127.0.0.1:0",
        "log.level": "DEBUG",
        "workers.max_frame_bytes": MAX_FRAME, **overrides})
    proc = GatewayProcess(config, folder).start()
    try:
        user = subprocess.run(
            [sys.executable, "-m", "sessiongate", "keys", "create", "--name", "fuzz-user",
             "--config", str(config)], capture_output=True, text=True, check=True,
            timeout=CALL_TIMEOUT, stdin=subprocess.DEVNULL).stdout.strip()
        channel = grpc.insecure_channel(proc.address, options=[
            ("grpc.max_receive_message_length", 4 * MAX_REQUEST)])
        with channel:
            yield Target(proc, channel, {"admin": proc.stdout.strip(), "user": user})
    finally:
        proc.signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        for worker in leftover_workers(home_marker(folder / "state")):
            worker.kill()
            worker.wait(10)
        shutil.rmtree(runtime, ignore_errors=True)


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    # a stream the fuzz cancels detaches its session: no closing it while the fuzz runs
    with _gateway(tmp_path_factory.mktemp("grpc-fuzz"),
                  **{"plugins.reconnect.detach_grace_seconds": 3600}) as gateway:
        closed = gateway.open()
        gateway.close(closed)
        gateway.sessions = {"@live": gateway.open(), "@users": gateway.open("user"),
                            "@closed": closed}
        yield gateway


@pytest.fixture(scope="module")
def ldap_target(tmp_path_factory: pytest.TempPathFactory,
                slapd: acl_tests.Slapd) -> Iterator[Target]:
    with _gateway(tmp_path_factory.mktemp("login-fuzz"), **slapd.settings()) as gateway:
        yield gateway


# -- calling and checking ------------------------------------------------------------------


def _call(target: Target, rpc: str, request: Any,
          metadata: tuple[tuple[str, str], ...] | None = None) -> tuple[grpc.StatusCode, str]:
    """One call (``request``: a message, or bytes sent as they are); a stream is read up
    to its first response (attached) and then cancelled. ``(code, message)``."""
    raw = isinstance(request, bytes)
    kind = target.channel.unary_stream if rpc == "StreamEvents" else target.channel.unary_unary
    method = kind(SERVICE + rpc, response_deserializer=None,
                  request_serializer=None if raw else type(request).SerializeToString)
    try:
        response = method(request, metadata=target.metadata() if metadata is None else metadata,
                          timeout=CALL_TIMEOUT)
        if rpc == "StreamEvents":
            try:
                next(response)
            except StopIteration:
                return response.code(), response.details() or ""
            finally:
                response.cancel()
        elif rpc == "OpenSession":  # not left open: the gateway has a session cap
            target.close(gateway_pb2.SessionInfo.FromString(response).session_id)
        return C.OK, ""
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or ""


def _check(target: Target, rpc: str, request: Any, code: grpc.StatusCode, details: str,
           echoed: tuple[str, ...] = (), expected: set[grpc.StatusCode] | None = None) -> None:
    """The contract holds for this answer (``expected``: the codes CONTRACT §2 gives the
    RPC), and the gateway is still well."""
    target.stub.ListSessions(gateway_pb2.ListSessionsRequest(), metadata=target.metadata(),
                             timeout=CALL_TIMEOUT)
    logged = target.new_log()  # read first: a failed check leaves nothing for the next
    size = len(request) if isinstance(request, bytes) else request.ByteSize()
    if size > MAX_REQUEST:
        expected = {C.RESOURCE_EXHAUSTED}
    expected = expected or CODES[rpc]
    if currently_in_test_context():  # --hypothesis-show-statistics: what examples met
        event(f"{rpc} {code.name}")
    assert code in expected, f"{rpc} ({size} bytes) ended {code.name}: {details[:500]}"
    shown = details
    for value in echoed:  # what the request said may be named back; it is no leak
        for form in (value, repr(value)[1:-1]):
            if form:
                shown = shown.replace(form, "")
    assert not LEAK.search(shown), f"{rpc} {code.name}: {details}"
    assert "Traceback" not in logged, logged[-3000:]


# -- strategies ------------------------------------------------------------------------------


class LongText(str):
    """A long run of one character, shown as such in a failure report."""

    def __repr__(self) -> str:
        return f"{self[:1]!r} * {len(self)}"


class LongBytes(bytes):
    """The same for bytes."""

    def __repr__(self) -> str:
        return f"{self[:1]!r} * {len(self)}"


TEXT = st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=40)
NASTY = st.sampled_from([
    "", " ", "\x00", "a\x00b", "\n", "x\n2026-01-01 00:00:00,000 INFO forged line", "\x7f",
    "\x85", "é", "\u202e", LongText("\U0001F600" * 256), "%s%n%x", "{0}", "{}",
    "../../../etc/passwd", "' OR 1=1 --", "*)(uid=*", LongText("x" * 256),
    LongText("x" * 257), LongText("x" * (1 << 16)), LongText("x" * (MAX_REQUEST + 1)), "sim",
])
STRING = st.one_of(TEXT, st.text(max_size=40), NASTY)  # the middle one: control characters
#: mostly sessions that exist (so that the checks behind the lookup are reached)
def _mostly(likely: st.SearchStrategy[Any], other: st.SearchStrategy[Any]) -> Any:
    """``likely`` in about two examples of three (one_of picks its branches evenly)."""
    return st.integers(0, 2).flatmap(lambda n: other if n == 2 else likely)


SESSION_ID = _mostly(st.sampled_from(["@live", "@live", "@users", "@closed"]),
                     st.one_of(STRING, st.text("0123456789abcdef", min_size=32, max_size=32)))
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=12)
PAYLOAD = st.one_of(
    st.binary(max_size=64),
    JSON.map(lambda value: json.dumps(value).encode()),
    st.fixed_dictionaries({"tag": TEXT, "value": JSON}).map(lambda v: json.dumps(v).encode()),
    st.sampled_from([b"{", b"[1,", b"\xff\xfe", b"NaN", b"1e999", b'"\\ud800"',
                     LongBytes(b"9" * 5000), b'{"tag": 1}',
                     b'{"tag": "t", "value": ' + b"1" * 5000 + b"}"]),
    st.sampled_from([MAX_FRAME - 64, MAX_FRAME + 1, MAX_REQUEST + 1]).map(
        lambda n: LongBytes(b"x" * n)),
)
#: the sim backend's commands, but for those that load or kill the worker by design
COMMAND = _mostly(st.sampled_from(["echo", "read", "write", "unsubscribe"]), STRING)
UINT32 = st.one_of(st.integers(0, U32), st.sampled_from([0, 1, U32]))
UINT64 = st.one_of(st.integers(0, U64), st.sampled_from([0, 1, U64 - 1, U64]))
ENUM = st.one_of(st.integers(-(2**31), 2**31 - 1), st.sampled_from([0, 1, 2, 3, -1]))
WHO = st.sampled_from(["admin", "user"])
TAG = st.one_of(st.just(""), st.sampled_from(["line-1", "line-2"]),
                st.from_regex(r"[a-z0-9][a-z0-9._-]{0,63}", fullmatch=True), STRING)


def _id(target: Target, value: str) -> str:
    return target.sessions.get(value, value)


# -- one test per RPC ------------------------------------------------------------------------


@FUZZ
@given(client_name=st.one_of(TEXT, STRING), tag=TAG, lease_seconds=UINT32, who=WHO,
       backend=st.one_of(st.sampled_from(["", "sim"]), STRING))
def test_open_session(target, client_name, backend, tag, lease_seconds, who):
    request = gateway_pb2.OpenSessionRequest(client_name=client_name, backend=backend,
                                             tag=tag, lease_seconds=lease_seconds)
    code, details = _call(target, "OpenSession", request, target.metadata(who))
    _check(target, "OpenSession", request, code, details, (client_name, backend, tag))


@FUZZ
@given(session_id=SESSION_ID, who=WHO)
def test_close_session(target, session_id, who):
    if session_id == "@live":  # a session of its own to close
        session_id = target.open()
    request = gateway_pb2.CloseSessionRequest(session_id=_id(target, session_id))
    code, details = _call(target, "CloseSession", request, target.metadata(who))
    _check(target, "CloseSession", request, code, details, (request.session_id,))


@FUZZ
@given(session_id=SESSION_ID, who=WHO)
def test_get_session(target, session_id, who):
    request = gateway_pb2.GetSessionRequest(session_id=_id(target, session_id))
    code, details = _call(target, "GetSession", request, target.metadata(who))
    _check(target, "GetSession", request, code, details, (request.session_id,))


@FUZZ
@given(session_id=SESSION_ID, command=COMMAND, payload=PAYLOAD, timeout_ms=UINT32, who=WHO)
def test_invoke(target, session_id, command, payload, timeout_ms, who):
    request = gateway_pb2.InvokeRequest(session_id=_id(target, session_id), command=command,
                                        payload=payload, timeout_ms=timeout_ms)
    code, details = _call(target, "Invoke", request, target.metadata(who))
    _check(target, "Invoke", request, code, details, (request.session_id, command))


def test_a_payload_nested_too_deep_is_no_json(target):
    request = gateway_pb2.InvokeRequest(session_id=target.sessions["@live"], command="read",
                                        payload=b"[" * 100_000 + b"]" * 100_000)
    code, details = _call(target, "Invoke", request)
    _check(target, "Invoke", request, code, details)


@FUZZ
@given(session_id=SESSION_ID, after=st.none() | UINT64, subscriber_id=STRING,
       max_batch=UINT32, on_overflow=ENUM, who=WHO)
def test_stream_events(target, session_id, after, subscriber_id, max_batch, on_overflow, who):
    request = gateway_pb2.StreamEventsRequest(
        session_id=_id(target, session_id), after_sequence=after, subscriber_id=subscriber_id,
        max_batch=max_batch, on_overflow=on_overflow)
    code, details = _call(target, "StreamEvents", request, target.metadata(who))
    _check(target, "StreamEvents", request, code, details, (request.session_id, subscriber_id))


@FUZZ
@given(rpc=st.sampled_from(sorted(REQUESTS)), data=st.data())
def test_bytes_that_are_no_request(target, rpc, data):
    """Arbitrary bytes, or a valid request of the RPC mutated; unknown fields included."""
    valid = REQUESTS[rpc](**({"session_id": target.sessions["@closed"]}
                             if "session_id" in REQUESTS[rpc].DESCRIPTOR.fields_by_name
                             else {})).SerializeToString()
    body = data.draw(st.one_of(
        st.binary(max_size=64),
        st.tuples(st.integers(0, len(valid)), st.binary(min_size=1, max_size=8)).map(
            lambda cut: valid[:cut[0]] + cut[1] + valid[cut[0]:])))
    code, details = _call(target, rpc, body)
    _check(target, rpc, body, code, details)


CREDENTIAL = st.one_of(
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=80),
    st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=80).map(
        lambda junk: f"Bearer {junk}"),
    st.text("0123456789abcdef", min_size=12, max_size=12).map(lambda i: f"Bearer sg_{i}_x"),
    st.sampled_from(["", "Bearer", "Bearer ", "Basic YWxpY2U6cHc=", "Bearer a.b.c",
                     "Bearer eyJhbGciOiJub25lIn0.eyJpc3MiOiJzZXNzaW9uZ2F0ZSJ9.",
                     "Bearer sg__", "Bearer sg_x_y_z"]),
)


@FUZZ
@given(rpc=st.sampled_from(sorted(set(REQUESTS) - {"Login"})),
       credential=st.none() | CREDENTIAL)
def test_credentials_that_are_no_key(target, rpc, credential):
    fields = REQUESTS[rpc].DESCRIPTOR.fields_by_name
    request = REQUESTS[rpc](**({"session_id": target.sessions["@live"]}
                               if "session_id" in fields else {}),
                            **({"command": "echo"} if "command" in fields else {}))
    metadata = () if credential is None else (("authorization", credential),)
    code, details = _call(target, rpc, request, metadata)
    _check(target, rpc, request, code, details, (credential or "",), {C.UNAUTHENTICATED})


USERNAME = st.one_of(
    STRING, st.sampled_from(sorted(USERS)),
    st.sampled_from(["Alice", " alice ", "alice\x00", "alice*", "*", "a*", "alice)(|(uid=*",
                     "uid=alice,ou=people,dc=example,dc=org", "\\", ',+"\\<>;=#', "cn=admin"]))
PASSWORD = st.one_of(STRING, st.sampled_from([pw for pw, _groups in USERS.values()]),
                     st.sampled_from(["*", "service-secret", "root-secret"]))
GOOD_LOGIN = st.sampled_from(sorted((name, pw) for name, (pw, _groups) in USERS.items()))


def _login(target: Target, username: str, password: str) -> tuple[grpc.StatusCode, str]:
    request = gateway_pb2.LoginRequest(username=username, password=password)
    code, details = _call(target, "Login", request, metadata=())
    _check(target, "Login", request, code, details, (username,))
    return code, details


def test_a_password_ldap_refuses_to_send_is_a_wrong_password(ldap_target):
    for username in ("alice", "nobody-at-all"):
        code, details = _login(ldap_target, username, "alice-pw\x00")
        assert code == C.UNAUTHENTICATED, f"{username}: {code.name} {details}"


@FUZZ
@given(login=st.one_of(st.tuples(USERNAME, PASSWORD), GOOD_LOGIN))
def test_login(ldap_target, slapd, login):
    username, password = login
    code, details = _login(ldap_target, username, password)
    assert code != C.UNAVAILABLE, details  # the directory is up throughout
    assert code != C.OK or USERS[username.strip().lower()][0] == password, \
        f"{username!r} logged in with {password!r}"
    for secret in (slapd.service_pw, slapd.root_pw, password if len(password) > 5 else ""):
        assert not secret or secret not in details
