"""The gateway's metrics: every one declared, counted on the event loop, exported in
Prometheus's text format (``GET /metrics`` on the HTTP side port, docs/metrics.md).

Every metric is *declared* (a :class:`Metric`: name, kind, help, its labels and, where
it matters, their bounded values, buckets): core's in :data:`CORE_METRICS`, a plugin's
by its ``sg_metrics`` hook. docs/metrics.md is generated from the declarations, and
label values stay bounded (never a session, key or subscriber id: an open label keeps
:data:`MAX_LABEL_VALUES` values, then counts the rest as ``other``). A declared metric
used with a label or value it did not declare is a :class:`MetricWarning`, which the
test suite turns into an error. A name nobody declared is counted aside (``get`` reads
it; ``/metrics`` does not show it) and logged once; tests/core/test_metrics.py reads
the code and fails on every such name, so none ships.

What code moves (counters, gauges, histograms) is kept in plain dicts, without a lock:
the gateway counts on its event loop only. What is state rather than events (sessions
by state, subscribers, lag) is *scraped*: read from the gateway when ``/metrics`` is
asked for (:meth:`Metrics.on_scrape`), so the hot path pays nothing for it. Hot paths
count once per batch through a pre-validated :meth:`Metrics.child`.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import dataclasses
import itertools
import logging
import math
import re
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import grpc
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeHistogramMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.metrics_core import Metric as Family
from prometheus_client.registry import CollectorRegistry
from prometheus_client.utils import floatToGoString

from sessiongate.core.errors import GatewayError
from sessiongate.v1 import gateway_pb2

__all__ = ["CORE_METRICS", "MAX_COMMAND_NAMES", "MAX_LABEL_VALUES", "OTHER", "PREFIX", "Metric",
           "MetricWarning", "Metrics", "Scrape", "counter", "gauge", "gauge_histogram",
           "histogram", "status_code"]

log = logging.getLogger("sessiongate.metrics")

#: every exported name starts with it
PREFIX = "sessiongate_"
COUNTER, GAUGE, HISTOGRAM, GAUGE_HISTOGRAM = "counter", "gauge", "histogram", "gaugehistogram"
KINDS = (COUNTER, GAUGE, HISTOGRAM, GAUGE_HISTOGRAM)
#: distinct values an open (not enumerated) label keeps per metric; later ones: OTHER
MAX_LABEL_VALUES = 100
#: command names the commands metrics keep apart per gateway (the rest: OTHER)
MAX_COMMAND_NAMES = 64
OTHER = "other"
#: enumerated label combinations exported at 0 before anything is counted, at most
MAX_PREFILLED = 64
_NAME = re.compile(r"[a-z][a-z0-9_]*")
_RESERVED_LABELS = frozenset({"le", "quantile"})

Labels = tuple[tuple[str, tuple[str, ...] | None], ...]


class MetricWarning(UserWarning):
    """A declared metric used as it was not declared (an unknown label, a label value
    outside its declared set, the wrong kind): not counted. An error under pytest
    (``filterwarnings``)."""


@dataclasses.dataclass(frozen=True)
class Metric:
    """One declared metric. Build it with :func:`counter`, :func:`gauge`,
    :func:`histogram` or :func:`gauge_histogram`.

    :param name: lower case, without the ``sessiongate_`` prefix (added on export) and,
        for a counter, without ``_total`` (added too). A plugin's start with its name.
    :param labels: each label with its allowed values, or None for an open label whose
        values the code bounds (say how in ``help``); a label a caller leaves out is "".
    :param scraped: its value is read from gateway state at scrape time.
    """

    name: str
    kind: str
    help: str
    labels: Labels = ()
    buckets: tuple[float, ...] = ()
    scraped: bool = False

    @property
    def label_names(self) -> tuple[str, ...]:
        return tuple(name for name, _values in self.labels)

    @property
    def exported(self) -> str:
        """The name on the ``/metrics`` page (a histogram's series add ``_bucket``...)."""
        return PREFIX + self.name + ("_total" if self.kind == COUNTER else "")

    def problems(self) -> list[str]:
        """What is wrong with this declaration (empty: nothing)."""
        found = []
        if not _NAME.fullmatch(self.name) or self.name.startswith(PREFIX):
            found.append("a name is lower case letters, digits and _, without the "
                         f"{PREFIX} prefix")
        if self.kind == COUNTER and self.name.endswith("_total"):
            found.append("a counter's name does not end in _total (it is added)")
        if self.kind not in KINDS:
            found.append(f"kind must be one of {', '.join(KINDS)}")
        if self.scraped != (self.kind == GAUGE_HISTOGRAM) and self.kind != GAUGE:
            found.append("only gauges may be scraped, and gauge histograms always are")
        if self.kind in (HISTOGRAM, GAUGE_HISTOGRAM) and (
                not self.buckets or list(self.buckets) != sorted(set(self.buckets))
                or not all(math.isfinite(b) for b in self.buckets)):
            found.append("a histogram needs finite buckets in increasing order")
        names = self.label_names
        for label in names:
            if not _NAME.fullmatch(label) or label in _RESERVED_LABELS:
                found.append(f"label {label!r} is not a valid label name")
        if len(set(names)) != len(names):
            found.append("a label is named twice")
        if not self.help.strip():
            found.append("help is empty")
        return found


def _labels(labels: Mapping[str, Iterable[str] | None] | None) -> Labels:
    return tuple((name, None if values is None else tuple(values))
                 for name, values in (labels or {}).items())


def counter(name: str, help: str, labels: Mapping[str, Iterable[str] | None] | None = None,
            ) -> Metric:
    """A count that only goes up (``gateway.metrics.inc(name, **labels)``)."""
    return Metric(name, COUNTER, help, _labels(labels))


def gauge(name: str, help: str, labels: Mapping[str, Iterable[str] | None] | None = None, *,
          scraped: bool = False) -> Metric:
    """A value that goes up and down (``metrics.set`` / ``metrics.inc``); ``scraped``:
    read from gateway state at scrape time (core's)."""
    return Metric(name, GAUGE, help, _labels(labels), scraped=scraped)


def histogram(name: str, help: str, buckets: Iterable[float],
              labels: Mapping[str, Iterable[str] | None] | None = None) -> Metric:
    """A distribution of observations (``metrics.observe``), cumulative buckets."""
    return Metric(name, HISTOGRAM, help, _labels(labels), tuple(buckets))


def gauge_histogram(name: str, help: str, buckets: Iterable[float],
                    labels: Mapping[str, Iterable[str] | None] | None = None) -> Metric:
    """A distribution of current values, rebuilt at each scrape (core's)."""
    return Metric(name, GAUGE_HISTOGRAM, help, _labels(labels), tuple(buckets), scraped=True)


# -- core's metrics --------------------------------------------------------------------

#: gRPC status code names (OK, CANCELLED, ...)
CODES = tuple(code.name for code in grpc.StatusCode)
#: a session's states (core/sessions/session.py), and those a session can move to
STATES = ("OPENING", "READY", "DETACHED", "CLOSING", "CLOSED", "FAULTED")
ENTERED_STATES = STATES[1:]
GAP_REASONS = tuple(name for name in gateway_pb2.GapReason.keys()
                    if name != "GAP_REASON_UNSPECIFIED")
FAULT_CAUSES = ("start_failed", "overflow", "worker_exited", "worker_disconnected",
                "heartbeat_timeout", "protocol_error", "internal", "other")
ADOPTION_OUTCOMES = ("adopted", "bad_nonce", "pid_mismatch", "expired", "gone",
                     "already_live", "failed")
AUTH_FAILURES = ("no_credential", "unknown_key", "revoked_key", "refused_by_plugin")
OVERFLOW_POLICIES = ("skip", "disconnect_subscriber", "fail_fast")
EXIT_CLASSES = ("clean", "error", "signal", "unknown")


def status_code(error: BaseException | None) -> str:
    """The gRPC code name a failure reaches a client with (``OK`` for None)."""
    if error is None:
        return "OK"
    if isinstance(error, GatewayError):
        return error.code if error.code in CODES else "INTERNAL"
    if isinstance(error, asyncio.CancelledError):
        return "CANCELLED"
    return "INTERNAL"


#: seconds: a session's start (process and handshake), and calls
OPEN_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
CALL_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 30.0)
#: events behind
LAG_BUCKETS = (0, 1, 10, 100, 1000, 10_000, 100_000, 1_000_000)

