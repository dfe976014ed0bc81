"""The master's check that the port is free before each worker binds its own socket
(api/gunicorn_sockets.py)."""

import socket

import pytest

from api.gunicorn_sockets import PortInUse, check_free
from tests.support.comfyui import free_port


def test_a_free_port_passes_and_stays_free():
    port = free_port()
    check_free([("127.0.0.1", port)])
    with socket.socket() as after:
        after.bind(("127.0.0.1", port))  # the check let go of it


def test_a_port_another_socket_listens_on_is_refused_with_its_address():
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        with pytest.raises(PortInUse, match=f"127.0.0.1:{port} is in use by another program"):
            check_free([("127.0.0.1", port)])


def test_a_listener_that_shares_by_so_reuseport_is_refused_too():
    # Another sidecar's worker, say: without the check the two would share the port.
    with socket.socket() as other:
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        other.bind(("127.0.0.1", 0))
        other.listen()
        with pytest.raises(PortInUse):
            check_free([("127.0.0.1", other.getsockname()[1])])


def test_unix_socket_paths_are_left_to_gunicorn(tmp_path):
    check_free([str(tmp_path / "sidecar.sock")])
