"""What keeps the ``Login`` RPC from being a password-guessing machine.

* :class:`LoginThreads`: the blocking directory exchanges run on a thread pool of
  their own (never the event loop's default pool, which the worker terminator uses
  too), with at most ``max_logins_in_flight`` threads. A slot is a *thread*: it is
  taken before the exchange is submitted and given back when the thread returns,
  not when the caller stops waiting (a cancelled ``Login`` leaves its thread
  running until the directory answers or times out, and the slot stays taken).
  With every slot taken a new login is refused at once, never queued.
* :class:`FailureBackoff`: failed logins per key (a username, a client address).
  After ``threshold`` failures a key is refused for ``backoff`` seconds, doubling
  with every further failure up to ``maximum``; a key is forgotten after
  ``window`` seconds without a failure (counted from the end of its refusal), and
  the table holds at most ``capacity`` keys (least recently failed dropped first).

Both are thread-safe: the outcome of an exchange is recorded by its thread, so a
login whose caller went away still counts.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import ipaddress
import threading
import time
import urllib.parse
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["FailureBackoff", "LoginThreads", "client_address"]

T = TypeVar("T")
#: 2 ** this at most (the refusal is capped by ``maximum`` long before)
MAX_DOUBLINGS = 32


def client_address(peer: str) -> str:
    """The caller's address as the per-client limit counts it, from gRPC's peer name.

    ``ipv4:192.0.2.7:51234`` → ``192.0.2.7``; an IPv6 address counts by its /64
    (one host usually holds a whole /64); a Unix socket peer is ``unix``; anything
    else is kept whole. Empty for no peer (no per-client limit then).
    """
    peer = urllib.parse.unquote(peer or "")
    scheme, _, rest = peer.partition(":")
    if scheme == "ipv4":
        return rest.rpartition(":")[0] or rest
    if scheme == "ipv6":
        host = rest.rpartition(":")[0] if rest.startswith("[") else rest
        host = host.strip("[]").partition("%")[0]
        try:
            return str(ipaddress.ip_network(f"{host}/64", strict=False))
        except ValueError:
            return host
    if scheme.startswith("unix"):
        return "unix"
    return peer


@dataclasses.dataclass
class _Failures:
    count: int = 0
    last: float = 0.0
    refused_until: float = 0.0


class FailureBackoff:
    """Failed logins per key, and how long each key is refused (see the module)."""

    def __init__(self, *, threshold: int, window: float, backoff: float, maximum: float,
                 capacity: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.threshold = threshold
        self.window = window
        self.backoff = backoff
        self.maximum = maximum
        self.capacity = capacity
        self._clock = clock
        self._lock = threading.Lock()
        #: least recently failed first
        self._keys: collections.OrderedDict[str, _Failures] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._keys)

    def _forgotten(self, entry: _Failures, now: float) -> bool:
        return now - max(entry.last, entry.refused_until) > self.window

    def retry_after(self, key: str) -> float:
        """Seconds ``key`` is still refused (0: it may try now)."""
        with self._lock:
            entry = self._keys.get(key)
            if entry is None:
                return 0.0
            now = self._clock()
            if self._forgotten(entry, now):
                del self._keys[key]
                return 0.0
            return max(0.0, entry.refused_until - now)

    def failed(self, key: str) -> float:
        """Count a failure of ``key``; returns how long it is now refused (0: not yet)."""
        with self._lock:
            now = self._clock()
            entry = self._keys.pop(key, None)
            if entry is None or self._forgotten(entry, now):
                entry = _Failures()
            entry.count += 1
            entry.last = now
            refused = 0.0
            if entry.count >= self.threshold:
                doublings = min(entry.count - self.threshold, MAX_DOUBLINGS)
                refused = min(self.maximum, self.backoff * 2 ** doublings)
                entry.refused_until = now + refused
            self._keys[key] = entry
            while len(self._keys) > self.capacity:
                self._keys.popitem(last=False)
            return refused

    def succeeded(self, key: str) -> None:
        """A successful login forgets the key's failures."""
        with self._lock:
            self._keys.pop(key, None)

    def prune(self) -> int:
        """Forget the keys whose failures are old enough; returns how many."""
        with self._lock:
            now = self._clock()
            stale = [k for k, e in self._keys.items() if self._forgotten(e, now)]
            for key in stale:
                del self._keys[key]
            return len(stale)


class LoginThreads:
    """At most ``size`` directory exchanges at once, each on a thread of this pool."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._lock = threading.Lock()
        self._busy = 0
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None

    @property
    def busy(self) -> int:
        """Threads running an exchange now (whether or not anybody still waits for it)."""
        with self._lock:
            return self._busy

    def start(self) -> None:
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=self.size, thread_name_prefix="acl-ldap")

    def shutdown(self) -> None:
        """Take no more work. Running exchanges end within the directory timeout; their
        threads then exit (not awaited: a thread cannot be cancelled)."""
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)

    def submit(self, fn: Callable[..., T], *args: Any) -> concurrent.futures.Future[T] | None:
        """Run ``fn(*args)`` on a free thread; None when every thread is busy (or the
        pool is shut down)."""
        with self._lock:
            if self._executor is None or self._busy >= self.size:
                return None
            self._busy += 1
            executor = self._executor
        try:
            future = executor.submit(fn, *args)
        except BaseException:
            self._release(None)
            raise
        # runs in the thread once fn has returned (or here, if it already has)
        future.add_done_callback(self._release)
        return future

    def _release(self, _future: object) -> None:
        with self._lock:
            self._busy -= 1