CORE_METRICS: tuple[Metric, ...] = (
    # sessions
    gauge("sessions", "Sessions by state (CLOSED and FAULTED only while their teardown "
          "ends).", {"state": STATES}, scraped=True),
    counter("session_transitions", "Session state changes, by the state entered.",
            {"state": ENTERED_STATES}),
    counter("session_opens", "OpenSession outcomes: OK, or the status code the open "
            "failed with.", {"code": CODES}),
    histogram("session_open_seconds", "Time of a successful OpenSession in the gateway, "
              "until the session is READY and announced to plugins; worker: a spare "
              "(started ahead) or cold (started for it).", OPEN_BUCKETS,
              {"worker": ("spare", "cold")}),
    counter("session_faults", "Sessions faulted, by cause (start_failed: the worker did "
            "not start or adoption failed; overflow: fail_fast on a slow sole subscriber).",
            {"cause": FAULT_CAUSES}),
    counter("session_adoptions", "Re-adoptions of workers an earlier gateway left running "
            "(reattach): adopted, or refused and why (bad_nonce: it presented another "
            "nonce; pid_mismatch: the pid is another process now or the connection came "
            "from another pid; expired: it did not phone home in the window; gone: no such "
            "process).", {"outcome": ADOPTION_OUTCOMES}),
    gauge("spare_workers_ready", "Workers of the default backend started ahead and "
          "waiting for a session.", scraped=True),
    # commands
    counter("commands", "Invoke commands by command and status code. command: a name the "
            "session's backend answered (so one it declares), at most "
            f"{MAX_COMMAND_NAMES} names per gateway; others count as '{OTHER}'.",
            {"command": None, "code": CODES}),
    histogram("command_seconds", "Invoke command latency in the gateway (worker round "
              "trip), by command as in commands_total.", CALL_BUCKETS, {"command": None}),
    # events
    counter("events_received", "Events received from workers."),
    counter("events_delivered", "Events handed to subscribers (each subscriber's copy "
            "counts: with fan-out, more than received)."),
    gauge("events_delivered_per_second", "Events handed to subscribers per second over "
          "about the last minute (sampled every 5 s; what sessiongate status shows: in "
          "Prometheus, rate() of events_delivered_total says the same).", scraped=True),
    gauge("subscribers", "Attached subscribers by kind: grpc-event-stream (client "
          "streams) or an internal consumer's name (bounded by the plugins' code).",
          {"kind": None}, scraped=True),
    gauge_histogram("subscriber_lag_events", "Per live session, how many events its "
                    "slowest subscriber is behind (one observation per session with "
                    "subscribers).", LAG_BUCKETS),
    counter("queue_overflows", "Subscribers that fell too far behind (or stalled the "
            "worker) by kind and the policy applied: skip (SKIP, a SLOW_SUBSCRIBER gap), "
            "disconnect_subscriber (its stream ended RESOURCE_EXHAUSTED), fail_fast (the "
            "session faulted).", {"kind": None, "policy": OVERFLOW_POLICIES}),
    counter("gaps", "Gaps announced to subscribers (ReplayGap), by reason.",
            {"reason": GAP_REASONS}),
    counter("subscriptions_ended", "Subscriptions that left their session, by reason "
            "(client gone, overflow, replaced, session ended, a plugin's reason).",
            {"reason": None}),
    counter("credit_holds", "Times the gateway began holding workers' credit because its "
            "event loop lagged more than events.max_loop_lag_ms (events are delayed, never "
            "dropped)."),
    gauge("credit_held_sessions", "Sessions whose worker waits for credit the gateway "
          "holds while its event loop lags.", scraped=True),
    gauge("event_loop_lag_seconds", "How late the gateway's event loop last woke a short "
          "sleep (measured every 50 ms).", scraped=True),
    gauge("event_log_events", "Events retained over all live sessions (unread backlog "
          "and replay rings).", scraped=True),
    gauge("event_log_oldest_age_seconds", "Age of the oldest event retained by any live "
          "session (0 with none).", scraped=True),
    # workers
    counter("worker_exits", "Worker processes that ended, by exit status class (clean: 0; "
            "error: > 0; signal: killed by one; unknown: a re-adopted worker) and whether "
            "the gateway asked it to end.",
            {"code_class": EXIT_CLASSES, "expected": ("true", "false")}),
    counter("worker_heartbeat_timeouts", "Workers silent past "
            "workers.heartbeat_timeout_seconds (their sessions fault)."),
    # identity
    counter("auth_failures", "Calls refused UNAUTHENTICATED, by reason (no_credential: no "
            "usable bearer header; refused_by_plugin: a plugin's credential, such as an "
            "expired sign-in token).", {"reason": AUTH_FAILURES}),
    counter("authz_decisions", "Authorization decisions by action (open, close, get, list, "
            "invoke, stream, resume, or a plugin's) and outcome.",
            {"action": None, "outcome": ("allow", "deny")}),
    # calls
    counter("rpcs", "gRPC calls by full method name (the services the gateway serves) and "
            "status code.", {"method": None, "code": CODES}),
    histogram("rpc_seconds", "Unary gRPC call latency by method (streams are left out: "
              "their duration is their subscriber's).", CALL_BUCKETS, {"method": None}),
)


