"""A webhook receiver, run as its own process by the integration tests.

It checks every request the way docs/integrations.md tells receivers to, with the Standard
Webhooks library, answers 503 to the first FAIL_FIRST attempts of each webhook-id (a receiver
that is down for a while), 200 after that, and appends one JSON line per request to its log:
the webhook-id, whether the signature verified, what it answered, and the body.

    python -m tests.support.webhook_receiver --port 8099 --secret whsec_... --fail-first 2 \\
        --log /tmp/hooks.jsonl
"""

from __future__ import annotations

import argparse
import json
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks import Webhook, WebhookVerificationError


def serve(port: int, secret: str, fail_first: int, log_path: str) -> None:
    wh = Webhook(secret)
    attempts: Counter = Counter()
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            record = {"path": self.path, "id": self.headers.get("webhook-id")}
            try:
                # The receiver check of docs/integrations.md.
                record["body"] = wh.verify(raw, dict(self.headers))
                record["verified"] = True
            except WebhookVerificationError as exc:
                record["verified"], record["error"] = False, str(exc)
            with lock:
                attempts[record["id"]] += 1
                record["attempt"] = attempts[record["id"]]
                status = 503 if record["attempt"] <= fail_first else 200
                if not record["verified"]:
                    status = 400
                record["answered"] = status
                with open(log_path, "a") as log:
                    log.write(json.dumps(record) + "\n")
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    print("ready", flush=True)
    server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--secret", required=True)
    parser.add_argument("--fail-first", type=int, default=0)
    parser.add_argument("--log", required=True)
    args = parser.parse_args()
    serve(args.port, args.secret, args.fail_first, args.log)


if __name__ == "__main__":
    main()
