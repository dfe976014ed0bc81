"""Fast self-tests of FaultyProxy against a local echo server (no ComfyUI needed)."""

from __future__ import annotations

import os
import socket
import socketserver
import threading
import time

import pytest

from .faulty_proxy import FaultyProxy


class _EchoHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        self.server.handled += 1  # type: ignore[attr-defined]
        try:
            while data := self.request.recv(65536):
                self.request.sendall(data)
        except OSError:
            pass


class _EchoServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    handled = 0


@pytest.fixture
def echo():
    server = _EchoServer(("127.0.0.1", 0), _EchoHandler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def proxy(echo):
    with FaultyProxy("127.0.0.1", echo.server_address[1]) as p:
        yield p


def _connect(proxy: FaultyProxy) -> socket.socket:
    return socket.create_connection(("127.0.0.1", proxy.port), timeout=2)


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("closed early")
        buf += chunk
    return buf


def _wait_until(predicate, timeout: float = 1.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


def test_transparent_round_trip_with_backpressure(proxy):
    payload = os.urandom(2 * 1024 * 1024)
    with _connect(proxy) as s:
        # Send from a thread: the echo blocks once buffers fill, so reading must run alongside.
        sender = threading.Thread(target=s.sendall, args=(payload,))
        sender.start()
        assert _recv_exactly(s, len(payload)) == payload
        sender.join(2)
        s.shutdown(socket.SHUT_WR)
        assert s.recv(1) == b""  # the half-close travelled to the echo server and back
    assert proxy.url == f"http://127.0.0.1:{proxy.port}"


def test_requests_are_counted_on_keep_alive_connections_and_across_reads(proxy):
    pattern = b"GET /object_info HTTP/"
    proxy.watch_requests(pattern)
    request = b"GET /object_info HTTP/1.1\r\nHost: x\r\n\r\n"
    other = b"GET /object_info/KSampler HTTP/1.1\r\nHost: x\r\n\r\n"
    with _connect(proxy) as s:
        s.sendall(request)  # the first request line (sniffed before the upstream connects)
        assert _recv_exactly(s, len(request)) == request
        for chunk in (request + other, request[:9], request[9:]):  # one cut in the middle
            s.sendall(chunk)
            assert _recv_exactly(s, len(chunk)) == chunk
    assert proxy.requests_seen(pattern) == 3


def test_sever_all_resets_live_connections(proxy):
    with _connect(proxy) as a, _connect(proxy) as b:
        a.sendall(b"x")
        b.sendall(b"y")
        assert a.recv(1) == b"x"
        assert b.recv(1) == b"y"
        assert proxy.sever_all() == 2
        for s in (a, b):
            with pytest.raises(ConnectionResetError):
                s.sendall(b"z")
                s.recv(1)
    with _connect(proxy) as c:  # the proxy keeps accepting
        c.sendall(b"again")
        assert _recv_exactly(c, 5) == b"again"


def test_block_websockets_refuses_only_new_upgrades(proxy, echo):
    ws_request = b"GET /ws?clientId=abc HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n"
    with _connect(proxy) as established:
        established.sendall(ws_request)
        _recv_exactly(established, len(ws_request))
        proxy.block_websockets(True)
        before = echo.handled
        for path in (b"/ws?clientId=abc", b"/api/ws?clientId=abc"):
            with _connect(proxy) as s:
                s.sendall(b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n\r\n")
                with pytest.raises((ConnectionResetError, ConnectionError)):
                    if s.recv(1) == b"":
                        raise ConnectionError("closed")
        assert echo.handled == before  # refused before any upstream connection was made
        assert proxy.blocked_websockets == 2
        with _connect(proxy) as http:
            http.sendall(b"GET /system_stats HTTP/1.1\r\n\r\n")
            assert _recv_exactly(http, 10) == b"GET /syste"
        established.sendall(b"still alive")  # the pre-existing socket is untouched
        assert _recv_exactly(established, 11) == b"still alive"
    proxy.block_websockets(False)
    with _connect(proxy) as s:
        s.sendall(ws_request)
        assert _recv_exactly(s, len(ws_request)) == ws_request


def test_blackhole_stalls_without_closing_then_resumes(proxy):
    with _connect(proxy) as live:
        live.sendall(b"a")
        assert live.recv(1) == b"a"
        proxy.blackhole(True)
        live.sendall(b"lost?")
        with _connect(proxy) as new:
            new.sendall(b"new")
            for s in (live, new):
                s.settimeout(0.2)
                with pytest.raises(TimeoutError):  # no data and, crucially, no EOF/RST
                    s.recv(1)
            proxy.blackhole(False)
            for s, expected in ((live, b"lost?"), (new, b"new")):
                s.settimeout(2)
                assert _recv_exactly(s, len(expected)) == expected


def test_stop_closes_everything(echo):
    def open_fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    baseline = open_fds()
    proxy = FaultyProxy("127.0.0.1", echo.server_address[1])
    with _connect(proxy) as s:
        s.sendall(b"hi")
        assert s.recv(2) == b"hi"
        proxy.stop()
        assert proxy.live_connections() == 0
        with pytest.raises(ConnectionResetError):
            s.sendall(b"z")
            s.recv(1)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", proxy.port), timeout=1)
    # Only this proxy's threads: a session-wide proxy of the integration tests may be running.
    assert not proxy._acceptor.is_alive()
    assert proxy.live_connections() == 0
    # The echo server closes its side asynchronously once it sees the reset.
    assert _wait_until(lambda: open_fds() <= baseline), (open_fds(), baseline)


def test_upstream_down_resets_client():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound but not listening: connections are refused
        # The reset can race the end of the client's own handshake, so it may surface from
        # connect() (evaluated inside pytest.raises) as well as from recv().
        with (
            FaultyProxy("127.0.0.1", port) as proxy,
            pytest.raises((ConnectionResetError, ConnectionError)),
            _connect(proxy) as c,
        ):
            c.sendall(b"GET / HTTP/1.1\r\n\r\n")
            if c.recv(1) == b"":
                raise ConnectionError("closed")