# -- counting -----------------------------------------------------------------------------


class _Histogram:
    """One histogram series: a count per bucket (the last: above every bound) and a sum."""

    __slots__ = ("counts", "total")

    def __init__(self, size: int) -> None:
        self.counts = [0] * size
        self.total = 0.0

    def observe(self, bounds: tuple[float, ...], value: float) -> None:
        self.counts[bisect.bisect_left(bounds, value)] += 1
        self.total += value

    def cumulative(self, bounds: tuple[float, ...]) -> list[tuple[str, float]]:
        running = list(itertools.accumulate(self.counts))
        return [(floatToGoString(b), running[i]) for i, b in enumerate(bounds)] + \
            [("+Inf", running[-1])]


class _Series:
    """A declared metric's values, by label values (in declaration order)."""

    __slots__ = ("metric", "open_values", "values")

    def __init__(self, metric: Metric) -> None:
        self.metric = metric
        self.values: dict[tuple[str, ...], Any] = {}
        #: values seen so far of each open label (capped at MAX_LABEL_VALUES)
        self.open_values: dict[str, set[str]] = {
            name: set() for name, allowed in metric.labels if allowed is None}
        for key in _prefilled(metric):
            if metric.kind in (COUNTER, GAUGE) and not metric.scraped:
                self.values[key] = 0
            elif metric.kind == HISTOGRAM:
                self.values[key] = _Histogram(len(metric.buckets) + 1)


