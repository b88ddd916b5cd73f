"""Metrics (docs/metrics.md): every declared metric appears on the side port's ``/metrics``
with its declared labels once the action that moves it happened; metrics are used only
as declared.

Real gateways, real workers, real HTTP requests (aiohttp's client) to ``/metrics``,
parsed with prometheus-client's own parser. ``MOVED`` names, for every metric core and
the built-in plugins of this issue declare, the test that moves it; a test checks that
it names them all.
"""

from __future__ import annotations

import ast
import asyncio
import hashlib
import importlib
import logging
import os
import pathlib
import signal
import sys
import time
from typing import Any

import grpc
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from sessiongate.core import counter, hookimpl
from sessiongate.core.errors import Unauthenticated
from sessiongate.core.metrics import (
    CORE_METRICS,
    GAUGE_HISTOGRAM,
    HISTOGRAM,
    MAX_LABEL_VALUES,
    Metric,
    Metrics,
    MetricWarning,
    gauge,
    histogram,
)
from sessiongate.core.sessions.session import SessionState
from sessiongate.testing import (
    end_released_worker,
    http_get,
    open_streaming,
    rpc_error,
    stream_end,
    wait_for,
)
from sessiongate.v1 import gateway_pb2

from ..platform.test_hooks_contract import plugin, releasing_plugin, without_reattach
from .helpers import FakeWorkers, stall_settings

TIMEOUT = 30.0
ROOT = pathlib.Path(__file__).resolve().parents[2]
#: the built-in plugins whose metrics this file moves (acl's, activity's and
#: webhooks' are their own tests' business)
PLUGINS = ("fanout", "reconnect", "reattach", "dashboard")
SWITCHES = {f"SESSIONGATE_PLUGINS__{name.upper()}__ENABLED": "true"
            for name in ("fanout", "reconnect", "reattach")}


# -- reading /metrics ----------------------------------------------------------------------


class Page:
    """One scrape of ``/metrics``: its samples, by sample name."""

    def __init__(self, text: str) -> None:
        self.samples: dict[str, list[Any]] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                self.samples.setdefault(sample.name, []).append(sample)

    def value(self, name: str, **labels: str) -> float:
        """The sum of the samples named ``name`` whose labels include ``labels``."""
        return sum(s.value for s in self.samples.get(name, ())
                   if labels.items() <= s.labels.items())

    def check_labels(self, metric: Metric) -> None:
        """Its samples are on the page, each with exactly the declared labels."""
        name = {HISTOGRAM: f"{metric.exported}_count",
                GAUGE_HISTOGRAM: f"{metric.exported}_gcount"}.get(metric.kind, metric.exported)
        samples = self.samples.get(name)
        assert samples, f"{name} is not on /metrics"
        for sample in samples:
            assert set(sample.labels) == set(metric.label_names), (name, sample.labels)


async def scrape(gw: Any) -> Page:
    status, text = await http_get(gw.http_address, "/metrics")
    assert status == 200, text
    return Page(text)


def declared(gw: Any, *names: str) -> list[Metric]:
    by_name = {m.name: m for m in gw.gateway.metrics.declared}
    return [by_name[name] for name in names]


async def moved(gw: Any, *names: str) -> Page:
    """Scrape; each named metric is there with its declared labels."""
    page = await scrape(gw)
    for metric in declared(gw, *names):
        page.check_labels(metric)
    return page


