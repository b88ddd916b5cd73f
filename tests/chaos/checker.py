"""What every subscriber of a chaos run must see, checked as it reads (docs/proof.md).

A :class:`SubscriberCheck` follows one subscriber through all its streams (the first
one and every resume) and records a violation when:

* a sequence is not above every sequence it delivered before (a duplicate, or out of
  order);
* a hole (``last + 1 .. next - 1``) is not announced by a typed ``gap`` whose range
  is exactly that hole: ``requested_after`` is the last event delivered and
  ``oldest_available`` the next one;
* a gap is untyped, announces nothing, or is ``SLOW_SUBSCRIBER`` for a subscriber that
  did not ask for SKIP;
* a live stream does not start with the caught-up marker, or a stream is marked
  caught up twice;
* a resume does not continue from the last event delivered;
* two subscribers of a session receive different events under one sequence;
* a stream ends with a status the contract does not give for what happened to its
  session (:func:`end_allowed`), or never ends.

The harness records every fault in :class:`Incidents` *before* injecting it, so an
end is judged by what had been done by the time it was seen.
"""

from __future__ import annotations

import collections
import itertools
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

from sessiongate.v1 import gateway_pb2

__all__ = ["CLOSE", "FAIL", "GATEWAY_BACK", "GATEWAY_KILL", "GATEWAY_RESTART", "WORKER_KILL",
           "EventLedger", "Incidents", "SubscriberCheck", "end_allowed", "invoke_allowed"]

# What the harness does to a session (or, with no session, to the gateway).
CLOSE = "close"
WORKER_KILL = "worker-kill"
FAIL = "fail"
GATEWAY_KILL = "gateway-kill"
GATEWAY_RESTART = "gateway-restart"  # the new gateway process listens
GATEWAY_BACK = "gateway-back"  # ... and every client has reconnected: the outage is over
#: not recorded: what a gateway kill means for its sessions when they cannot survive it
SESSION_LOST = "session-lost"
#: not recorded: a gateway restarted after the session ended, so it does not know the id
FORGOTTEN = "forgotten"
#: what ends a session
ENDED = frozenset({CLOSE, WORKER_KILL, FAIL, SESSION_LOST})

#: the typed gap reasons (GAP_REASON_UNSPECIFIED is not one)
GAP_REASONS = frozenset(v.number for v in gateway_pb2.GapReason.DESCRIPTOR.values if v.number)
OVERFLOW = "event queue overflow"
#: violations kept per subscriber (one broken stream would otherwise repeat itself)
MAX_VIOLATIONS = 5
#: entries of a subscriber's history quoted in a violation
CONTEXT = 6


class Incident(NamedTuple):
    tick: int
    session: str | None  # None: the whole gateway
    kind: str


class Incidents:
    """The faults and closes the harness caused, in the order it caused them.

    :param sessions_survive_restart: the gateway runs with reattach: its death is an
        outage its sessions live through; otherwise it ends them all (``SESSION_LOST``).
    """

    def __init__(self, *, sessions_survive_restart: bool) -> None:
        self.survive = sessions_survive_restart
        self._ticks = itertools.count(1)
        self.log: list[Incident] = []

    def record(self, kind: str, session: str | None = None) -> None:
        self.log.append(Incident(next(self._ticks), session, kind))

    def now(self) -> int:
        """A tick after every incident recorded so far."""
        return next(self._ticks)

    def done(self, session: str, *, since: int, before: int) -> set[str]:
        """What explains how a stream of ``session`` that started at tick ``since`` ended
        at tick ``before``: everything done to the session before; ``GATEWAY_KILL`` for a
        gateway outage that overlapped the stream (killed before its end, clients not
        back before its start); ``FORGOTTEN`` when a gateway restarted after the session
        had ended (a new gateway knows only the sessions it adopted)."""
        done: set[str] = set()
        ended: int | None = None  # when the session ended
        down: int | None = None  # when the gateway was killed, while it is down
        for tick, where, kind in self.log:
            if tick >= before or where not in (session, None):
                continue
            if where is not None:
                done.add(kind)
                if kind in ENDED and ended is None:
                    ended = tick
            elif kind == GATEWAY_KILL:
                down = tick
                if not self.survive:
                    done |= {SESSION_LOST, GATEWAY_KILL}
                    ended = tick if ended is None else ended
            elif kind == GATEWAY_RESTART:
                done.add(GATEWAY_RESTART)
                if ended is not None:
                    done.add(FORGOTTEN)
            elif kind == GATEWAY_BACK:
                if down is not None and tick > since:
                    done.add(GATEWAY_KILL)
                down = None
        if down is not None:
            done.add(GATEWAY_KILL)
        return done

    def counts(self) -> dict[str, int]:
        return dict(collections.Counter(i.kind for i in self.log))