def _prefilled(metric: Metric) -> list[tuple[str, ...]]:
    """The label combinations exported before anything is counted: every one when every
    label is enumerated and there are at most MAX_PREFILLED (so a rate sees the zero)."""
    if any(values is None for _name, values in metric.labels):
        return []
    keys = list(itertools.islice(itertools.product(
        *(values for _name, values in metric.labels if values is not None)),
        MAX_PREFILLED + 1))
    return keys if len(keys) <= MAX_PREFILLED else []


class Scrape:
    """What one scrape reads from the gateway: ``set`` a scraped gauge, ``observe`` into a
    gauge histogram. Given to each :meth:`Metrics.on_scrape` callback."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self.values: dict[str, dict[tuple[str, ...], Any]] = {}

    def _slot(self, name: str, kind: str, labels: Mapping[str, Any]) -> tuple[Any, Any] | None:
        series = self._metrics.series(name, kind, "scrape", scraped=True)
        key = None if series is None else self._metrics.key(series, labels)
        if key is None:
            return None
        return series, key

    def set(self, name: str, value: float, **labels: Any) -> None:
        """The gauge's value now (called again for the same labels: added up)."""
        found = self._slot(name, GAUGE, labels)
        if found is not None:
            values = self.values.setdefault(name, {})
            values[found[1]] = values.get(found[1], 0) + value

    def observe(self, name: str, value: float, **labels: Any) -> None:
        found = self._slot(name, GAUGE_HISTOGRAM, labels)
        if found is not None:
            series, key = found
            values = self.values.setdefault(name, {})
            if key not in values:
                values[key] = _Histogram(len(series.metric.buckets) + 1)
            values[key].observe(series.metric.buckets, value)


