"""A stand-in upstream for nginx tests: long polls and event streams on demand.

    python -m tests.support.slow_upstream PORT     (0: any free port; prints the port)

GET <any path>?quiet=S    says nothing for S seconds, then answers {"done": true}
GET <path>/events?n=N&gap=S   an event stream: N events `data: <unix time sent>`, S apart
"""

import json
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):  # the name http.server dispatches to
        url = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        if url.path.endswith("/events"):
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.end_headers()
            for i in range(int(query.get("n", "3"))):
                if i:
                    time.sleep(float(query.get("gap", "1")))
                self.wfile.write(f"data: {time.time()}\n\n".encode())
                self.wfile.flush()
            return
        time.sleep(float(query.get("quiet", "0")))
        body = json.dumps({"done": True}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def main() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
    server.daemon_threads = True
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