#: every metric of core and of PLUGINS → the test below that moves it
MOVED = {
    "sessions": "test_a_session_s_life_is_counted",
    "session_transitions": "test_a_session_s_life_is_counted",
    "session_opens": "test_a_session_s_life_is_counted",
    "session_open_seconds": "test_a_session_s_life_is_counted",
    "spare_workers_ready": "test_a_session_s_life_is_counted",
    "commands": "test_a_session_s_life_is_counted",
    "command_seconds": "test_a_session_s_life_is_counted",
    "events_received": "test_a_session_s_life_is_counted",
    "events_delivered": "test_a_session_s_life_is_counted",
    "events_delivered_per_second": "test_a_session_s_life_is_counted",
    "subscribers": "test_a_session_s_life_is_counted",
    "subscriber_lag_events": "test_a_session_s_life_is_counted",
    "event_log_events": "test_a_session_s_life_is_counted",
    "credit_holds": "test_a_lagging_event_loop_holds_credit_visibly_and_loses_nothing",
    "credit_held_sessions": "test_a_lagging_event_loop_holds_credit_visibly_and_loses_nothing",
    "event_loop_lag_seconds": "test_a_lagging_event_loop_holds_credit_visibly_and_loses_nothing",
    "event_log_oldest_age_seconds": "test_a_session_s_life_is_counted",
    "subscriptions_ended": "test_a_session_s_life_is_counted",
    "worker_exits": "test_a_session_s_life_is_counted",
    "auth_failures": "test_a_session_s_life_is_counted",
    "authz_decisions": "test_a_session_s_life_is_counted",
    "rpcs": "test_a_session_s_life_is_counted",
    "rpc_seconds": "test_a_session_s_life_is_counted",
    "queue_overflows": "test_overflows_gaps_and_faults_are_counted",
    "gaps": "test_overflows_gaps_and_faults_are_counted",
    "session_faults": "test_overflows_gaps_and_faults_are_counted",
    "worker_heartbeat_timeouts": "test_a_silent_worker_is_counted",
    "session_adoptions": "test_adoption_outcomes_are_counted",
    "fanout_subscribers_replaced": "test_fanout_and_reconnect_count_theirs",
    "fanout_subscribers_refused": "test_fanout_and_reconnect_count_theirs",
    "reconnect_detaches": "test_fanout_and_reconnect_count_theirs",
    "reconnect_resumes": "test_fanout_and_reconnect_count_theirs",
    "reconnect_grace_expired": "test_fanout_and_reconnect_count_theirs",
    "reattach_recoveries": "test_reattach_counts_its_recoveries",
    "reattach_orphan_dropped_events": "test_reattach_counts_its_recoveries",
    "reattach_history_events": "test_reattach_counts_its_recoveries",
    # the dashboard plugin's
    "dashboard_logins": "test_the_dashboard_counts_its_own",
    "dashboard_requests_refused": "test_the_dashboard_counts_its_own",
    "dashboard_pages_dropped": "test_the_dashboard_counts_its_own",
    "dashboard_pages_cut_off": "test_the_dashboard_counts_its_own",
    "dashboard_live_pages": "test_the_dashboard_counts_its_own",
    "dashboard_alarms": "test_the_dashboard_counts_its_own",
}


def builtin_declarations(name: str) -> list[Metric]:
    """What the built-in plugin ``name`` declares (its ``sg_metrics``)."""
    module = importlib.import_module(f"sessiongate.plugins.{name}")
    impl = getattr(module, "sg_metrics", None)
    return list(impl()) if impl is not None else []


@pytest.mark.once
def test_every_declared_metric_is_moved_by_a_test():
    names = [m.name for m in CORE_METRICS]
    for name in PLUGINS:
        names += [m.name for m in builtin_declarations(name)]
    assert sorted(MOVED) == sorted(names)
    module = sys.modules[__name__]
    assert all(callable(getattr(module, test, None)) for test in MOVED.values())


# -- used as declared ------------------------------------------------------------------------


def _metric_calls(path: pathlib.Path) -> list[tuple[int, ast.expr]]:
    """``(line, first argument)`` of each ``<...>.metrics.<verb>(name, ...)`` in a module
    (``metrics``/``_metrics`` attributes and ``count=...metrics.inc`` handed on)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr in ("inc", "set", "observe", "child", "get")):
            continue
        owner = node.func.value
        name = owner.attr if isinstance(owner, ast.Attribute) else getattr(owner, "id", "")
        if name in ("metrics", "_metrics") and node.args:
            found.append((node.lineno, node.args[0]))
    return found


def _constants(tree: ast.Module) -> dict[str, str]:
    """A module's string constants (``NAME = "text"``), as metric names are kept."""
    return {target.id: node.value.value for node in tree.body
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
            for target in node.targets if isinstance(target, ast.Name)}