class Metrics:
    """The gateway's metrics (``gateway.metrics``): declared, counted, exported through
    :attr:`registry` (one ``CollectorRegistry`` per gateway).

    Count from the event loop only: ``inc`` (counters, gauges), ``set`` (gauges),
    ``observe`` (histograms); ``get`` reads a value back (tests, the status command).
    """

    def __init__(self, declared: Iterable[Metric] = CORE_METRICS) -> None:
        self._series: dict[str, _Series] = {}
        self._undeclared: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        self._scrapers: list[Callable[[Scrape], None]] = []
        self._capped: set[str] = set()
        self._unknown: set[str] = set()  # undeclared names, logged once each
        problems = self.declare(declared, owner="core")
        if problems:
            raise ValueError("; ".join(problems))
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(self))

    @property
    def declared(self) -> list[Metric]:
        """Every declared metric, in declaration order (core's first)."""
        return [series.metric for series in self._series.values()]

    def declare(self, metrics: Iterable[Metric], owner: str) -> list[str]:
        """Add ``owner``'s declarations (a plugin's names start with its own name and
        ``_``). Returns the problems, one line each naming owner and metric; a metric
        with a problem is left out (its use then warns)."""
        problems = []
        for metric in metrics:
            if not isinstance(metric, Metric):
                problems.append(f"{owner} declares {metric!r}, not a Metric")
                continue
            found = metric.problems()
            if owner != "core" and not metric.name.startswith(f"{owner}_"):
                found.append(f"a plugin's metric names start with its name ({owner}_)")
            if metric.name in self._series:
                found.append("declared already")
            if found:
                problems.append(f"{owner}: metric {metric.name!r}: {'; '.join(found)}")
                continue
            self._series[metric.name] = _Series(metric)
        return problems

    # -- used as declared ----------------------------------------------------------------

    def _misuse(self, message: str) -> None:
        warnings.warn(MetricWarning(message), stacklevel=4)

    def series(self, name: str, kind: str, verb: str, *, scraped: bool = False,
               ) -> _Series | None:
        """The declared metric ``name`` if it is of ``kind`` (counter covers gauge for
        ``inc``); else a :class:`MetricWarning` and None."""
        series = self._series.get(name)
        if series is None:
            if name not in self._unknown:
                self._unknown.add(name)
                log.warning("metric %r is not declared (core/metrics.py, or the plugin's "
                            "sg_metrics hook; docs/metrics.md): not exported", name)
            return None
        metric = series.metric
        kinds = (COUNTER, GAUGE) if kind == COUNTER else (kind,)
        if metric.kind not in kinds or metric.scraped != scraped:
            what = "scraped " + metric.kind if metric.scraped else metric.kind
            self._misuse(f"metric {name!r} is a {what}: it cannot be given to {verb}")
            return None
        return series

    def key(self, series: _Series, labels: Mapping[str, Any]) -> tuple[str, ...] | None:
        """The label values in declaration order, checked (None: a MetricWarning)."""
        metric = series.metric
        if not metric.labels:
            if labels:
                self._misuse(f"metric {metric.name!r} has no labels, given "
                             f"{', '.join(sorted(labels))}")
                return None
            return ()
        unknown = [name for name in labels if name not in metric.label_names]
        if unknown:
            self._misuse(f"metric {metric.name!r} has no label {', '.join(unknown)} "
                         f"(declared: {', '.join(metric.label_names)})")
            return None
        key = []
        for name, allowed in metric.labels:
            value = labels.get(name, "")
            value = value if type(value) is str else str(value)
            if allowed is not None:
                if value and value not in allowed:
                    self._misuse(f"metric {metric.name!r}: {name}={value!r} is not one of "
                                 f"its declared values ({', '.join(allowed)})")
                    return None
            elif value not in (seen := series.open_values[name]):
                if len(seen) < MAX_LABEL_VALUES:
                    seen.add(value)
                else:
                    if metric.name not in self._capped:
                        self._capped.add(metric.name)
                        log.warning("metric %s: label %s has had %d values; further ones "
                                    "count as %r", metric.name, name, MAX_LABEL_VALUES, OTHER)
                    value = OTHER
            key.append(value)
        return tuple(key)

    # -- counting ------------------------------------------------------------------------

    def inc(self, name: str, amount: float = 1, **labels: Any) -> None:
        """Add ``amount`` to a counter (never negative) or a gauge."""
        series = self._series.get(name)
        if series is None:
            key = (name, tuple(sorted((k, str(v)) for k, v in labels.items())))
            self._undeclared[key] = self._undeclared.get(key, 0) + amount
        series = self.series(name, COUNTER, "inc()")
        if series is None:
            return
        if amount < 0 and series.metric.kind == COUNTER:
            self._misuse(f"metric {name!r} is a counter: inc({amount}) would lower it")
            return
        key = self.key(series, labels)
        if key is not None:
            values = series.values
            values[key] = values.get(key, 0) + amount

    def set(self, name: str, value: float, **labels: Any) -> None:
        """Set a gauge."""
        series = self.series(name, GAUGE, "set()")
        key = None if series is None else self.key(series, labels)
        if series is not None and key is not None:
            series.values[key] = value

    def observe(self, name: str, value: float, **labels: Any) -> None:
        """Count one observation of a histogram."""
        series = self.series(name, HISTOGRAM, "observe()")
        key = None if series is None else self.key(series, labels)
        if series is None or key is None:
            return
        found = series.values.get(key)
        if found is None:
            found = series.values[key] = _Histogram(len(series.metric.buckets) + 1)
        found.observe(series.metric.buckets, value)

    def child(self, name: str, **labels: Any) -> Callable[[float], None]:
        """``inc`` for one counter and label set, checked once: for hot paths (a dict
        update a call)."""
        series = self.series(name, COUNTER, "child()")
        key = None if series is None else self.key(series, labels)
        if series is None or key is None:
            return _ignore
        values = series.values
        values.setdefault(key, 0)

        def inc(amount: float = 1) -> None:
            values[key] += amount

        return inc

    # -- reading -------------------------------------------------------------------------

    def on_scrape(self, callback: Callable[[Scrape], None]) -> None:
        """Call ``callback(scrape)`` at every scrape to set the scraped metrics."""
        self._scrapers.append(callback)

    def scrape(self) -> Scrape:
        """The scraped values now (a failing callback is logged and skipped)."""
        scrape = Scrape(self)
        for callback in self._scrapers:
            try:
                callback(scrape)
            except Exception:
                log.exception("reading the gateway's state for /metrics failed")
        return scrape

    def get(self, name: str, **labels: Any) -> float:
        """The sum over every label set that includes ``labels`` (a histogram's: the
        number of observations). A scraped metric is read now."""
        series = self._series.get(name)
        if series is None:
            want = {(k, str(v)) for k, v in labels.items()}
            return sum(v for (n, ls), v in self._undeclared.items()
                       if n == name and want <= set(ls))
        metric = series.metric
        unknown = [label for label in labels if label not in metric.label_names]
        if unknown:
            self._misuse(f"metric {name!r} has no label {', '.join(unknown)}")
            return 0
        values = self.scrape().values.get(name, {}) if metric.scraped else series.values
        positions = [(metric.label_names.index(k), str(v)) for k, v in labels.items()]
        total: float = 0
        for key, value in values.items():
            if all(key[i] == v for i, v in positions):
                total += sum(value.counts) if isinstance(value, _Histogram) else value
        return total

    def families(self) -> Iterator[Family]:
        """The metrics as Prometheus metric families, in declaration order."""
        scraped = self.scrape().values
        for series in self._series.values():
            metric = series.metric
            values = scraped.get(metric.name, {}) if metric.scraped else series.values
            if metric.scraped and metric.kind == GAUGE:
                values = {**dict.fromkeys(_prefilled(metric), 0), **values}
            if not metric.labels and not values:
                values = {(): 0 if metric.kind in (COUNTER, GAUGE)
                          else _Histogram(len(metric.buckets) + 1)}
            yield _family(metric, values)


