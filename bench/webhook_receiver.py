"""A webhook receiver for the soak benchmark: verifies every delivery, records what came.

    WEBHOOK_SECRET=whsec_... python -m bench.webhook_receiver --port 8902 --out received.jsonl

Each POST (any path) is checked as the Standard Webhooks specification says, with the
`standardwebhooks` package: the HMAC-SHA256 of `webhook-id.webhook-timestamp.body` under the
secret, and a timestamp within its tolerance (5 minutes). It answers 204 to a valid delivery
(a repeat too: delivery is at least once) and 400 to anything else, and appends one JSON line
per POST to `--out`:

    {"webhook_id": "1843", "valid": true, "error": null, "at": 1764400000.123,
     "event": {"id": 1843, "type": "alert.opened", ...}}

(`event`: the verified body; null when the signature did not hold). `GET /stats` answers the
counts so far. A raw ASGI app on uvicorn, like the upstream stand-in, so that it is never what
the deliveries wait on.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import IO, Any

import uvicorn
from standardwebhooks import Webhook, WebhookVerificationError

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class Receiver:
    """The raw ASGI app: verify, record, answer."""

    def __init__(self, secret: str, out: IO[str]) -> None:
        self.webhook = Webhook(secret)
        self.out = out
        self.posts = 0
        self.valid = 0
        self.invalid = 0
        self.ids: set[str] = set()

    def receive(self, headers: dict[str, str], body: bytes) -> bool:
        webhook_id = headers.get("webhook-id")
        event: Any = None
        error: str | None = None
        try:
            event = self.webhook.verify(body, headers)
        except (WebhookVerificationError, ValueError) as exc:  # ValueError: not even well-formed
            error = f"{type(exc).__name__}: {exc}"
        self.posts += 1
        if error is None:
            self.valid += 1
            if webhook_id is not None:
                self.ids.add(webhook_id)
        else:
            self.invalid += 1
        line = {
            "webhook_id": webhook_id,
            "valid": error is None,
            "error": error,
            "at": time.time(),
            "event": event,
        }
        # One line per POST, flushed at once: what the orchestrator reads is always whole.
        self.out.write(json.dumps(line, separators=(",", ":")) + "\n")
        self.out.flush()
        return error is None

    def stats(self) -> dict[str, int]:
        return {
            "posts": self.posts,
            "valid": self.valid,
            "invalid": self.invalid,
            "unique_ids": len(self.ids),
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        if scope["method"] == "GET" and scope["path"] == "/stats":
            await respond(send, 200, json.dumps(self.stats()).encode())
        elif scope["method"] == "POST":
            headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
            ok = self.receive(headers, b"".join(chunks))
            await respond(send, 204 if ok else 400, b"")
        else:
            await respond(send, 404, b"")


async def respond(send: Send, status: int, body: bytes) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8902)
    parser.add_argument("--out", type=Path, required=True, help="the JSON lines to append to")
    args = parser.parse_args()
    secret = os.environ.get("WEBHOOK_SECRET")
    if not secret:
        parser.error("WEBHOOK_SECRET is not set (whsec_<base64>)")
    with args.out.open("a", encoding="utf-8") as out:
        uvicorn.run(
            Receiver(secret, out),
            host=args.host,
            port=args.port,
            loop="uvloop",
            http="httptools",
            lifespan="on",
            access_log=False,
            log_level="warning",
            backlog=4096,
        )


if __name__ == "__main__":
    main()
