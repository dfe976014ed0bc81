"""gunicorn's sockets (api/gunicorn_sockets.py, gunicorn.conf.py): each worker listens on its
own, new connections are spread over the workers, a port in use stops the start with a clear
word, and the master opens no control socket of gunicorn's own."""

import os
import socket

import pytest

from tests.support.comfyui import free_port
from tests.support.sidecar import SidecarProcess

LISTEN, ESTABLISHED = "0A", "01"


def sockets_of(pid: int) -> set[str]:
    """The inodes of the sockets process `pid` holds."""
    found = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue  # closed meanwhile
        if target.startswith("socket:["):
            found.add(target[len("socket:[") : -1])
    return found


def tcp_sockets(port: int, state: str, peers: set[int] | None = None) -> set[str]:
    """The inodes of this machine's IPv4 TCP sockets in `state` whose local port is `port`
    (and, with `peers`, whose remote port is one of them)."""
    found = set()
    with open("/proc/net/tcp") as table:
        next(table)
        for line in table:
            fields = line.split()
            local, remote = (int(fields[i].rsplit(":", 1)[1], 16) for i in (1, 2))
            if local == port and fields[3] == state and (peers is None or remote in peers):
                found.add(fields[9])
    return found


def test_each_worker_listens_on_a_socket_of_its_own(sidecar):
    workers = sorted(sidecar.worker_pids())
    listening = tcp_sockets(sidecar.port, LISTEN)
    held = [sockets_of(pid) & listening for pid in workers]
    assert len(workers) == 2 and all(len(mine) == 1 for mine in held), held
    assert held[0] != held[1]  # not one socket inherited by both


def test_the_master_opens_no_control_socket(sidecar):
    # gunicorn's own (gunicornc): one path per user, shared by every gunicorn it runs.
    log = sidecar.log_path.read_text(errors="replace")
    assert "Listening at" in log  # the master's start is in this log
    assert "Control socket" not in log, log


def test_connections_opened_at_once_are_spread_over_the_workers(sidecar):
    # On one shared socket, the worker that is awake accepted a burst of connections alone
    # (a third of the throughput of two workers, docs/benchmarks.md).
    clients = [socket.create_connection(("127.0.0.1", sidecar.port), 10) for _ in range(32)]
    try:
        request = f"GET /api/status/nothing-here HTTP/1.1\r\nHost: 127.0.0.1:{sidecar.port}\r\n\r\n"
        for client in clients:
            client.sendall(request.encode())
        for client in clients:
            assert client.recv(64).startswith(b"HTTP/1.1 404")
        # Kept alive: the worker that accepted each connection still holds it (other tests'
        # connections to this sidecar, nginx's among them, are not counted).
        ours = {client.getsockname()[1] for client in clients}
        connected = tcp_sockets(sidecar.port, ESTABLISHED, ours)
        held = {pid: len(sockets_of(pid) & connected) for pid in sidecar.worker_pids()}
        assert sum(held.values()) == 32, held
        # Spread by the kernel over two sockets: fewer than 4 of 32 on one has a chance of
        # about one in 400,000.
        assert min(held.values()) >= 4, held
    finally:
        for client in clients:
            client.close()


def test_a_port_in_use_stops_the_start_with_a_clear_message(tmp_path):
    port = free_port()
    with socket.socket() as other:
        other.bind(("127.0.0.1", port))
        other.listen()
        process = SidecarProcess(
            {"WORKSPACE_PATH": str(tmp_path / "workspace"), "TRACKER_ENABLED": "false"},
            tmp_path / "gunicorn.log",
            port,
        )
        try:
            with pytest.raises(AssertionError, match="gunicorn exited"):
                process.start(timeout=30)
        finally:
            process.stop()
    log = (tmp_path / "gunicorn.log").read_text()
    assert f"127.0.0.1:{port} is in use by another program" in log, log
    assert "Booting worker" not in log
