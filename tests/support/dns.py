"""A DNS server answering A records from a table the test changes: Docker's embedded DNS
(127.0.0.11 on every compose network) as the containers of tests/deploy see it."""

from __future__ import annotations

import threading

from dnslib import QTYPE, RCODE, RR, A
from dnslib.server import BaseResolver, DNSServer


class _Table(BaseResolver):
    def __init__(self) -> None:
        self.names: dict[str, str] = {}
        self.lock = threading.Lock()

    def resolve(self, request, handler):
        reply = request.reply()
        name = str(request.q.qname).rstrip(".")
        with self.lock:
            address = self.names.get(name)
        if address is None:
            reply.header.rcode = RCODE.NXDOMAIN
        elif request.q.qtype == QTYPE.A:
            # TTL 1: nginx's `resolver ... valid=` decides how long it keeps an answer anyway.
            reply.add_answer(RR(request.q.qname, QTYPE.A, rdata=A(address), ttl=1))
        return reply


class ServiceDNS:
    """Names of compose services (and container host names) -> their addresses."""

    def __init__(self, address: str = "127.0.0.11", port: int = 53) -> None:
        self.address = address
        self.port = port
        self._table = _Table()
        self._server = DNSServer(self._table, address=address, port=port)

    def set(self, name: str, address: str) -> None:
        with self._table.lock:
            self._table.names[name] = address

    def start(self) -> ServiceDNS:
        self._server.start_thread()
        return self

    def stop(self) -> None:
        self._server.stop()
        self._server.server.server_close()
