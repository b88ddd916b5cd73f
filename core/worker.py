"""The backend SDK's path of earlier releases: ``from sessiongate.core.worker import Backend``.

Kept so existing backends go on working; new code imports :mod:`sessiongate.core.sdk`.
"""

from sessiongate.core.sdk.worker import (
    Backend,
    CommandError,
    EventTooLarge,
    WorkerRuntime,
    command,
    main,
)

__all__ = ["Backend", "CommandError", "EventTooLarge", "WorkerRuntime", "command", "main"]
