#!/usr/bin/env python3
"""A webhook receiver for occupancy integration rules.

Verifies each request's Standard Webhooks signature with the rule's secret
(the `standardwebhooks` package), drops repeats by `webhook-id`, and prints
every event as one JSON line. Answers 204 to a verified request and 400 to
one whose signature does not verify (the service does not retry a 400).

    OCCUPANCY_WEBHOOK_SECRET=whsec_... python3 webhook_receiver.py --port 8080
"""

import argparse
import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks.webhooks import Webhook, WebhookVerificationError


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args()
    webhook = Webhook(os.environ["OCCUPANCY_WEBHOOK_SECRET"])
    seen: set[str] = set()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            try:
                payload = webhook.verify(body, dict(self.headers))
            except WebhookVerificationError as e:
                self.send_response(400)
                self.end_headers()
                print(json.dumps({"rejected": str(e)}), flush=True)
                return
            msg_id = self.headers["webhook-id"]
            if msg_id not in seen:  # a retry of a delivered batch: same id
                seen.add(msg_id)
                # batched mode: {"type": "batch", "items": [event, ...]}
                for event in payload.get("items", [payload]):
                    print(json.dumps(event), flush=True)
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer((args.host, args.port), Handler)
    print(json.dumps({"listening": server.server_address[1]}), flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
