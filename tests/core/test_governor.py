"""The credit governor (core/streaming/governor.py): workers' credit is held while the
gateway's event loop lags, and handed out again - the newest grant, oldest session
first - once it does not. Driven by measurements given to it, never by the clock."""

from __future__ import annotations

from sessiongate.core.metrics import CORE_METRICS, Metrics
from sessiongate.core.streaming.governor import CALM_PROBES, CreditGovernor


def _governor(max_lag: float = 0.1) -> tuple[CreditGovernor, Metrics]:
    metrics = Metrics(CORE_METRICS)
    return CreditGovernor(max_lag, metrics), metrics


def _calm(governor: CreditGovernor) -> None:
    """Enough quiet measurements in a row to end a hold."""
    for _ in range(CALM_PROBES):
        governor.observe(0.01)


def test_credit_passes_at_once_while_the_loop_keeps_up():
    governor, metrics = _governor()
    sent: list[str] = []
    governor.observe(0.02)
    governor.grant("a", lambda: sent.append("a"))
    assert sent == ["a"] and governor.held_sessions() == 0
    assert metrics.get("credit_holds") == 0


def test_a_lagging_loop_holds_credit_until_it_catches_up():
    governor, metrics = _governor()
    sent: list[str] = []
    governor.observe(0.25)
    assert governor.holding and metrics.get("credit_holds") == 1
    governor.grant("a", lambda: sent.append("a1"))
    governor.grant("b", lambda: sent.append("b"))
    governor.grant("a", lambda: sent.append("a2"))  # a session is held once
    assert sent == [] and governor.held_sessions() == 2
    governor.observe(0.3)  # still behind: one hold, counted once
    assert sent == [] and metrics.get("credit_holds") == 1
    for lag in [0.01] * (CALM_PROBES - 1) + [0.07]:  # one turn over half the limit
        governor.observe(lag)
    assert sent == [] and governor.holding  # calm, but not long enough yet
    _calm(governor)
    # oldest first; the session's first sender reads its newest grant when called
    assert sent == ["a1", "b"] and not governor.holding and governor.held_sessions() == 0
    governor.observe(0.5)
    assert metrics.get("credit_holds") == 2


def test_an_ended_session_is_forgotten():
    governor, _metrics = _governor()
    sent: list[str] = []
    governor.observe(1.0)
    governor.grant("gone", lambda: sent.append("gone"))
    governor.forget("gone")
    _calm(governor)
    assert sent == [] and not governor.holding


def test_zero_never_holds():
    governor, metrics = _governor(0)
    sent: list[str] = []
    governor.observe(10.0)
    governor.grant("a", lambda: sent.append("a"))
    assert sent == ["a"] and not governor.holding and metrics.get("credit_holds") == 0
    assert governor.lag == 10.0


def test_holding_begins_by_stopping_the_workers_that_still_have_credit():
    """A worker granted a window earlier would keep producing through a hold: on_hold
    (the manager's: a grant of 0 to each paced worker) runs once as holding begins,
    and what it registers is handed back on release."""
    sent: list[str] = []
    stops: list[int] = []
    governor: CreditGovernor

    def stop_all() -> None:
        stops.append(1)
        governor.grant("a", lambda: sent.append("a restored"))

    governor = CreditGovernor(0.1, Metrics(CORE_METRICS), on_hold=stop_all)
    governor.observe(0.5)
    governor.observe(0.6)
    assert stops == [1] and governor.held_sessions() == 1 and sent == []
    _calm(governor)
    assert sent == ["a restored"]
