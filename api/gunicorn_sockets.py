"""gunicorn's listening sockets: one per worker (SO_REUSEPORT), and a port in use refused at start.

On the one listening socket gunicorn otherwise shares between its workers, the worker that is
awake when connections arrive accepts them, one after the other, before the others are
scheduled: measured, all 32 connections a load generator opened at once went to one of the two
workers in 3 starts of 6, and that worker served a third of the status reads a second that
two workers serve together (docs/benchmarks.md, "One socket per worker"). With `reuse_port`
each worker binds a socket of its own and the kernel spreads new connections over them by
their addresses.

Then only the workers bind, so the master no longer finds a port in use before they start;
and a socket of another program that also asks for SO_REUSEPORT under the same user (a second
sidecar started on the same port) would share the port without a word. `check_free` binds each
address once, without that flag, in the master before any worker starts: a port in use fails
at start, as it did with the shared socket.

Imported by gunicorn's master (gunicorn.conf.py): gunicorn only.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Iterable


class PortInUse(RuntimeError):
    """Another socket listens on an address the sidecar is to bind."""


def check_free(addresses: Iterable[object]) -> None:
    """PortInUse unless each (host, port) of gunicorn's parsed `bind` can be bound now (a
    socket in TIME_WAIT does not count: gunicorn sets SO_REUSEADDR too). Unix socket paths
    are left to gunicorn."""
    for address in addresses:
        if not isinstance(address, tuple):
            continue
        host, port = address[0], address[1]
        family, kind, proto, _, where = socket.getaddrinfo(
            host, port, 0, socket.SOCK_STREAM, 0, socket.AI_PASSIVE
        )[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(where)
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    raise
                raise PortInUse(
                    f"{host}:{port} is in use by another program: stop it, or set API_PORT"
                    " (and API_HOST) to an address that is free"
                ) from None