def end_allowed(code: str, details: str, *, skip: bool, done: set[str]) -> bool:
    """Does the contract end a stream with ``code`` after ``done`` happened
    (:meth:`Incidents.done`)?

    * ``OK``: the session was closed.
    * ``UNAVAILABLE``: its worker crashed (killed, ``fail``) or the gateway died.
    * ``RESOURCE_EXHAUSTED`` ``event queue overflow``: a subscriber that did not ask for
      SKIP fell behind (a SKIP subscriber gets a gap instead, never this).
    * ``NOT_FOUND``: the session had ended and a gateway restarted since (a new gateway
      knows only the sessions it adopted); a session that was still running when the
      gateway died is adopted under reattach, so its id must still be known, and one
      that ended under the running gateway is remembered by it.
    * ``CANCELLED`` is the harness's own cut (:meth:`SubscriberCheck.end` ``cut=True``).
    """
    if code == "OK":
        return CLOSE in done
    if code == "UNAVAILABLE":
        return bool(done & {WORKER_KILL, FAIL, GATEWAY_KILL})
    if code == "RESOURCE_EXHAUSTED":
        return OVERFLOW in details and not skip
    if code == "NOT_FOUND":
        return FORGOTTEN in done
    return False


def invoke_allowed(code: str, done: set[str]) -> bool:
    """Does the contract end a command with ``code`` after ``done`` happened?

    ``UNAVAILABLE`` (crash, gateway gone), ``FAILED_PRECONDITION`` (the session is not
    Ready: it ended) and ``NOT_FOUND`` as for streams; nothing else, whatever the faults.
    """
    if code == "OK":
        return True
    if code in ("UNAVAILABLE", "NOT_FOUND"):
        return end_allowed(code, "", skip=True, done=done)
    return code == "FAILED_PRECONDITION" and bool(done & ENDED)


class EventLedger:
    """What each session delivered under each sequence: every subscriber must agree."""

    def __init__(self) -> None:
        self._seen: dict[tuple[str, int], int] = {}

    def agrees(self, session: str, sequence: int, digest: int) -> bool:
        return self._seen.setdefault((session, sequence), digest) == digest

    def clear(self) -> None:
        self._seen.clear()


def digest(event: Any) -> int:
    """What identifies an event's content (the worker sets all of it)."""
    return hash((event.kind, event.payload, event.time.seconds, event.time.nanos))


