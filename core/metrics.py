"""In-process counters and gauges, labelled; cheap enough for the hot path.

Every named, visible event (overflow, fault, disconnect, ACL decision) is counted
here; ``Metrics.snapshot()`` is what tests and the shutdown log read.
"""

from __future__ import annotations

import collections
from typing import Any

__all__ = ["Metrics"]


class Metrics:
    def __init__(self) -> None:
        self._counters: collections.Counter[tuple[str, tuple[tuple[str, str], ...]]] = (
            collections.Counter())

    def inc(self, name: str, amount: int = 1, **labels: Any) -> None:
        self._counters[(name, tuple(sorted((k, str(v)) for k, v in labels.items())))] += amount

    def get(self, name: str, **labels: Any) -> int:
        """The sum over every label set that includes ``labels``."""
        want = {(k, str(v)) for k, v in labels.items()}
        return sum(v for (n, ls), v in self._counters.items() if n == name and want <= set(ls))

    def snapshot(self) -> dict[str, int]:
        out = {}
        for (name, labels), value in sorted(self._counters.items()):
            label = ",".join(f"{k}={v}" for k, v in labels)
            out[f"{name}{{{label}}}" if label else name] = value
        return out