@pytest.mark.once
def test_every_metric_counted_in_the_code_is_declared():
    """Read the code: each metric core or a built-in plugin counts is declared (by core,
    or by that plugin's sg_metrics), and named by a literal or a module constant. An
    undeclared name counts nothing on /metrics: this is where it fails loudly."""
    core = {m.name for m in CORE_METRICS}
    problems = []
    for package in ("core", "plugins"):
        for path in sorted((ROOT / package).rglob("*.py")):
            relative = path.relative_to(ROOT)
            owner = relative.parts[1] if package == "plugins" and len(relative.parts) > 2 \
                else None
            names = core | ({m.name for m in builtin_declarations(owner)} if owner else set())
            constants: dict[str, str] = {}
            for sibling in path.parent.glob("*.py"):  # a plugin's names may live beside
                constants.update(_constants(ast.parse(sibling.read_text())))
            for line, arg in _metric_calls(path):
                name = (arg.value if isinstance(arg, ast.Constant)
                        else constants.get(arg.id) if isinstance(arg, ast.Name) else None)
                if not isinstance(name, str):
                    if isinstance(arg, ast.Name) and arg.id == "name":
                        continue  # Metrics' own methods, and helpers passing a name on
                    problems.append(f"{relative}:{line}: the metric's name is not a literal "
                                    "or a module constant")
                elif name not in names:
                    problems.append(f"{relative}:{line}: {name!r} is not declared")
    assert not problems, "\n".join(problems)


@pytest.mark.once
def test_metrics_are_used_as_declared(caplog):
    metrics = Metrics([counter("things", "Things.", {"outcome": ("ok", "refused")}),
                       counter("plain", "Plain."), gauge("level", "A level."),
                       counter("open", "An open label.", {"reason": None}),
                       histogram("took", "Seconds.", (0.1, 1.0))])
    metrics.inc("things", outcome="ok")
    metrics.inc("things", 2)  # a label left out is ""
    assert metrics.get("things") == 3 and metrics.get("things", outcome="ok") == 1
    for wrong in (lambda: metrics.inc("things", outcome="maybe"),
                  lambda: metrics.inc("things", colour="red"),
                  lambda: metrics.inc("plain", reason="x"),
                  lambda: metrics.inc("plain", -1),
                  lambda: metrics.observe("plain", 1.0),
                  lambda: metrics.set("things", 1),
                  lambda: metrics.get("plain", reason="x")):
        with pytest.raises(MetricWarning):
            wrong()
    assert metrics.get("things") == 3
    metrics.set("level", 7)
    metrics.inc("level", -2)
    assert metrics.get("level") == 5
    metrics.observe("took", 0.5)
    assert metrics.get("took") == 1
    caplog.set_level(logging.WARNING, logger="sessiongate.metrics")
    metrics.inc("nobody_declared_this", outcome="x")
    metrics.inc("nobody_declared_this", outcome="x")
    assert metrics.get("nobody_declared_this", outcome="x") == 2  # counted aside
    assert [r.getMessage() for r in caplog.records].count(
        "metric 'nobody_declared_this' is not declared (core/metrics.py, or the plugin's "
        "sg_metrics hook; docs/metrics.md): not exported") == 1
    for i in range(MAX_LABEL_VALUES + 5):  # an open label is capped: the rest is "other"
        metrics.inc("open", reason=f"r{i}")
    assert metrics.get("open", reason="other") == 5
    inc = metrics.child("plain")
    inc(4)
    assert metrics.get("plain") == 4


@pytest.mark.once
def test_bad_declarations_are_refused_naming_the_problem():
    metrics = Metrics()
    problems = metrics.declare([
        counter("audit_lines", "Fine."),
        counter("lines", "Not the plugin's prefix."),
        counter("audit_things_total", "Ends in _total."),
        gauge("audit_Bad", "Upper case."),
        histogram("audit_took", "No buckets.", ()),
        counter("audit_lines", "Declared twice."),
        Metric("audit_raw", "counter", "Scraped counter.", scraped=True),
        counter("audit_labels", "A reserved label.", {"le": None}),
    ], owner="audit")
    assert [p.split(":")[0] for p in problems] == ["audit"] * 7
    assert "a plugin's metric names start with its name (audit_)" in problems[0]
    assert "does not end in _total" in problems[1]
    assert "declared already" in problems[4]
    assert [m.name for m in metrics.declared if m.name.startswith("audit")] == ["audit_lines"]


