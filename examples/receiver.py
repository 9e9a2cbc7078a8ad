"""A Jobs Gateway webhook receiver, the smallest a PSA integration can start from.

    WEBHOOK_SECRET=whsec_... PORT=9000 python examples/receiver.py

Each verified event is printed as one JSON line (pipe it to `jq`); the gateway's
`alert_key` is the external id to keep on the ticket an `alert.opened` creates.
"""

from __future__ import annotations

import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks import Webhook, WebhookVerificationError

webhook = Webhook(os.environ["WEBHOOK_SECRET"])
# Delivery is at least once: an event whose answer was lost comes again with the same
# webhook-id. A real integration keeps these ids in its database, next to the tickets.
seen: set[str] = set()
seen_lock = threading.Lock()


class Receiver(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        try:
            # The HMAC of id, timestamp and these exact bytes, and a timestamp within 5
            # minutes (no replays). ValueError: headers or body not even well-formed.
            webhook.verify(body, dict(self.headers.items()))
        except (WebhookVerificationError, ValueError):
            self.send_response(400)  # not from our gateway: never act on it
            self.end_headers()
            return
        with seen_lock:
            first = self.headers["webhook-id"] not in seen
            seen.add(self.headers["webhook-id"])
        if first:
            print(body.decode(), flush=True)  # compact JSON: always one line
        self.send_response(204)  # a repeat is answered 2xx too, or it is retried again
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass  # stdout carries the events only


if __name__ == "__main__":
    address = (os.environ.get("HOST", "127.0.0.1"), int(os.environ.get("PORT", "9000")))
    ThreadingHTTPServer(address, Receiver).serve_forever()
