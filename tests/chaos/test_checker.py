"""The chaos checker catches each violation it exists for (a check that cannot fail
proves nothing), and accepts what the contract allows."""

from __future__ import annotations

import pytest

from sessiongate.v1 import gateway_pb2

from .checker import (
    CLOSE,
    FAIL,
    GATEWAY_BACK,
    GATEWAY_KILL,
    GATEWAY_RESTART,
    WORKER_KILL,
    EventLedger,
    Incidents,
    SubscriberCheck,
    invoke_allowed,
)

pytestmark = pytest.mark.once

SID = "s1"


def events(*seqs: int, payload: bytes = b"") -> list[gateway_pb2.Event]:
    return [gateway_pb2.Event(sequence=s, kind="k", payload=payload or str(s).encode())
            for s in seqs]


def gap(after: int, oldest: int, reason: int = gateway_pb2.EVICTED) -> gateway_pb2.ReplayGap:
    return gateway_pb2.ReplayGap(requested_after=after, oldest_available=oldest, reason=reason)


def subscriber(*, skip: bool = False, incidents: Incidents | None = None,
               ledger: EventLedger | None = None, survive: bool = True) -> SubscriberCheck:
    return SubscriberCheck("sub", SID, skip=skip,
                           incidents=incidents or Incidents(sessions_survive_restart=survive),
                           ledger=ledger or EventLedger())


def live(check: SubscriberCheck) -> SubscriberCheck:
    """A live stream, attached: its first response is the caught-up marker alone."""
    check.attach(None)
    check.response([], caught_up=True)
    return check


def closed(check: SubscriberCheck) -> SubscriberCheck:
    """The session is closed and the stream ends OK, as the contract says."""
    check.incidents.record(CLOSE, SID)
    check.end("OK")
    check.finish()
    return check


def test_a_clean_history_passes():
    check = live(subscriber())
    check.response(events(5, 6), caught_up=False)
    check.response(events(10, 11), gap(6, 10), caught_up=False)
    check.end("RESOURCE_EXHAUSTED", "event queue overflow: the subscriber fell behind")
    check.attach(11)  # a resume after the last event
    check.response(events(12), caught_up=True)
    check.response(events(20), gap(12, 20, gateway_pb2.WORKER_OVERRUN))
    closed(check)
    assert check.report() == []
    assert check.events == 6 and check.streams == 2
    assert check.gaps == {"EVICTED": 1, "WORKER_OVERRUN": 1}


SLOW = gateway_pb2.SLOW_SUBSCRIBER


@pytest.mark.parametrize(("responses", "expected"), [
    ([((1, 2, 2), None)], "event 2 again"),
    ([((1, 3, 2), None)], "event 2 again, or out of order"),
    ([((1, 2, 5), None)], "silent hole: events 3..4 missing"),
    ([((1,), None), ((3,), None)], "silent hole: events 2..2 missing"),
    ([((1,), None), ((5,), gap(2, 5))], "a gap after 2, but the last event delivered was 1"),
    ([((1,), None), ((4,), gap(1, 5))], "event 4 after a gap that announced 5"),
    ([((1,), None), ((6,), gap(1, 5))], "event 6 after a gap that announced 5"),
    ([((1,), None), ((2,), gap(1, 2))], "announces no missing event"),
    ([((1,), None), ((3,), gap(1, 3, 0))], "a gap without a reason"),
    ([((1,), None), ((3,), gap(1, 3, SLOW))], "SLOW_SUBSCRIBER gap for a subscriber that "
     "did not ask for SKIP"),
], ids=["duplicate", "out-of-order", "silent-hole", "silent-hole-between-responses",
        "gap-starts-wrong", "gap-ends-early", "gap-ends-late", "empty-gap", "untyped-gap",
        "slow-gap-without-skip"])
def test_each_broken_sequence_is_caught(responses, expected):
    check = live(subscriber())
    for seqs, announced in responses:
        check.response(events(*seqs), announced, caught_up=False)
    assert any(expected in v for v in check.violations), check.violations


def test_a_stream_caught_up_twice_is_caught():
    check = live(subscriber())
    check.response(events(1), caught_up=True)
    assert "a stream marked caught up twice" in check.violations[0]


def test_a_skip_subscriber_may_get_a_slow_subscriber_gap():
    check = live(subscriber(skip=True))
    check.response(events(1))
    check.response(events(300), gap(1, 300, SLOW))
    closed(check)
    assert check.report() == []


def test_a_live_stream_must_start_with_the_caught_up_marker_alone():
    check = subscriber()
    check.attach(None)
    check.response(events(1), caught_up=True)
    assert "first response is not the caught-up marker" in check.violations[0]


def test_a_resume_must_continue_after_the_last_event_delivered():
    check = live(subscriber())
    check.response(events(1, 2, 3))
    check.end("CANCELLED", cut=True)
    check.attach(2)
    assert "resumed after 2, but the last event it delivered was 3" in check.violations[0]
    check = live(subscriber())
    check.response(events(1, 2, 3))
    check.end("CANCELLED", cut=True)
    check.attach(3)
    check.response(events(3, 4), caught_up=True)  # the gateway repeats the seam
    assert "event 3 again" in check.violations[0]
    check = live(subscriber())
    check.response(events(1, 2, 3))
    check.end("CANCELLED", cut=True)
    check.attach(3)
    check.response(events(5), caught_up=True)  # resumed with a silent hole
    assert "silent hole: events 4..4" in check.violations[0]


def test_a_resume_gap_must_start_at_the_resume_point():
    check = subscriber()
    check.attach(10)
    check.response(events(50), gap(9, 50))
    assert "a gap after 9, but the last event delivered was 10" in check.violations[0]


