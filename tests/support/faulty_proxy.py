"""A TCP proxy for injecting network faults between the sidecar and ComfyUI.

Point the sidecar at ``proxy.url`` instead of ComfyUI's URL; the proxy is transparent until a
test flips a fault on::

    with FaultyProxy("127.0.0.1", comfy.port) as proxy:
        ...                               # sidecar configured with proxy.url
        proxy.sever_all()                 # every live connection gets a TCP RST
        proxy.block_websockets(True)      # new /ws and /api/ws upgrades are refused
        proxy.blackhole(True)             # nothing moves, nothing closes (a dead peer)
        proxy.watch_requests(b"GET /object_info HTTP/")  # then proxy.requests_seen(...)

Each connection is served by one daemon thread that multiplexes both directions over
non-blocking sockets with a short ``select`` timeout, so every fault toggle, ``sever_all()``
and ``stop()`` take effect within about 50 ms and never wait on a blocked ``send``.
"""

from __future__ import annotations

import contextlib
import errno
import select
import socket
import struct
import threading
import time

# select() timeout: the upper bound on how long a connection thread takes to notice a flag.
_TICK = 0.05
_CHUNK = 65536
# How long a new connection may take to send its request line while block_websockets is on.
_SNIFF_TIMEOUT = 5.0
_WS_PREFIXES = (b"GET /ws", b"GET /api/ws")


