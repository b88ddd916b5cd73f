"""Typed per-plugin state on the gateway and on each session (pytest's ``Stash``).

A plugin keeps its state under keys only it holds, so no plugin can read or
overwrite another's, and core never reads any::

    GRACE = StashKey[asyncio.Task[None]]("reconnect.grace")
    session.stash[GRACE] = task
    task = session.stash.pop(GRACE, None)
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar, cast, overload

__all__ = ["Stash", "StashKey"]

T = TypeVar("T")
D = TypeVar("D")
_MISSING = object()


class StashKey(Generic[T]):
    """A key of a :class:`Stash`; the value's type is its parameter. Compared by identity."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name  # for repr only

    def __repr__(self) -> str:
        return f"<StashKey {self.name}>"


class Stash:
    """A mapping from :class:`StashKey` to values of the key's type."""

    __slots__ = ("_data",)

    def __init__(self) -> None:
        self._data: dict[StashKey[Any], Any] = {}

    def __setitem__(self, key: StashKey[T], value: T) -> None:
        self._data[key] = value

    def __getitem__(self, key: StashKey[T]) -> T:
        return cast(T, self._data[key])

    def __contains__(self, key: StashKey[Any]) -> bool:
        return key in self._data

    def __delitem__(self, key: StashKey[Any]) -> None:
        del self._data[key]

    def __len__(self) -> int:
        return len(self._data)

    @overload
    def get(self, key: StashKey[T]) -> T | None: ...
    @overload
    def get(self, key: StashKey[T], default: D) -> T | D: ...
    def get(self, key: StashKey[Any], default: Any = None) -> Any:
        return self._data.get(key, default)

    def setdefault(self, key: StashKey[T], default: T) -> T:
        return cast(T, self._data.setdefault(key, default))

    @overload
    def pop(self, key: StashKey[T]) -> T: ...
    @overload
    def pop(self, key: StashKey[T], default: D) -> T | D: ...
    def pop(self, key: StashKey[Any], default: Any = _MISSING) -> Any:
        if default is _MISSING:
            return self._data.pop(key)
        return self._data.pop(key, default)