# -- a session's life ------------------------------------------------------------------------


class SecondBackend:
    """The sim backend under another name: nothing is started ahead for it (cold opens)."""

    __name__ = "second-backend"

    @hookimpl
    def sg_worker_backends(self) -> dict[str, str]:
        return {"cold": "sessiongate.core.sdk.sim:Sim"}


class PluginCredentials:
    """Refuses the credential ``plugin-token``, as a plugin refuses an expired token."""

    __name__ = "plugin-credentials"

    @hookimpl(tryfirst=True)
    def sg_authenticate(self, credential: str) -> None:
        if credential == "plugin-token":
            raise Unauthenticated("the token has expired")


@pytest.mark.once
@pytest.mark.asyncio
async def test_a_session_s_life_is_counted(make_gateway):
    gw = await make_gateway(extra_plugins=(SecondBackend(), PluginCredentials()))
    await wait_for(lambda: gw.gateway.sessions.spares.ready_count == 1, TIMEOUT)
    client = gw.client()
    sid, call = await open_streaming(client, "spare")
    cold = (await client.open(backend="cold")).session_id
    assert await client.invoke_json(sid, "echo", {"n": 1}) == {"n": 1}
    assert (await rpc_error(client.invoke(sid, "no-such-command"))).code() == \
        grpc.StatusCode.INVALID_ARGUMENT
    await client.invoke_json(sid, "burst", {"count": 10, "size": 10})
    received = []
    while len(received) < 10:
        received += [e.sequence for e in (await call.read()).events]
    page = await moved(gw, "sessions", "session_opens", "session_open_seconds",
                       "spare_workers_ready", "commands", "command_seconds",
                       "events_received", "events_delivered", "subscribers",
                       "subscriber_lag_events", "event_log_events",
                       "event_log_oldest_age_seconds", "session_transitions", "rpcs",
                       "rpc_seconds", "authz_decisions", "events_delivered_per_second")
    assert page.value("sessiongate_sessions", state="READY") == 2
    # since the sample taken at start (the last minute's oldest): more than nothing
    assert page.value("sessiongate_events_delivered_per_second") > 0
    assert page.value("sessiongate_session_opens_total", code="OK") == 2
    assert page.value("sessiongate_session_open_seconds_count", worker="spare") == 1
    assert page.value("sessiongate_session_open_seconds_count", worker="cold") == 1
    assert page.value("sessiongate_commands_total", command="echo", code="OK") == 1
    assert page.value("sessiongate_commands_total", command="burst", code="OK") == 1
    # a name no backend knows is never a label of its own
    assert page.value("sessiongate_commands_total", command="other",
                      code="INVALID_ARGUMENT") == 1
    assert page.value("sessiongate_command_seconds_count", command="echo") == 1
    assert page.value("sessiongate_events_received_total") == 10
    assert page.value("sessiongate_events_delivered_total") >= 10  # internal ones too
    assert page.value("sessiongate_subscribers", kind="grpc-event-stream") == 1
    assert page.value("sessiongate_subscriber_lag_events_gcount") >= 1
    assert page.value("sessiongate_session_transitions_total", state="READY") == 2
    invoke = "/sessiongate.v1.Gateway/Invoke"
    assert page.value("sessiongate_rpcs_total", method=invoke, code="OK") == 2
    assert page.value("sessiongate_rpcs_total", method=invoke, code="INVALID_ARGUMENT") == 1
    assert page.value("sessiongate_rpc_seconds_count", method=invoke) == 3
    assert page.value("sessiongate_authz_decisions_total", action="invoke",
                      outcome="allow") == 3

    # credentials: none, unknown, revoked, refused by a plugin
    key_id, key = await gw.create_key("revoked")
    await gw.gateway.keys.revoke(key_id)
    for credential in ("sg_unknown_key", key, "plugin-token"):
        error = await rpc_error(gw.client(credential).list())
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    error = await rpc_error(client.stub.ListSessions(gateway_pb2.ListSessionsRequest()))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED

    # the ends: a stream whose session closes, a worker asked to stop
    await client.close(sid)
    assert (await stream_end(call))[0] == grpc.StatusCode.OK
    page = await moved(gw, "auth_failures", "subscriptions_ended", "worker_exits")
    for reason in ("no_credential", "unknown_key", "revoked_key", "refused_by_plugin"):
        assert page.value("sessiongate_auth_failures_total", reason=reason) == 1, reason
    assert page.value("sessiongate_rpcs_total", method="/sessiongate.v1.Gateway/ListSessions",
                      code="UNAUTHENTICATED") == 4
    assert page.value("sessiongate_subscriptions_ended_total", reason="session ended") >= 1
    assert page.value("sessiongate_session_transitions_total", state="CLOSED") == 1
    await wait_for(lambda: gw.gateway.metrics.get("worker_exits", expected="true") >= 1,
                   TIMEOUT)
    page = await scrape(gw)
    assert page.value("sessiongate_worker_exits_total", code_class="clean",
                      expected="true") == 1
    assert page.value("sessiongate_sessions", state="READY") == 1
    assert page.value("sessiongate_sessions") == 1  # the cold one
    await client.close(cold)