def test_two_subscribers_must_agree_on_what_a_sequence_holds():
    ledger = EventLedger()
    first, second = live(subscriber(ledger=ledger)), live(subscriber(ledger=ledger))
    first.response(events(1, 2))
    second.response(events(1) + events(2, payload=b"something else"))
    assert first.violations == []
    assert "event 2 differs from what another subscriber received" in second.violations[0]


def test_a_stream_that_never_ends_is_caught():
    check = live(subscriber())
    check.finish()
    assert "never ended" in check.violations[0]
    check = live(subscriber())
    check.incidents.record(CLOSE, SID)
    check.end("OK")
    check.finish(hung=True)  # the harness had to abandon it
    assert "never ended" in check.violations[0]


@pytest.mark.parametrize(("done", "code", "details", "skip"), [
    ((), "OK", "", False),  # nothing closed the session
    ((WORKER_KILL,), "OK", "", False),  # it faulted: UNAVAILABLE, not OK
    ((), "UNAVAILABLE", "worker crashed", False),  # nothing crashed
    ((CLOSE,), "UNAVAILABLE", "", False),  # a close ends streams OK
    ((), "RESOURCE_EXHAUSTED", "event queue overflow: ...", True),  # SKIP gets a gap
    ((), "RESOURCE_EXHAUSTED", "subscriber cap", False),  # not an overflow
    ((CLOSE,), "FAILED_PRECONDITION", "session is CLOSING", False),
    ((CLOSE,), "ABORTED", "replaced", False),
    ((CLOSE,), "INTERNAL", "", False),
    ((WORKER_KILL,), "NOT_FOUND", "", False),  # the gateway never restarted
    ((), "CANCELLED", "", False),  # a cancel the harness did not make
])
def test_an_end_the_contract_does_not_give_is_caught(done, code, details, skip):
    incidents = Incidents(sessions_survive_restart=True)
    check = live(subscriber(skip=skip, incidents=incidents))
    for kind in done:
        incidents.record(kind, SID)
    check.end(code, details)
    assert f"stream ended {code}" in check.violations[0]


@pytest.mark.parametrize(("done", "code", "details", "skip"), [
    ((CLOSE,), "OK", "", False),
    ((WORKER_KILL,), "UNAVAILABLE", "", False),
    ((FAIL,), "UNAVAILABLE", "", True),
    ((), "RESOURCE_EXHAUSTED", "event queue overflow: the subscriber fell behind", False),
])
def test_an_end_the_contract_gives_is_accepted(done, code, details, skip):
    incidents = Incidents(sessions_survive_restart=True)
    check = live(subscriber(skip=skip, incidents=incidents))
    for kind in done:
        incidents.record(kind, SID)
    check.end(code, details)
    check.attach(None)
    check.end("CANCELLED", cut=True)  # a cut is the harness's own
    assert check.report() == []


def test_a_gateway_outage_explains_only_the_streams_it_overlapped():
    incidents = Incidents(sessions_survive_restart=True)
    during = live(subscriber(incidents=incidents))
    incidents.record(GATEWAY_KILL)
    attempt = subscriber(incidents=incidents)
    attempt.attach(0)  # a resume tried while the gateway is down
    incidents.record(GATEWAY_RESTART)
    during.end("UNAVAILABLE", "Socket closed")
    attempt.end("UNAVAILABLE", "failed to connect to all addresses")
    incidents.record(GATEWAY_BACK)
    after = live(subscriber(incidents=incidents))
    after.end("UNAVAILABLE", "Socket closed")  # attached after the outage: unexplained
    assert during.report() == [] and attempt.report() == []
    assert "stream ended UNAVAILABLE" in after.violations[0]


def test_not_found_only_for_a_session_that_ended_before_a_restart():
    incidents = Incidents(sessions_survive_restart=True)
    incidents.record(GATEWAY_KILL)
    incidents.record(GATEWAY_RESTART)
    incidents.record(GATEWAY_BACK)
    survivor = subscriber(incidents=incidents)
    survivor.attach(5)
    survivor.end("NOT_FOUND", "session s1 was not found")  # reattach lost a live session
    assert "stream ended NOT_FOUND" in survivor.violations[0]
    incidents.record(WORKER_KILL, SID)
    remembered = subscriber(incidents=incidents)
    remembered.attach(5)
    remembered.end("NOT_FOUND", "")  # it faulted under the running gateway, which knows it
    assert "stream ended NOT_FOUND" in remembered.violations[0]
    incidents.record(GATEWAY_KILL)
    incidents.record(GATEWAY_RESTART)
    forgotten = subscriber(incidents=incidents)
    forgotten.attach(5)
    forgotten.end("NOT_FOUND", "")  # ended, then a new gateway: it cannot know the id
    assert forgotten.report() == []
    lost = Incidents(sessions_survive_restart=False)  # without reattach, a kill ends it
    lost.record(GATEWAY_KILL)
    lost.record(GATEWAY_RESTART)
    resumed = subscriber(incidents=lost)
    resumed.attach(5)
    resumed.end("NOT_FOUND", "")
    assert resumed.report() == []


def test_commands_end_only_with_the_codes_the_contract_gives():
    assert invoke_allowed("OK", set())
    assert invoke_allowed("UNAVAILABLE", {FAIL})
    assert invoke_allowed("FAILED_PRECONDITION", {WORKER_KILL})
    assert not invoke_allowed("FAILED_PRECONDITION", set())
    assert not invoke_allowed("UNAVAILABLE", set())
    assert not invoke_allowed("INTERNAL", {WORKER_KILL, GATEWAY_KILL})
    assert not invoke_allowed("UNKNOWN", {FAIL})
