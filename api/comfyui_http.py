"""Calls to ComfyUI over plain HTTP on http.client: one kept-alive connection per thread.

A call through requests' transport adapter (urllib3's pool, retries and timeouts, requests'
response and cookie handling) cost 0.7-0.9 ms of CPU on the bench host, the same call on
http.client 0.3 ms, and its answer came 0.3-0.4 ms later: a submission makes one such call, and
the tracker and the reconciliation make theirs. api/comfyui.py sends its calls here when ComfyUI's
URL is http:// and no proxy applies to it; https, proxies and multipart uploads keep requests.

Nothing is ever sent twice: a kept-alive connection the server has closed is noticed before the
request is written (it reads as ready, at the end of its stream) and replaced; a failure after the
request is written is the caller's (a retried POST /prompt could run the work twice).
"""

from __future__ import annotations

import http.client
import json
import select
import socket
import threading
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlsplit

from api.exceptions import ComfyUITimeout, ComfyUIUnreachable


class Answer:
    """A whole answer: the part of requests.Response that api/comfyui.py reads."""

    def __init__(self, method: str, url: str, status_code: int, content: bytes) -> None:
        self.status_code = status_code
        self.content = content
        self.url = url
        self.request = SimpleNamespace(method=method)  # as requests' errors name the call

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")

    def json(self) -> Any:
        return json.loads(self.content)


class Connections:
    """This host:port's connections, one per thread (http.client's are not shareable)."""

    def __init__(self, base_url: str) -> None:
        parts = urlsplit(base_url)
        self.base_url = base_url
        self.host = parts.hostname or "localhost"
        self.port = parts.port or 80
        self._origin = len(f"{parts.scheme}://{parts.netloc}")  # what a URL's path follows
        self._local = threading.local()

    def request(
        self,
        method: str,
        url: str,
        body: bytes | None,
        headers: dict[str, str],
        timeout: tuple[float, float],
    ) -> Answer:
        """One call to `url` (this base URL's, with its path and query); (connect, read)
        `timeout`."""
        conn = self._connection(timeout)
        try:
            conn.request(method, url[self._origin :], body, headers)
            response = conn.getresponse()
            content = response.read()
        except TimeoutError as exc:
            self.close()
            raise ComfyUITimeout(f"{method} {url}: no answer within {timeout[1]}s") from exc
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            raise ComfyUIUnreachable(f"cannot connect to {self.base_url}: {exc}") from exc
        if response.will_close:
            self.close()
        return Answer(method, url, response.status, content)

    def close(self) -> None:
        """Close this thread's connection (other threads close theirs when they end)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def _connection(self, timeout: tuple[float, float]) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is not None and _dropped(conn.sock):
            self.close()
            conn = None
        if conn is None:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout[0])
            try:
                conn.connect()
            except TimeoutError as exc:
                raise ComfyUIUnreachable(f"connecting to {self.base_url} timed out") from exc
            except OSError as exc:
                raise ComfyUIUnreachable(f"cannot connect to {self.base_url}: {exc}") from exc
            self._local.conn = conn
        conn.sock.settimeout(timeout[1])
        return conn


def _dropped(sock: socket.socket | None) -> bool:
    """Whether a kept-alive connection can no longer carry a request: closed here, or readable
    while no answer is owed (the server closed it, or sent what nobody asked for)."""
    if sock is None:
        return True
    poller = select.poll()  # not select(): a busy worker's descriptors can pass 1024
    poller.register(sock, select.POLLIN)
    try:
        return bool(poller.poll(0))
    except OSError:
        return True
