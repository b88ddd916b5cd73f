"""Who a log line is about (session, subscriber, key), carried by a context variable.

A request handler binds the ids it knows; tasks started from it inherit them (asyncio
copies the context into every task), and a session's or worker's own tasks are started
with the session's id bound (:class:`sessiongate.core.tasks.OwnedTasks`). The JSON log
format writes them as fields, so a line can be filtered by session without parsing its
text. Ids only: never a key, token or nonce.
"""

from __future__ import annotations

import contextvars
import types
from collections.abc import Mapping

__all__ = ["FIELDS", "bind", "current"]

#: the fields, in the order a JSON line shows them
FIELDS = ("session_id", "subscriber_id", "key_id")

_bound: contextvars.ContextVar[Mapping[str, str]] = contextvars.ContextVar(
    "sessiongate_log_fields", default=types.MappingProxyType({}))


def bind(**fields: str) -> None:
    """Add ids to the current context (this task and the tasks it starts from now on).

    Empty values are left out; a name outside :data:`FIELDS` is a programming error.
    """
    unknown = set(fields) - set(FIELDS)
    if unknown:
        raise ValueError(f"not a log field: {', '.join(sorted(unknown))}")
    merged = {**_bound.get(), **{k: v for k, v in fields.items() if v}}
    _bound.set(merged)


def current() -> Mapping[str, str]:
    """The ids bound in the current context."""
    return _bound.get()