class SubscriberCheck:
    """One subscriber's streams, checked response by response (nothing is stored but
    its position and a few recent entries for the report).

    :param name: says which subscriber, in violations.
    :param skip: it asked for ``on_overflow = SKIP``.
    """

    def __init__(self, name: str, session: str, *, skip: bool, incidents: Incidents,
                 ledger: EventLedger) -> None:
        self.name = name
        self.session = session
        self.skip = skip
        self.incidents = incidents
        self.ledger = ledger
        self.violations: list[str] = []
        self.last: int | None = None  # the last sequence delivered, or the resume point
        self.highest = 0  # the highest sequence ever delivered
        self.expected: int | None = None  # the next sequence, as a gap announced it
        self.streaming = False
        self.started = 0
        self.live = False
        self.first = False
        self.caught_up = 0
        self.events = 0
        self.streams = 0
        self.gaps: collections.Counter[str] = collections.Counter()
        self.ends: collections.Counter[str] = collections.Counter()
        self.history: collections.deque[str] = collections.deque(maxlen=CONTEXT)
        self._dropped = 0

    # -- what the subscriber saw -------------------------------------------------------

    def attach(self, after: int | None) -> None:
        """A stream starts: live (``after`` None) or resuming after ``after``."""
        self._note(f"attach after={after}")
        if self.streaming:
            self._violation("a stream started before the previous one ended")
        if after is not None and self.last is not None and after != self.last:
            self._violation(f"resumed after {after}, but the last event it delivered was "
                            f"{self.last}")
        self.last = after
        self.expected = None
        self.streaming, self.live, self.first, self.caught_up = True, after is None, True, 0
        self.started = self.incidents.now()
        self.streams += 1

    def response(self, events: Sequence[Any], gap: Any = None,
                 caught_up: bool | None = None) -> None:
        """One response (``caught_up`` None: not visible, as through ``follow``)."""
        seqs = [e.sequence for e in events]
        self._note(f"response gap={_gap_text(gap)} events={_span(seqs)} caught_up={caught_up}")
        if not self.streaming:
            self._violation("a response outside any stream")
        if caught_up is not None:
            if self.first and self.live and not (caught_up and not seqs and gap is None):
                self._violation("a live stream's first response is not the caught-up marker "
                                "alone")
            self.caught_up += bool(caught_up)
            if self.caught_up > 1:
                self._violation("a stream marked caught up twice")
        self.first = False
        if gap is not None:
            self._gap(gap.requested_after, gap.oldest_available, gap.reason)
        for event in events:
            self._event(event)

    def end(self, code: str, details: str = "", *, cut: bool = False) -> None:
        """A stream ended with ``code`` (``cut``: the harness cancelled it)."""
        self._note(f"end {code} {details[:80]!r}{' (cut)' if cut else ''}")
        if not self.streaming:
            self._violation("a stream ended twice")
        self.streaming = False
        self.ends["CUT" if cut else code] += 1
        if cut:
            return
        done = self.incidents.done(self.session, since=self.started, before=self.incidents.now())
        if not end_allowed(code, details, skip=self.skip, done=done):
            self._violation(f"stream ended {code} ({details!r}) after "
                            f"{sorted(done) or 'nothing done to its session'}")

    def finish(self, hung: bool = False) -> None:
        """The subscriber is done; ``hung``: its stream had to be abandoned."""
        if hung or self.streaming:
            self._violation("a stream never ended after its session ended")
            self.streaming = False

    # -- rules -------------------------------------------------------------------------

    def _gap(self, after: int, oldest: int, reason: int) -> None:
        name = gateway_pb2.GapReason.Name(reason) if reason in GAP_REASONS else str(reason)
        self.gaps[name] += 1
        if reason not in GAP_REASONS:
            self._violation(f"a gap without a reason ({reason})")
        if reason == gateway_pb2.SLOW_SUBSCRIBER and not self.skip:
            self._violation("a SLOW_SUBSCRIBER gap for a subscriber that did not ask for SKIP")
        if oldest <= after + 1:
            self._violation(f"a gap {after}..{oldest} that announces no missing event")
        if self.last is not None and after != self.last:
            self._violation(f"a gap after {after}, but the last event delivered was {self.last}")
        if self.last is None:
            self.last = after
        self.expected = oldest

    def _event(self, event: Any) -> None:
        seq = event.sequence
        self.events += 1
        if not self.ledger.agrees(self.session, seq, digest(event)):
            self._violation(f"event {seq} differs from what another subscriber received as {seq}")
        if seq <= self.highest:
            self._violation(f"event {seq} again, or out of order (after {self.highest})")
            return
        if self.expected is not None and seq != self.expected:
            self._violation(f"event {seq} after a gap that announced {self.expected} next")
        elif self.expected is None and self.last is not None and seq != self.last + 1:
            self._violation(f"silent hole: events {self.last + 1}..{seq - 1} missing, no gap")
        self.expected = None
        self.last = self.highest = seq

    # -- reporting ---------------------------------------------------------------------

    def _note(self, entry: str) -> None:
        self.history.append(entry)

    def _violation(self, what: str) -> None:
        if len(self.violations) >= MAX_VIOLATIONS:
            self._dropped += 1
            return
        self.violations.append(f"{self.name}: {what}\n    recent: " + "\n            ".join(
            self.history))

    def report(self) -> list[str]:
        more = [f"{self.name}: ... and {self._dropped} more"] if self._dropped else []
        return self.violations + more


def _span(seqs: Iterable[int]) -> str:
    seqs = list(seqs)
    if not seqs:
        return "[]"
    if seqs == list(range(seqs[0], seqs[-1] + 1)):
        return f"[{seqs[0]}..{seqs[-1]}]" if len(seqs) > 1 else f"[{seqs[0]}]"
    return str(seqs if len(seqs) <= 8 else [*seqs[:4], "...", *seqs[-4:]])


def _gap_text(gap: Any) -> str:
    if gap is None:
        return "-"
    return f"{gap.requested_after}..{gap.oldest_available}/{gap.reason}"
