"""Serving a WebSocket from a plain WSGI view under gunicorn's gthread worker.

The route is declared with `websocket=True` (Werkzeug matches it only for upgrade requests).
The view checks the request (unknown job, watcher cap) while it can still answer with an
ordinary HTTP error, then `accept()` takes over the connection's socket with simple-websocket
(the library flask-sock wraps) and the view talks to the client from its own worker thread,
exactly like an event stream does. When the view is done it returns `finished(ws)`, which tells
the server that the connection is no longer HTTP: gunicorn closes it on the StopIteration it
gets; other servers get what flask-sock gives them (the same contract flask-sock relies on).
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

from flask import Response, request

from api.exceptions import InvalidRequest, UpgradeRequired, WebSocketUnsupported

if TYPE_CHECKING:
    from simple_websocket import Server

__all__ = ["accept", "close", "finished", "upgrade_required"]  # and ConnectionClosed, below


def __getattr__(name: str) -> Any:
    # simple-websocket (and wsproto) are imported with the first socket, not by every worker
    # at start: most deployments never open one, and they cost a few MB per worker.
    if name == "ConnectionClosed":
        from simple_websocket import ConnectionClosed

        return ConnectionClosed
    raise AttributeError(name)


def upgrade_required() -> UpgradeRequired:
    """The answer to a plain HTTP request for a WebSocket URL."""
    return UpgradeRequired(
        "This URL is a WebSocket: connect with a WebSocket client (ws:// or wss://)"
    )


def accept(ping_interval: float | None = None) -> Server:
    """Complete the handshake of the current request (a route declared with websocket=True)."""
    if request.headers.get("Sec-WebSocket-Version") != "13" or not request.headers.get(
        "Sec-WebSocket-Key"
    ):
        raise InvalidRequest(
            "Not a valid WebSocket handshake (Sec-WebSocket-Version 13 and a key are required)"
        )
    from simple_websocket import Server
    from simple_websocket.errors import SimpleWebsocketError
    from wsproto.utilities import RemoteProtocolError

    try:
        # A small receive limit: clients have nothing to say on these sockets.
        return Server(request.environ, ping_interval=ping_interval, max_message_size=4096)
    except (SimpleWebsocketError, RemoteProtocolError) as exc:
        raise InvalidRequest(f"WebSocket handshake failed: {exc}") from None
    except RuntimeError:
        # No raw socket in this server's environ (not gunicorn or Werkzeug).
        raise WebSocketUnsupported("This server cannot serve WebSockets") from None


def close(ws: Server, reason: int = 1000, message: str | None = None) -> None:
    """Close the socket if the client has not already."""
    from simple_websocket import ConnectionClosed

    with contextlib.suppress(ConnectionClosed):
        ws.close(reason, message)


def finished(ws: Server) -> Response:
    """The view's return value once it has served (and closed) the socket."""

    class Hijacked(Response):
        def __call__(self, environ, start_response):
            if ws.mode == "gunicorn":
                # gunicorn's workers close the connection, and write nothing, on StopIteration.
                raise StopIteration()
            if ws.mode == "werkzeug":
                return super().__call__(environ, start_response)
            return []

    return Hijacked()