# -- overflows, gaps, faults --------------------------------------------------------------


#: a burst far larger than gRPC's windows buffer: a subscriber that reads nothing stalls it
STALLED_BURST = b'{"count": 200000, "size": 100}'


async def _ended(gw: Any, sid: str) -> None:
    await asyncio.wait_for(gw.gateway.sessions.get(sid).ended.wait(), TIMEOUT)


@pytest.mark.once
@pytest.mark.asyncio
async def test_overflows_gaps_and_faults_are_counted(make_gateway, tmp_path):
    gw = await make_gateway(**stall_settings("fail_fast"), **{"events.queue_capacity": 100})
    client = gw.client()

    # SKIP: the worker runs free, the subscriber skips ahead and is told (a gap)
    skipping = (await client.open()).session_id
    skipper = client.stream(skipping, on_overflow=gateway_pb2.SKIP)
    assert (await skipper.read()).caught_up
    await client.invoke(skipping, "burst", STALLED_BURST)
    while not (response := await skipper.read()).HasField("gap"):
        assert response is not grpc.aio.EOF
    assert response.gap.reason == gateway_pb2.SLOW_SUBSCRIBER
    skipper.cancel()

    # DISCONNECT: the stalled subscriber's stream ends, the session goes on
    disconnecting, call = await open_streaming(client, on_overflow=gateway_pb2.DISCONNECT)
    await client.invoke(disconnecting, "burst", STALLED_BURST)
    assert (await stream_end(call))[0] == grpc.StatusCode.RESOURCE_EXHAUSTED

    # fail_fast, the only subscriber: the session faults
    failing, call = await open_streaming(client)
    error = await rpc_error(client.invoke(failing, "burst", STALLED_BURST))
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    await _ended(gw, failing)

    # a worker that exits on its own
    exiting = (await client.open()).session_id
    await rpc_error(client.invoke(exiting, "fail", b'{"exit_code": 3}'))
    await _ended(gw, exiting)

    page = await moved(gw, "queue_overflows", "gaps", "session_faults", "worker_exits")
    stream = "grpc-event-stream"
    for policy in ("skip", "disconnect_subscriber", "fail_fast"):
        assert page.value("sessiongate_queue_overflows_total", kind=stream,
                          policy=policy) >= 1, policy
    assert page.value("sessiongate_gaps_total", reason="SLOW_SUBSCRIBER") >= 1
    assert page.value("sessiongate_subscriptions_ended_total", reason="overflow") == 1
    assert page.value("sessiongate_session_faults_total", cause="overflow") == 1
    assert page.value("sessiongate_session_faults_total", cause="worker_exited") == 1
    assert page.value("sessiongate_worker_exits_total", code_class="error",
                      expected="false") == 1
    assert page.value("sessiongate_session_transitions_total", state="FAULTED") == 2

    # a worker that breaks the event protocol (a stand-in, not the SDK)
    broken = await make_gateway(extra_plugins=(FakeWorkers("sequence"),), **{
        "state_dir": str(tmp_path / "broken"), "workers.spare_workers": 0})
    sid = (await broken.client().open()).session_id
    await rpc_error(broken.client().invoke(sid, "misbehave"))
    await _ended(broken, sid)
    page = await moved(broken, "session_faults")
    assert page.value("sessiongate_session_faults_total", cause="protocol_error") == 1


