"""A session: its state machine, lease, worker, distributor and subscriptions.

States (the proto's names): OPENING → READY → CLOSING → CLOSED; READY ⇄ DETACHED
(reconnect plugin); FAULTED from any live state. A fault is handled once,
centrally: one log line, one metric, every stream ends ``UNAVAILABLE``, the
worker is stopped - and nothing outside this session is touched.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any

from google.protobuf.timestamp_pb2 import Timestamp

from sessiongate.core.errors import FailedPrecondition, GatewayError, Unavailable
from sessiongate.core.protocol import sequence_of
from sessiongate.core.stash import Stash
from sessiongate.core.streaming.events import Distributor, Subscription, to_wire, wire_from_bodies
from sessiongate.core.tasks import OwnedTasks
from sessiongate.v1 import gateway_pb2

if TYPE_CHECKING:
    from sessiongate.core.streaming.governor import CreditGovernor
    from sessiongate.core.workers.handle import WorkerHandle

__all__ = ["ENDED", "LIVE", "PROTOCOL_ERROR", "EndedSession", "Session", "SessionState",
           "new_session_id"]

log = logging.getLogger("sessiongate.sessions")


class SessionState:
    OPENING = "OPENING"
    READY = "READY"
    DETACHED = "DETACHED"
    CLOSING = "CLOSING"
    CLOSED = "CLOSED"
    FAULTED = "FAULTED"


LIVE = frozenset({SessionState.OPENING, SessionState.READY, SessionState.DETACHED,
                  SessionState.CLOSING})
ENDED = frozenset({SessionState.CLOSED, SessionState.FAULTED})
#: how the fault reason of a worker breaking the event protocol starts
PROTOCOL_ERROR = "protocol error"
_ALLOWED = {
    SessionState.OPENING: {SessionState.READY, SessionState.CLOSING, SessionState.FAULTED},
    SessionState.READY: {SessionState.DETACHED, SessionState.CLOSING, SessionState.FAULTED},
    SessionState.DETACHED: {SessionState.READY, SessionState.CLOSING, SessionState.FAULTED},
    SessionState.CLOSING: {SessionState.CLOSED, SessionState.FAULTED},
    SessionState.CLOSED: set(),
    SessionState.FAULTED: set(),
}


def new_session_id() -> str:
    """Random 128-bit, unguessable (an id alone grants nothing, but leaks nothing either)."""
    return secrets.token_hex(16)


def _require_ready(session_id: str, state: str, reason: str, action: str) -> None:
    if state not in (SessionState.READY, SessionState.DETACHED):
        detail = f": {reason}" if reason and state in ENDED else ""
        raise FailedPrecondition(f"cannot {action}: session {session_id} is {state}{detail}")


def _timestamp(wall: float) -> Timestamp:
    ts = Timestamp()
    ts.FromNanoseconds(int(wall * 1e9))
    return ts


class Session:
    """One client session. All mutation happens on the event loop, never across an await."""

    def __init__(self, *, session_id: str, owner_key_id: str, client_name: str, backend: str,
                 tag: str, lease_seconds: float,
                 on_state: Callable[[Session, str, str, str], None],
                 governor: CreditGovernor | None = None) -> None:
        self.session_id = session_id
        self.owner_key_id = owner_key_id
        self.client_name = client_name
        self.backend = backend
        self.tag = tag
        self.lease_seconds = lease_seconds
        self.state = SessionState.OPENING
        self.reason = ""
        self.opened_wall = time.time()
        self.lease_deadline = time.monotonic() + lease_seconds
        self.last_sequence = 0
        self.worker: WorkerHandle | None = None
        self.distributor: Distributor | None = None
        self.ended = asyncio.Event()
        #: plugins' per-session state (see :mod:`sessiongate.core.stash`); core never reads it
        self.stash = Stash()
        #: its worker was left running for a later gateway (set at shutdown, never reset)
        self.released = False
        self._on_state = on_state
        self._governor = governor
        self._tasks = OwnedTasks(session_id=session_id)

    def __repr__(self) -> str:
        return f"<Session {self.session_id} {self.state}>"

    # -- state -------------------------------------------------------------------------

    @property
    def live(self) -> bool:
        return self.state in LIVE

    def transition(self, new: str, reason: str = "") -> bool:
        """Move to ``new`` if allowed from the current state; False (no change) if not."""
        old = self.state
        if new not in _ALLOWED[old]:
            return False
        self.state = new
        if reason:
            self.reason = reason
        self._on_state(self, old, new, reason)
        return True

    def require_ready(self, action: str) -> None:
        _require_ready(self.session_id, self.state, self.reason, action)

    # -- lease -------------------------------------------------------------------------

    def touch(self) -> None:
        self.lease_deadline = time.monotonic() + self.lease_seconds

    def kept_alive(self) -> bool:
        """An attached stream that counts (owner's/admin's) keeps the lease from expiring.

        Such a session never expires while one is attached; its lease restarts (a full
        ``lease_seconds``) when the last one leaves.
        """
        dist = self.distributor
        return dist is not None and any(s.keeps_alive for s in dist.subscriptions)

    def lease_expired(self, now: float) -> bool:
        return now >= self.lease_deadline and not self.kept_alive()

    def lease_expires_wall(self) -> float:
        return time.time() + max(0.0, self.lease_deadline - time.monotonic())

    # -- events (the pump) -------------------------------------------------------------

    def on_events(self, events: list[bytes], nbytes: int = 0, overrun: bool = False) -> None:
        """A batch of encoded events from the worker: check the sequences, then hand it
        to the distributor, the bytes as the worker wrote them (never decoded here).

        :param nbytes: the frame's size (sizes the pacing window).
        :param overrun: the worker dropped events right before this batch
            (``WORKER_OVERRUN``); any other jump is ``WORKER_DISCONNECTED``.
        """
        sequences = list(map(sequence_of, events))
        expected = self.last_sequence + 1
        if sequences != list(range(expected, expected + len(sequences))):
            self._publish_with_jumps(events, sequences, expected, overrun)
            return
        self.last_sequence = sequences[-1]
        if self.distributor is not None and self.state != SessionState.FAULTED:
            # encoded once here, for every subscriber
            self.distributor.publish(wire_from_bodies(events, sequences), nbytes)

    def _publish_with_jumps(self, events: list[bytes], sequences: list[int], expected: int,
                            overrun: bool) -> None:
        """Not contiguous: a repeat or a step back faults; forward jumps become holes
        announced in place, between the runs before and after them."""
        runs: list[tuple[int, int]] = []  # (index where a run starts, its expected sequence)
        for i, seq in enumerate(sequences):
            if seq < expected:
                self.fault(f"{PROTOCOL_ERROR}: event sequence {seq} after {expected - 1}")
                return
            if seq > expected:
                runs.append((i, expected))
            expected = seq + 1
        reason = gateway_pb2.WORKER_OVERRUN if overrun else gateway_pb2.WORKER_DISCONNECTED
        dist = self.distributor if self.state != SessionState.FAULTED else None
        bounds = [i for i, _ in runs] + [len(events)]
        if bounds[0] > 0 and dist is not None:
            dist.publish(wire_from_bodies(events[:bounds[0]], sequences[:bounds[0]]))
        for (start, missing_from), stop in zip(runs, bounds[1:], strict=True):
            first = sequences[start]
            log.warning("session %s: worker skipped sequences %d..%d (%s)", self.session_id,
                        missing_from, first - 1, gateway_pb2.GapReason.Name(reason))
            if dist is not None:
                dist.publish_hole(missing_from - 1, first, reason)
                dist.publish(wire_from_bodies(events[start:stop], sequences[start:stop]))
            reason = gateway_pb2.WORKER_DISCONNECTED  # only the first jump can be an overrun
        self.last_sequence = sequences[-1]

    def grant(self, more: int | None) -> None:
        """The distributor's pacing decision, passed on to the worker (if any yet); more
        credit waits while the gateway's loop lags (:mod:`..streaming.governor`)."""
        if self.worker is None:
            return
        if more is None or self._governor is None:
            self.worker.grant(more)
        else:
            self._governor.grant(self.session_id, self._send_grant)

    def hold_credit(self) -> None:
        """The governor holds credit: a paced worker may send nothing more (a grant of 0)
        until the governor hands its grant back."""
        dist, worker = self.distributor, self.worker
        if self._governor is None or worker is None or dist is None or dist.granted is None:
            return  # not paced: it runs free by design
        worker.grant(0)
        self._governor.grant(self.session_id, self._send_grant)

    def _send_grant(self) -> None:
        """The distributor's grant as it is now (it may have moved while held back)."""
        dist, worker = self.distributor, self.worker
        if worker is not None and dist is not None and dist.granted is not None:
            worker.grant(max(0, dist.granted - dist.log.end))

    def restore_events(self, events: Sequence[gateway_pb2.Event], *, floor: int | None,
                       reason: int) -> None:
        """Seed the event log from a worker's own record (its re-adoption): ``events``
        are what it still holds, in order; with ``floor``, nothing at or below it will
        come again and any hole up to the first event is announced with ``reason``.
        The session's sequence continues from the newest of them."""
        if self.distributor is not None:
            self.distributor.restore(to_wire(list(events)), floor=floor, reason=reason)
        self.last_sequence = max(self.last_sequence, floor or 0,
                                 events[-1].sequence if events else 0)

    def subscriptions(self) -> list[Subscription]:
        """The session's subscriptions now (a copy: external streams and internal ones)."""
        return list(self.distributor.subscriptions) if self.distributor is not None else []

    def subscribe(self, sub: Subscription, *, after_sequence: int | None = None) -> Subscription:
        if self.distributor is None or not self.live:
            raise FailedPrecondition(f"session {self.session_id} is {self.state}")
        return self.distributor.subscribe(sub, after_sequence=after_sequence)

    def unsubscribe(self, sub: Subscription, reason: str) -> None:
        if self.distributor is not None:
            self.distributor.unsubscribe(sub, reason)

    # -- tasks -------------------------------------------------------------------------

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """Run a task owned by this session (cancelled and awaited at teardown)."""
        return self._tasks.spawn(coro, name)

    async def cancel_tasks(self) -> None:
        await self._tasks.cancel_and_wait()

    # -- endings -----------------------------------------------------------------------

    def fault(self, reason: str) -> None:
        """Fault the session (idempotent): streams and commands in flight end UNAVAILABLE
        naming ``reason``; teardown is scheduled."""
        if not self.transition(SessionState.FAULTED, reason):
            return
        message = f"session {self.session_id} faulted: {reason}"
        if self.worker is not None:
            self.worker.abort_commands(Unavailable(message))
        if self.distributor is not None:
            self.distributor.close(Unavailable(message))

    def end_streams(self, error: GatewayError | None = None) -> None:
        if self.distributor is not None:
            self.distributor.close(error)

    # -- public view -------------------------------------------------------------------

    def info(self) -> gateway_pb2.SessionInfo:
        dist = self.distributor
        return gateway_pb2.SessionInfo(
            session_id=self.session_id,
            state=gateway_pb2.SessionState.Value(self.state),
            owner_key_id=self.owner_key_id,
            tag=self.tag,
            backend=self.backend,
            client_name=self.client_name,
            last_sequence=self.last_sequence,
            subscriber_count=dist.external_count if dist else 0,
            opened_at=_timestamp(self.opened_wall),
            lease_expires_at=_timestamp(self.lease_expires_wall()),
            reason=self.reason,
        )


class EndedSession:
    """What is kept of a session once it has ended: its final public view and what
    authorization reads (owner, tag). No worker, distributor, log or tasks: those go
    with the :class:`Session`, so remembering ended sessions costs a few hundred bytes.
    """

    live = False
    worker = None
    distributor = None

    def __init__(self, session: Session) -> None:
        self.session_id = session.session_id
        self.owner_key_id = session.owner_key_id
        self.client_name = session.client_name
        self.backend = session.backend
        self.tag = session.tag
        self.state = session.state
        self.reason = session.reason
        self.last_sequence = session.last_sequence
        self.ended_at = time.monotonic()
        self.stash = Stash()  # empty: plugin state went with the session
        self._info = session.info()
        self.ended = asyncio.Event()
        self.ended.set()

    def __repr__(self) -> str:
        return f"<EndedSession {self.session_id} {self.state}>"

    def require_ready(self, action: str) -> None:
        _require_ready(self.session_id, self.state, self.reason, action)

    def info(self) -> gateway_pb2.SessionInfo:
        info = gateway_pb2.SessionInfo()
        info.CopyFrom(self._info)
        return info