def _reset_close(sock: socket.socket) -> None:
    """Close with SO_LINGER 0, which makes the kernel send RST instead of an orderly FIN."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


class _Connection:
    """One proxied client connection and its upstream twin."""

    def __init__(self, proxy: FaultyProxy, client: socket.socket) -> None:
        self.proxy = proxy
        self.client = client
        self.upstream: socket.socket | None = None
        self.sever = threading.Event()
        self.done = threading.Event()
        self.is_websocket = False
        self._tail = b""  # the end of what the client sent so far, for patterns cut in two
        self.thread = threading.Thread(target=self._run, name="faulty-proxy-conn", daemon=True)

    def _run(self) -> None:
        graceful = False
        try:
            graceful = self._serve()
        except OSError:
            pass  # a reset or refused peer ends this connection; the other side gets a reset
        finally:
            # Only a connection whose both directions ended with EOF is closed politely: a
            # linger-0 close discards unsent bytes, which is what "abrupt" means everywhere else.
            close = socket.socket.close if graceful else _reset_close
            close(self.client)
            if self.upstream is not None:
                close(self.upstream)
            self.proxy._forget(self)
            self.done.set()

    def _interrupted(self) -> bool:
        return self.sever.is_set() or self.proxy._stopping.is_set()

    def _serve(self) -> bool:
        # Every connection's request line is read first, to know which ones are WebSockets.
        first = self._sniff_request_line()
        if first is None:
            return False
        self.is_websocket = first.startswith(_WS_PREFIXES)
        if self.is_websocket and self.proxy._block_ws.is_set():
            with self.proxy._lock:
                self.proxy.blocked_websockets += 1
            return False  # reset the client
        # A blackholed network would not even let the upstream handshake through.
        while self.proxy._blackhole.is_set():
            if self._interrupted():
                return False
            self.sever.wait(_TICK)
        self.upstream = socket.create_connection(self.proxy.upstream, timeout=5)
        self.upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._count(first)
        return self._pump(first)

    def _count(self, data: bytes) -> None:
        """Count the watched patterns in the client's bytes (keep-alive carries many
        requests per connection; a pattern may straddle two reads)."""
        with self.proxy._lock:
            patterns = list(self.proxy._seen)
        if not patterns:
            return
        text = self._tail + data
        with self.proxy._lock:
            for pattern in patterns:
                self.proxy._seen[pattern] += text.count(pattern)
        self._tail = text[-(max(map(len, patterns)) - 1) :]

    def _sniff_request_line(self) -> bytes | None:
        """Read until the first CRLF (bounded); None if the client went away or severed."""
        buf = b""
        deadline = time.monotonic() + _SNIFF_TIMEOUT
        self.client.settimeout(_TICK)
        # Until the end of an HTTP request line; other protocols: the first bytes are enough.
        while (
            (not buf or (buf.startswith(b"GET") and b"\r\n" not in buf))
            and len(buf) < 8192
            and time.monotonic() < deadline
        ):
            if self._interrupted():
                return None
            try:
                chunk = self.client.recv(_CHUNK)
            except TimeoutError:
                continue
            if not chunk:
                return None
            buf += chunk
        return buf

    def _pump(self, initial: bytes) -> bool:
        """Forward both ways; True if both directions ended with EOF, False if interrupted."""
        client, upstream = self.client, self.upstream
        assert upstream is not None
        client.setblocking(False)
        upstream.setblocking(False)
        # Per direction: bytes read but not yet written (backpressure: a source is read only
        # while its buffer is empty), and whether the source has reached EOF.
        pending = {client: b"", upstream: initial}  # keyed by the *destination* socket
        peer = {client: upstream, upstream: client}
        eof = {client: False, upstream: False}  # keyed by the *source* socket
        while not self._interrupted():
            if self.proxy._blackhole.is_set() or (
                self.is_websocket and self.proxy._blackhole_ws.is_set()
            ):
                # Silent drop: read nothing, write nothing, close nothing. Bytes stay queued
                # in kernel buffers and flow again if the blackhole is lifted (a healed
                # partition), so the HTTP/WS streams are not corrupted.
                self.sever.wait(_TICK)
                continue
            readers = [s for s in (client, upstream) if not eof[s] and not pending[peer[s]]]
            writers = [s for s in (client, upstream) if pending[s]]
            if not readers and not writers:
                return True  # both directions finished
            readable, writable, _ = select.select(readers, writers, [], _TICK)
            for dst in writable:
                try:
                    sent = dst.send(pending[dst])
                except BlockingIOError:
                    continue
                pending[dst] = pending[dst][sent:]
            for src in readable:
                try:
                    data = src.recv(_CHUNK)
                except BlockingIOError:
                    continue
                dst = peer[src]
                if data:
                    pending[dst] = data
                    if src is client:
                        self._count(data)
                    if src is upstream:
                        with self.proxy._lock:
                            self.proxy.bytes_from_upstream += len(data)
                else:
                    # Forward the half-close. Nothing is pending towards dst here: src is
                    # only read while that buffer is empty.
                    eof[src] = True
                    with contextlib.suppress(OSError):
                        dst.shutdown(socket.SHUT_WR)
        return False


class FaultyProxy:
    """Threaded TCP proxy on 127.0.0.1 (free port) in front of ``upstream_host:upstream_port``."""

    def __init__(self, upstream_host: str, upstream_port: int, port: int = 0) -> None:
        self.upstream = (upstream_host, upstream_port)
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", port))
        self._listener.listen(64)
        self._listener.settimeout(_TICK)
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._connections: set[_Connection] = set()
        self._stopping = threading.Event()
        self._block_ws = threading.Event()
        self._blackhole = threading.Event()
        self._blackhole_ws = threading.Event()
        self.accepted = 0  # connections accepted since start (for assertions in tests)
        self.blocked_websockets = 0  # WebSocket upgrades refused by block_websockets
        self.bytes_from_upstream = 0  # bytes the upstream sent, over all connections
        self._seen: dict[bytes, int] = {}  # pattern -> times clients sent it (watch_requests)
        self._acceptor = threading.Thread(
            target=self._accept_loop, name="faulty-proxy-accept", daemon=True
        )
        self._acceptor.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def watch_requests(self, pattern: bytes) -> None:
        """From now on, count how often clients send `pattern` (a request line's start)."""
        with self._lock:
            self._seen.setdefault(pattern, 0)

    def requests_seen(self, pattern: bytes) -> int:
        """How often clients sent `pattern` since watch_requests(pattern)."""
        with self._lock:
            return self._seen[pattern]

    def live_connections(self) -> int:
        with self._lock:
            return len(self._connections)

    # -- faults --------------------------------------------------------------------------------

    def sever_all(self, timeout: float = 2.0) -> int:
        """Reset (TCP RST) every live connection, both towards the client and upstream.

        Returns how many connections were severed. New connections are accepted as usual.
        """
        with self._lock:
            conns = list(self._connections)
        for conn in conns:
            conn.sever.set()
        deadline = time.monotonic() + timeout
        for conn in conns:
            conn.done.wait(max(0.0, deadline - time.monotonic()))
        return len(conns)

    def block_websockets(self, on: bool = True) -> None:
        """While on, new connections whose request line starts with ``GET /ws`` or
        ``GET /api/ws`` are reset right after that line; established sockets keep going."""
        (self._block_ws.set if on else self._block_ws.clear)()

    def blackhole(self, on: bool = True) -> None:
        """While on, live and new connections stay open but no byte moves in either direction
        (no FIN, no RST, no WebSocket close frame). Turning it off resumes the flow."""
        (self._blackhole.set if on else self._blackhole.clear)()

    def blackhole_websockets(self, on: bool = True) -> None:
        """Like blackhole(), but only for WebSocket connections: HTTP keeps flowing. This is
        a WebSocket that died silently (no close frame, no reset) while the server is fine."""
        (self._blackhole_ws.set if on else self._blackhole_ws.clear)()

    # -- lifecycle -----------------------------------------------------------------------------

    def stop(self, timeout: float = 2.0) -> None:
        """Stop accepting, reset every connection and close all sockets (idempotent)."""
        self._stopping.set()
        self._acceptor.join(timeout)
        self.sever_all(timeout)
        with contextlib.suppress(OSError):
            self._listener.close()

    def __enter__(self) -> FaultyProxy:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- internals -----------------------------------------------------------------------------

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    time.sleep(_TICK)
                    continue
                return  # listener closed
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = _Connection(self, client)
            with self._lock:
                if self._stopping.is_set():
                    _reset_close(client)
                    return
                self._connections.add(conn)
                self.accepted += 1
            conn.thread.start()

    def _forget(self, conn: _Connection) -> None:
        with self._lock:
            self._connections.discard(conn)
