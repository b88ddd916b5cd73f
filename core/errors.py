"""Errors that carry a public status code (CONTRACT §2) and a message for people.

Core and plugins raise :class:`GatewayError`; the gRPC layer turns it into
``context.abort(code, message)``. The codes are grpc's, named by string so this
module imports nothing heavy.
"""

from __future__ import annotations

__all__ = [
    "NODE_METADATA",
    "OVERFLOW_MESSAGE",
    "SHUTDOWN_MESSAGE",
    "Aborted",
    "AlreadyExists",
    "DeadlineExceeded",
    "FailedPrecondition",
    "GatewayError",
    "Internal",
    "InvalidArgument",
    "NotFound",
    "OutOfRange",
    "PermissionDenied",
    "ResourceExhausted",
    "StartupError",
    "Unauthenticated",
    "Unavailable",
    "WrongNode",
]

#: Every overflow disconnect carries this text (clients and tests match on it).
OVERFLOW_MESSAGE = "event queue overflow"
#: Every stream a gateway ends, and every call it refuses, because it is shutting down
#: carries this text (UNAVAILABLE); the client tells a shutdown from a network cut by it.
SHUTDOWN_MESSAGE = "gateway shutting down"
#: Trailing metadata naming the gateway node that holds a session (cluster, CONTRACT
#: §8.4): sent with FAILED_PRECONDITION when a call reached another node.
NODE_METADATA = "sessiongate-node"


class StartupError(Exception):
    """The gateway cannot start: one line naming the cause and the fix.

    ``sessiongate serve`` prints it as ``sessiongate: <message>`` and exits 2.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class GatewayError(Exception):
    """An error with a gRPC status code name (``"NOT_FOUND"`` …) and a human message."""

    code: str = "INTERNAL"

    def __init__(self, message: str, *, code: str | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        #: seconds after which a retry may succeed; sent as trailing metadata
        #: ``retry-after`` (whole seconds, rounded up) with the status
        self.retry_after = retry_after
        #: more trailing metadata sent with the status: ``(key, value)`` pairs
        self.trailers: tuple[tuple[str, str], ...] = ()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.code}: {self.message})"


class Unauthenticated(GatewayError):
    code = "UNAUTHENTICATED"


class NotFound(GatewayError):
    code = "NOT_FOUND"


class PermissionDenied(GatewayError):
    code = "PERMISSION_DENIED"


class AlreadyExists(GatewayError):
    code = "ALREADY_EXISTS"


class ResourceExhausted(GatewayError):
    code = "RESOURCE_EXHAUSTED"


class FailedPrecondition(GatewayError):
    code = "FAILED_PRECONDITION"


class InvalidArgument(GatewayError):
    code = "INVALID_ARGUMENT"


class OutOfRange(GatewayError):
    code = "OUT_OF_RANGE"


class DeadlineExceeded(GatewayError):
    code = "DEADLINE_EXCEEDED"


class Unavailable(GatewayError):
    code = "UNAVAILABLE"


class Aborted(GatewayError):
    code = "ABORTED"


class Internal(GatewayError):
    code = "INTERNAL"


class WrongNode(FailedPrecondition):
    """The session is held by another gateway node (cluster): the call must go there.
    Sent as FAILED_PRECONDITION with trailing metadata ``sessiongate-node: <address>``,
    which the Python client and the CLI follow once."""

    def __init__(self, session_id: str, address: str) -> None:
        super().__init__(f"session {session_id} is held by the gateway node at {address}; "
                         f"call that node (the {NODE_METADATA} trailer names it)")
        self.address = address
        self.trailers = ((NODE_METADATA, address),)
