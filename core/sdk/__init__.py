"""What runs inside a worker process: the backend SDK and the ``sim`` reference backend.

Backend authors import from here::

    from sessiongate.core.sdk import Backend, CommandError, command

(``sessiongate.core.worker``, the path of earlier releases, still works.) Kept
import-light: every worker imports this and must start fast (see bench/).
"""

from sessiongate.core.sdk.worker import Backend, CommandError, EventTooLarge, command

__all__ = ["Backend", "CommandError", "EventTooLarge", "command"]