def _ignore(amount: float = 1) -> None:
    """What :meth:`Metrics.child` gives for a metric it refused (it warned already)."""


def _family(metric: Metric, values: Mapping[tuple[str, ...], Any]) -> Family:
    name, names = PREFIX + metric.name, list(metric.label_names)
    family: Any
    if metric.kind == COUNTER:
        family = CounterMetricFamily(name, metric.help, labels=names)
    elif metric.kind == GAUGE:
        family = GaugeMetricFamily(name, metric.help, labels=names)
    elif metric.kind == HISTOGRAM:
        family = HistogramMetricFamily(name, metric.help, labels=names)
    else:
        family = GaugeHistogramMetricFamily(name, metric.help, labels=names)
    for key, value in sorted(values.items()):
        if metric.kind == HISTOGRAM:
            family.add_metric(list(key), value.cumulative(metric.buckets), value.total)
        elif metric.kind == GAUGE_HISTOGRAM:
            family.add_metric(list(key), value.cumulative(metric.buckets), value.total)
        else:
            family.add_metric(list(key), value)
    return family


class _Collector:
    """Hands the registry the gateway's metrics at each collection (a scrape)."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Family]:
        return self._metrics.families()


class RecentRate:
    """A counter's rate over about the last ``seconds``, from a sample every ``every``
    seconds (a bounded ring: ``seconds / every`` samples)."""

    def __init__(self, seconds: float = 60.0, every: float = 5.0) -> None:
        self.every = every
        self._samples: collections.deque[tuple[float, float]] = collections.deque(
            maxlen=int(seconds // every) + 1)

    def sample(self, now: float, value: float) -> None:
        self._samples.append((now, value))

    def rate(self, now: float, value: float) -> float:
        """Per second, from the oldest sample kept to ``value`` read ``now``."""
        if not self._samples:
            return 0.0
        then, before = self._samples[0]
        return (value - before) / (now - then) if now > then else 0.0