@pytest.mark.once
@pytest.mark.asyncio
async def test_a_silent_worker_is_counted(make_gateway):
    gw = await make_gateway(**{"workers.heartbeat_interval_seconds": 0.2,
                               "workers.heartbeat_timeout_seconds": 1,
                               "workers.spare_workers": 0})
    sid = (await gw.client().open()).session_id
    pid = gw.gateway.sessions.live[sid].worker.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        await _ended(gw, sid)
    finally:
        if psutil.pid_exists(pid):
            os.kill(pid, signal.SIGCONT)
    page = await moved(gw, "worker_heartbeat_timeouts", "session_faults")
    assert page.value("sessiongate_worker_heartbeat_timeouts_total") == 1
    assert page.value("sessiongate_session_faults_total", cause="heartbeat_timeout") == 1


# -- adoption ------------------------------------------------------------------------------


def _ignore_frames(session: Any, frame: Any) -> None:
    """An adopted worker's frames: not this test's business."""


@pytest.mark.once
@pytest.mark.asyncio
async def test_adoption_outcomes_are_counted(make_gateway, monkeypatch, short_tmp):
    """Three workers left running by gateway A; gateway B adopts one, refuses one that
    presents another nonce and one that never phones home (it waits at another socket),
    and refuses records of a pid that is gone, of a pid that is another process now,
    and of a session it has already."""
    import dataclasses

    without_reattach(monkeypatch)
    release: set[str] = set()
    records: dict[str, Any] = {}
    a = await make_gateway(extra_plugins=(releasing_plugin(release, records, []),))
    client = a.client()
    sids = [(await client.open(client_name=f"w{i}")).session_id for i in range(3)]
    release.update(sids)
    processes = [a.gateway.sessions.live[sid].worker.process for sid in sids]
    await a.stop()
    try:
        kept = records[sids[0]]
        bad_nonce = dataclasses.replace(records[sids[1]],
                                        nonce_digest=hashlib.sha256(b"another").digest())
        elsewhere = dataclasses.replace(records[sids[2]],
                                        socket_path=str(short_tmp / "elsewhere.sock"))
        gone = dataclasses.replace(kept, session_id="0" * 32, pid=2**31 - 1)
        mismatch = dataclasses.replace(kept, session_id="1" * 32, pid=os.getpid())
        results: list[Any] = []

        @hookimpl(tryfirst=True)
        async def sg_startup(gateway):
            def adopt(record, window):
                return gateway.adopt_session(record, window=window, on_frame=_ignore_frames)
            results.extend(await asyncio.gather(
                adopt(kept, TIMEOUT), adopt(bad_nonce, 2.0), adopt(elsewhere, 2.0),
                adopt(gone, 1.0), adopt(mismatch, 1.0)))
            results.append(await adopt(kept, 1.0))

        b = await make_gateway(extra_plugins=(plugin(sg_startup, name="adopter"),))
        assert results[0] is not None and results[1:] == [None] * 5
        page = await moved(b, "session_adoptions", "session_faults")
        for outcome in ("adopted", "bad_nonce", "expired", "gone", "pid_mismatch",
                        "already_live"):
            assert page.value("sessiongate_session_adoptions_total", outcome=outcome) == 1, \
                outcome
        assert page.value("sessiongate_session_faults_total", cause="start_failed") == 2
        await b.client(a.admin_key).close(kept.session_id)
    finally:
        for process in processes:
            await end_released_worker(process, TIMEOUT)


# -- the built-in plugins' own -------------------------------------------------------------


