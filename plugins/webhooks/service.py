"""The admin gRPC service ``sessiongate.v1.Webhooks`` (proto/sessiongate/v1/webhooks.proto).

Registered on the gateway's server by ``sg_grpc_services``. Every call: a request that
does not decode is ``INVALID_ARGUMENT``; the caller is authenticated as core's calls are
(``GatewayAPI.authenticate``) and needs ``sessions:admin`` (else ``PERMISSION_DENIED``);
the plugin must be running (else ``UNAVAILABLE``); a ``GatewayError`` becomes its status
code, anything else ``INTERNAL`` with the details in the gateway's log only.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf.message import DecodeError

from sessiongate.core import ADMIN_SCOPE
from sessiongate.core.errors import (
    GatewayError,
    InvalidArgument,
    PermissionDenied,
    Unavailable,
)
from sessiongate.v1 import webhooks_pb2

from .runtime import DEFAULT_GRACE_SECONDS, RUNTIME, Endpoint, WebhooksRuntime

if TYPE_CHECKING:
    from google.protobuf.timestamp_pb2 import Timestamp

    from sessiongate.core import GatewayAPI

__all__ = ["SERVICE_NAME", "add_service"]

log = logging.getLogger("sessiongate.plugins.webhooks")

SERVICE = webhooks_pb2.DESCRIPTOR.services_by_name["Webhooks"]
SERVICE_NAME = SERVICE.full_name
#: the longest text a request field may hold (a URL is the longest)
MAX_FIELD = 4096


class _Malformed:
    def __init__(self, name: str) -> None:
        self.name = name


def _decoder(message: Any) -> Callable[[bytes], Any]:
    def decode(data: bytes) -> Any:
        try:
            return message.FromString(data)
        except DecodeError:
            return _Malformed(message.DESCRIPTOR.full_name)
    return decode


def _check(request: Any) -> None:
    if isinstance(request, _Malformed):
        raise InvalidArgument(f"malformed request: the bytes received are not a valid "
                              f"{request.name}")
    for field, value in request.ListFields():
        texts = value if field.is_repeated else [value]
        for text in texts:
            if isinstance(text, str) and (len(text) > MAX_FIELD or
                                          any(ord(c) < 32 or 127 <= ord(c) < 160 for c in text)):
                raise InvalidArgument(f"{field.name} is too long or contains a control "
                                      "character")


def _time(stamp: Timestamp, when: float | None) -> None:
    if when is not None:
        stamp.FromNanoseconds(int(when * 1e9))


def endpoint_message(endpoint: Endpoint) -> webhooks_pb2.Endpoint:
    view = endpoint.public()
    message = webhooks_pb2.Endpoint(
        endpoint_id=view["endpoint_id"], url=view["url"], event_types=view["event_types"],
        status=view["status"], disabled_reason=view["disabled_reason"])
    _time(message.created_at, view["created_at"])
    _time(message.failing_since, view["failing_since"])
    _time(message.previous_secret_expires_at, view["previous_secret_expires_at"])
    return message


def delivery_message(row: Mapping[str, Any]) -> webhooks_pb2.Delivery:
    message = webhooks_pb2.Delivery(
        delivery_id=row["delivery_id"], event_id=row["event_id"],
        event_type=row["event_type"], endpoint_id=row["endpoint_id"], status=row["status"],
        attempts=row["attempts"], last_status_code=row["last_status_code"],
        last_error=row["last_error"])
    _time(message.next_attempt_at, row["next_attempt_at"])
    _time(message.created_at, row["created_at"])
    _time(message.updated_at, row["updated_at"])
    return message


# -- the methods: (runtime, request) → response ------------------------------------------------


async def add_endpoint(runtime: WebhooksRuntime, request: Any) -> Any:
    endpoint, secret = await runtime.add_endpoint(request.url, list(request.event_types))
    return webhooks_pb2.EndpointWithSecret(endpoint=endpoint_message(endpoint), secret=secret)


async def list_endpoints(runtime: WebhooksRuntime, request: Any) -> Any:
    return webhooks_pb2.ListEndpointsResponse(
        endpoints=[endpoint_message(e) for e in runtime.endpoints.values()])


async def remove_endpoint(runtime: WebhooksRuntime, request: Any) -> Any:
    return endpoint_message(await runtime.remove_endpoint(request.endpoint_id))


async def rotate_secret(runtime: WebhooksRuntime, request: Any) -> Any:
    grace = (request.grace_seconds if request.HasField("grace_seconds")
             else DEFAULT_GRACE_SECONDS)
    endpoint, secret = await runtime.rotate_secret(request.endpoint_id, grace)
    return webhooks_pb2.EndpointWithSecret(endpoint=endpoint_message(endpoint), secret=secret)


async def list_deliveries(runtime: WebhooksRuntime, request: Any) -> Any:
    rows = await runtime.deliveries(request.status, request.endpoint_id, request.limit)
    return webhooks_pb2.ListDeliveriesResponse(deliveries=[delivery_message(r) for r in rows])


async def redeliver(runtime: WebhooksRuntime, request: Any) -> Any:
    return delivery_message(await runtime.redeliver(request.delivery_id))


async def send_test(runtime: WebhooksRuntime, request: Any) -> Any:
    return delivery_message(await runtime.send_test(request.endpoint_id))


METHODS: dict[str, Callable[[WebhooksRuntime, Any], Awaitable[Any]]] = {
    "AddEndpoint": add_endpoint,
    "ListEndpoints": list_endpoints,
    "RemoveEndpoint": remove_endpoint,
    "RotateSecret": rotate_secret,
    "ListDeliveries": list_deliveries,
    "Redeliver": redeliver,
    "SendTest": send_test,
}


def _handler(gateway: GatewayAPI, name: str,
             method: Callable[[WebhooksRuntime, Any], Awaitable[Any]]) -> Any:
    async def handle(request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            _check(request)
            identity = await gateway.authenticate(context.invocation_metadata())
            if not identity.is_admin:
                raise PermissionDenied(f"key {identity.key_id} may not manage webhooks: it "
                                       f"needs the {ADMIN_SCOPE} scope")
            runtime = gateway.stash.get(RUNTIME)
            if runtime is None or not runtime.started:
                raise Unavailable("the webhooks plugin is not running (see the gateway log)")
            return await method(runtime, request)
        except GatewayError as exc:
            code = getattr(grpc.StatusCode, exc.code, grpc.StatusCode.INTERNAL)
            await context.abort(code, exc.message)
        except grpc.aio.AbortError:
            raise
        except Exception:
            log.exception("webhooks: %s failed", name)
            await context.abort(grpc.StatusCode.INTERNAL, "internal error (see the gateway log)")
    return handle


def add_service(gateway: GatewayAPI, server: grpc.aio.Server) -> str:
    """Register the service's handlers on ``server``; its full name."""
    handlers = {}
    for method in SERVICE.methods:
        request = getattr(webhooks_pb2, method.input_type.name)
        handlers[method.name] = grpc.unary_unary_rpc_method_handler(
            _handler(gateway, method.name, METHODS[method.name]),
            request_deserializer=_decoder(request),
            response_serializer=lambda message: message.SerializeToString())
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME,
                                                                          handlers),))
    return SERVICE_NAME
