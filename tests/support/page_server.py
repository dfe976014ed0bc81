"""A local HTTP server that answers every GET with one body: a page on another origin, a file
for a load generator."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # keep-alive connections left open must not hold the shutdown


@contextmanager
def serving(
    body: bytes, content_type: str = "application/octet-stream", seen: list | None = None
) -> Iterator[str]:
    """Yields the server's base URL (`http://127.0.0.1:<port>`); with `seen`, each request's
    headers are appended to it."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as browsers and load generators use it

        def do_GET(self):  # the name http.server dispatches to
            if seen is not None:
                seen.append(self.headers)
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = _Server(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
