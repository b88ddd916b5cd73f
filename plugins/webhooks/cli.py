"""``sessiongate webhooks …``: manage endpoints and deliveries of a running gateway.

Each action calls the gateway's admin service (``sessiongate.v1.Webhooks``) with the
client commands' connection options (``--server``, ``--key``, TLS; by default the
settings' address and the bootstrap admin key), so it needs ``sessions:admin``.
What scripts read goes to stdout (``add``: the endpoint id, then its secret, once;
``--json``: one JSON object a line); words for people go to stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from sessiongate.core import PluginCommand, add_client_options, call_gateway

__all__ = ["WEBHOOKS_COMMAND"]

STATUSES = ("pending", "delivering", "delivered", "failed")


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="webhooks_command", required=True, metavar="ACTION")
    add = actions.add_parser("add", help="add an endpoint; prints its id, then its signing "
                             "secret (shown once)")
    add.add_argument("--url", required=True, help="https://… (http:// only for "
                     "plugins.webhooks.allow_http_hosts)")
    add.add_argument("--event", dest="events", required=True, action="extend", nargs="+",
                     metavar="TYPE", help="event types to receive (session.opened … "
                     "activity.*); repeat or list several")
    listing = actions.add_parser("list", help="the endpoints")
    remove = actions.add_parser("remove", help="remove an endpoint and its waiting deliveries")
    remove.add_argument("endpoint_id", metavar="ID")
    rotate = actions.add_parser("rotate-secret", help="a new signing secret (printed once); "
                                "the previous one signs too for the grace period")
    rotate.add_argument("endpoint_id", metavar="ID")
    rotate.add_argument("--grace-hours", type=_hours, default=24.0,
                        help="how long the previous secret keeps signing (default 24; 0: "
                        "not at all)")
    deliveries = actions.add_parser("deliveries", help="deliveries, newest first")
    deliveries.add_argument("--status", choices=STATUSES)
    deliveries.add_argument("--endpoint", default="", metavar="ID")
    deliveries.add_argument("--limit", type=int, default=100, help="at most this many "
                            "(default 100, at most 1000)")
    redeliver = actions.add_parser("redeliver", help="send a delivery's event again")
    redeliver.add_argument("delivery_id", metavar="DLV_ID")
    test = actions.add_parser("test", help="send a webhook.test event to an endpoint")
    test.add_argument("endpoint_id", metavar="ID")
    for action in (add, listing, remove, rotate, deliveries, redeliver, test):
        # core puts --config before the action; accept it after too
        action.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS,
                            help="user settings file (TOML)")
        add_client_options(action)
        action.add_argument("--json", action="store_true", help="JSON lines on stdout")


def _hours(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of hours") from None
    if not 0 <= value <= 720:
        raise argparse.ArgumentTypeError(f"{value:g} is not 0 to 720 hours")
    return value


def _row(message: Any) -> dict[str, Any]:
    from google.protobuf import json_format

    return json_format.MessageToDict(message, preserving_proto_field_name=True,
                                     always_print_fields_with_no_presence=True)


def _say(text: str) -> None:
    print(text, file=sys.stderr)


async def _call(args: argparse.Namespace, channel: Any, metadata: Any) -> int:
    from sessiongate.v1 import webhooks_pb2 as pb
    from sessiongate.v1 import webhooks_pb2_grpc

    stub = webhooks_pb2_grpc.WebhooksStub(channel)
    action = args.webhooks_command
    as_json = args.json
    if action == "add":
        added = await stub.AddEndpoint(pb.AddEndpointRequest(
            url=args.url, event_types=args.events), metadata=metadata)
        if as_json:
            print(json.dumps({**_row(added.endpoint), "secret": added.secret}))
        else:
            _say(f"added endpoint {added.endpoint.endpoint_id}; its secret is shown once")
            print(added.endpoint.endpoint_id)
            print(added.secret)
    elif action == "list":
        found = await stub.ListEndpoints(pb.ListEndpointsRequest(), metadata=metadata)
        for endpoint in found.endpoints:
            if as_json:
                print(json.dumps(_row(endpoint)))
            else:
                state = endpoint.status + (f" ({endpoint.disabled_reason})"
                                           if endpoint.disabled_reason else "")
                print(f"{endpoint.endpoint_id}  {state}  {endpoint.url}  "
                      f"{','.join(endpoint.event_types)}")
    elif action == "remove":
        removed = await stub.RemoveEndpoint(pb.EndpointRequest(endpoint_id=args.endpoint_id),
                                            metadata=metadata)
        if as_json:
            print(json.dumps(_row(removed)))
        _say(f"removed endpoint {removed.endpoint_id}")
    elif action == "rotate-secret":
        rotated = await stub.RotateSecret(pb.RotateSecretRequest(
            endpoint_id=args.endpoint_id, grace_seconds=round(args.grace_hours * 3600)),
            metadata=metadata)
        if as_json:
            print(json.dumps({**_row(rotated.endpoint), "secret": rotated.secret}))
        else:
            _say(f"endpoint {args.endpoint_id} has a new secret, shown once; the previous "
                 f"one signs too for {args.grace_hours:g} h")
            print(rotated.secret)
    elif action == "deliveries":
        found = await stub.ListDeliveries(pb.ListDeliveriesRequest(
            status=args.status or "", endpoint_id=args.endpoint, limit=args.limit),
            metadata=metadata)
        for delivery in found.deliveries:
            if as_json:
                print(json.dumps(_row(delivery)))
            else:
                answer = (f"HTTP {delivery.last_status_code}" if delivery.last_status_code
                          else "-")
                print(f"{delivery.delivery_id}  {delivery.status:<10} {delivery.event_type}  "
                      f"{delivery.endpoint_id}  attempts={delivery.attempts}  {answer}"
                      + (f"  {delivery.last_error}" if delivery.last_error else ""))
    else:
        request = (pb.RedeliverRequest(delivery_id=args.delivery_id) if action == "redeliver"
                   else pb.EndpointRequest(endpoint_id=args.endpoint_id))
        call = stub.Redeliver if action == "redeliver" else stub.SendTest
        delivery = await call(request, metadata=metadata)
        if as_json:
            print(json.dumps(_row(delivery)))
        else:
            _say(f"queued delivery {delivery.delivery_id} of event {delivery.event_id}")
            print(delivery.delivery_id)
    return 0


async def _run(args: argparse.Namespace, settings: Any) -> int:
    return await call_gateway(args, lambda channel, metadata: _call(args, channel, metadata))


WEBHOOKS_COMMAND = PluginCommand(
    name="webhooks", help="manage webhook endpoints and deliveries (a running gateway)",
    add_arguments=_add_arguments, run=_run)
