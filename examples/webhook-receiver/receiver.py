"""A sessiongate webhook receiver: checks each signature, handles each event once.

    SESSIONGATE_WEBHOOK_SECRET=whsec_... python receiver.py --port 8080
"""

import argparse
import json
import os
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from standardwebhooks.webhooks import Webhook


async def print_event(event: dict[str, Any]) -> None:
    print(json.dumps(event), flush=True)


def make_app(secret: str, on_event: Callable[[dict[str, Any]], Awaitable[None]] = print_event,
             ) -> web.Application:
    webhook = Webhook(secret)  # "whsec_..." as `sessiongate webhooks add` printed it
    seen: set[str] = set()  # a real receiver keeps the ids it handled in its database

    async def receive(request: web.Request) -> web.Response:
        body = await request.read()
        try:  # verify raises more than WebhookVerificationError (ValueError, Unicode...)
            event = webhook.verify(body, dict(request.headers))
        except Exception:
            return web.Response(status=400, text="bad signature")
        if request.headers["webhook-id"] not in seen:  # a retry of one handled: say OK
            await on_event(event)
            seen.add(request.headers["webhook-id"])
        return web.Response(status=204)

    app = web.Application(client_max_size=1 << 20)
    app.router.add_post("/", receive)
    return app


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args()
    web.run_app(make_app(os.environ["SESSIONGATE_WEBHOOK_SECRET"]), host=args.host,
                port=args.port)