@pytest.mark.once
@pytest.mark.asyncio
async def test_fanout_and_reconnect_count_theirs(make_gateway, monkeypatch):
    for name, value in SWITCHES.items():
        monkeypatch.setenv(name, value)
    without_reattach(monkeypatch)
    gw = await make_gateway(**{"plugins.fanout.max_subscribers_per_session": 2,
                               "plugins.reconnect.detach_grace_seconds": 2})
    client = gw.client()
    sid, first = await open_streaming(client, subscriber_id="a")
    session = gw.gateway.sessions.live[sid]
    again = client.stream(sid, subscriber_id="a")
    assert (await again.read()).caught_up
    assert (await stream_end(first))[0] == grpc.StatusCode.ABORTED  # replaced
    other = client.stream(sid, subscriber_id="b")
    assert (await other.read()).caught_up
    refused = client.stream(sid, subscriber_id="c")
    assert (await stream_end(refused))[0] == grpc.StatusCode.RESOURCE_EXHAUSTED

    again.cancel()
    other.cancel()
    await wait_for(lambda: session.state == SessionState.DETACHED, TIMEOUT)
    resumed = client.stream(sid, after_sequence=0)
    assert (await resumed.read()).caught_up
    assert session.state == SessionState.READY
    resumed.cancel()
    await wait_for(lambda: session.state == SessionState.DETACHED, TIMEOUT)
    await asyncio.wait_for(session.ended.wait(), TIMEOUT)  # nobody came back in time

    page = await moved(gw, "fanout_subscribers_replaced", "fanout_subscribers_refused",
                       "reconnect_detaches", "reconnect_resumes", "reconnect_grace_expired")
    assert page.value("sessiongate_fanout_subscribers_replaced_total") == 1
    assert page.value("sessiongate_fanout_subscribers_refused_total") == 1
    assert page.value("sessiongate_reconnect_detaches_total") == 2
    assert page.value("sessiongate_reconnect_resumes_total") == 1
    assert page.value("sessiongate_reconnect_grace_expired_total") == 1
    assert page.value("sessiongate_session_transitions_total", state="DETACHED") == 2


@pytest.mark.once
@pytest.mark.asyncio
async def test_reattach_counts_its_recoveries(make_gateway, monkeypatch):
    from sessiongate.plugins.reattach import ADOPTED

    for name, value in SWITCHES.items():
        monkeypatch.setenv(name, value)
    settings = {"plugins.reattach.adoption_window_seconds": TIMEOUT,
                "plugins.reattach.worker_history_events": 16}
    a = await make_gateway(**settings)
    sid = (await a.client().open()).session_id
    await a.client().invoke_json(sid, "write", {"tag": "t", "value": 1})  # event 1
    worker = a.gateway.sessions.live[sid].worker.process
    await a.stop()  # the worker runs on, for the next gateway
    try:
        b = await make_gateway(**settings)
        session = b.gateway.sessions.live[sid]
        page = await moved(b, "reattach_recoveries", "reattach_history_events",
                           "reattach_orphan_dropped_events", "session_adoptions")
        assert page.value("sessiongate_reattach_recoveries_total", outcome="adopted") == 1
        assert page.value("sessiongate_reattach_history_events_total") == 1
        assert page.value("sessiongate_reattach_orphan_dropped_events_total") == \
            session.stash[ADOPTED]["dropped_events"]
        assert page.value("sessiongate_session_adoptions_total", outcome="adopted") == 1
        await b.client(a.admin_key).close(sid)
    finally:
        await end_released_worker(worker, TIMEOUT)


def test_the_recent_rate_spans_its_window_and_no_more():
    from sessiongate.core.metrics import RecentRate

    rate = RecentRate(seconds=60, every=5)
    assert rate.rate(0.0, 0) == 0.0  # no sample yet
    for tick in range(30):  # 10 events a second for 150 s, then 100 a second
        rate.sample(tick * 5.0, tick * 50.0)
    assert rate.rate(150.0, 1500.0) == pytest.approx(10.0)
    for tick in range(30, 43):
        rate.sample(tick * 5.0, 1500.0 + (tick - 30) * 500.0)
    # the window holds the last minute only: the slow start no longer counts
    assert rate.rate(215.0, 8000.0) == pytest.approx(100.0)


# -- the dashboard plugin's metrics ------------------------------------------------------------


@pytest.mark.asyncio
async def test_the_dashboard_counts_its_own(make_gateway):
    """Sign-ins (ok, refused), a CSRF refusal, a slow page dropped, a page cut off by a key's
    revocation, the open pages, and an alarm (a worker that dies faults its session)."""
    from ..plugins.dashboard.helpers import SlowReader, Web, read_sequences

    gw = await make_gateway(**{
        "plugins.dashboard.enabled": True, "plugins.dashboard.allow_api_key_login": True,
        "plugins.fanout.enabled": True, "plugins.acl.enabled": True,
        "plugins.acl.revocation_check_interval_seconds": 0.2})
    client = gw.client()
    key_id, key = await gw.create_key("operator", scopes=("sessions:admin",))
    web = Web(gw.http_address)
    slow = None
    try:
        status, _, _ = await web.sign_in(api_key="sg_unknown_key")
        assert status == 401
        await web.signed_in(api_key=key)
        status, _, _ = await web.post("/logout", {"csrf_token": "forged"})
        assert status == 403
        sid = (await client.open()).session_id
        slow = await SlowReader.open(gw.http_address, web.cookie().value,
                                     f"/sessions/{sid}/events")
        async with web.stream(f"/sessions/{sid}/events") as page:
            reader = asyncio.create_task(read_sequences(page, 3000))
            await client.invoke_json(sid, "burst", {"count": 3000, "size": 2000})
            await asyncio.wait_for(reader, TIMEOUT)
            await wait_for(lambda: gw.gateway.metrics.get("dashboard_pages_dropped") == 1,
                           TIMEOUT)
            await moved(gw, "dashboard_live_pages")
            await gw.gateway.keys.revoke(key_id)
            assert (await page.until("denied")).event == "denied"
        with pytest.raises(grpc.aio.AioRpcError):
            await client.invoke_json(sid, "fail", {"exit_code": 3})
        await wait_for(lambda: gw.gateway.metrics.get("dashboard_alarms", kind="fault") == 1,
                       TIMEOUT)
    finally:
        if slow is not None:
            slow.close()
        await web.close()
    page = await moved(gw, "dashboard_logins", "dashboard_requests_refused",
                       "dashboard_pages_dropped", "dashboard_pages_cut_off",
                       "dashboard_live_pages", "dashboard_alarms")
    assert page.value("sessiongate_dashboard_logins_total", outcome="ok") == 1
    assert page.value("sessiongate_dashboard_logins_total", outcome="refused") == 1
    assert page.value("sessiongate_dashboard_requests_refused_total", reason="csrf") == 1
    assert page.value("sessiongate_dashboard_pages_dropped_total") == 1
    assert page.value("sessiongate_dashboard_pages_cut_off_total", reason="credential") >= 1
    assert page.value("sessiongate_dashboard_alarms_total", kind="fault") == 1


@pytest.mark.asyncio
async def test_a_lagging_event_loop_holds_credit_visibly_and_loses_nothing(make_gateway):
    """The loop is blocked (as by a long turn under load) while a paced burst flows: the
    governor holds credit and counts it, and the subscriber still gets every event."""
    gw = await make_gateway(**{"events.max_loop_lag_ms": 50})
    client = gw.client()
    sid, call = await open_streaming(client)
    count = 20_000
    burst = asyncio.ensure_future(client.invoke_json(sid, "burst", {"count": count}))
    received = 0
    while received < count:
        response = await call.read()
        assert not response.HasField("gap"), response.gap
        assert [e.sequence for e in response.events] == \
            list(range(received + 1, received + 1 + len(response.events)))
        received += len(response.events)
        if gw.gateway.metrics.get("credit_holds") == 0:
            time.sleep(0.2)  # block the loop: the governor's next probe wakes 150 ms late
    assert await burst == {"emitted": count}
    # a grant asked for while a (busy machine's) loop still lags is handed out once it
    # does not: nothing stays held
    governor = gw.gateway.sessions.governor
    await wait_for(lambda: governor.held_sessions() == 0)
    page = await moved(gw, "credit_holds", "credit_held_sessions", "event_loop_lag_seconds")
    assert page.value("sessiongate_credit_holds_total") >= 1
