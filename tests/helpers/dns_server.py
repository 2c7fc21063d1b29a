"""A tiny authoritative DNS server on 127.0.0.1 (UDP and TCP on one port), for tests that point
a cluster's resolver at it: it answers A queries for the names it was given with a chosen TTL,
answers AAAA queries with no records (NOERROR), any other name with NXDOMAIN, and counts every
query by (name, type, transport). Messages are parsed and built with dnspython.

    with DnsServer({"backend.test": ["127.0.0.1"]}, ttl=1) as dns:
        ...  # a resolver at ("127.0.0.1", dns.port)
        dns.queries("backend.test")  # A queries so far, UDP and TCP
"""

from __future__ import annotations

import collections
import socket
import struct
import threading

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset


class DnsServer:
    def __init__(self, records: dict[str, list[str]], ttl: int = 1) -> None:
        self._lock = threading.Lock()
        self._records = {_key(name): list(addresses) for name, addresses in records.items()}
        self._ttl = ttl
        self._counts: collections.Counter[tuple[str, str, str]] = collections.Counter()
        self._udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.port = 0
        self._threads: list[threading.Thread] = []
        self._stopped = threading.Event()

    # -- what it answers, what it was asked ----------------------------------------------------

    def set(self, name: str, addresses: list[str], ttl: int | None = None) -> None:
        """From now on, `name` answers `addresses` (and `ttl`, when given, for every name)."""
        with self._lock:
            self._records[_key(name)] = list(addresses)
            if ttl is not None:
                self._ttl = ttl

    def queries(self, name: str, rdtype: str = "A", transport: str | None = None) -> int:
        """Queries of `name` and type so far, over `transport` ("udp", "tcp") or both."""
        with self._lock:
            return sum(
                count
                for (q_name, q_type, q_transport), count in self._counts.items()
                if q_name == _key(name) and q_type == rdtype and transport in (None, q_transport)
            )

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> DnsServer:
        # One port number for both: bind TCP first, then UDP on the same number (retried).
        for _ in range(50):
            self._tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self._tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._tcp.bind(("127.0.0.1", 0))
            port = self._tcp.getsockname()[1]
            try:
                self._udp.bind(("127.0.0.1", port))
            except OSError:
                self._tcp.close()
                continue
            self.port = port
            break
        else:
            raise RuntimeError("no port free for both UDP and TCP")
        self._tcp.listen(16)
        self._udp.settimeout(0.1)
        self._tcp.settimeout(0.1)
        for target, name in ((self._serve_udp, "dns-udp"), (self._serve_tcp, "dns-tcp")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        self._stopped.set()
        for thread in self._threads:
            thread.join(5)
        self._udp.close()
        self._tcp.close()

    def __enter__(self) -> DnsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- serving -------------------------------------------------------------------------------

    def _serve_udp(self) -> None:
        while not self._stopped.is_set():
            try:
                wire, peer = self._udp.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            answer = self._answer(wire, "udp")
            if answer is not None:
                self._udp.sendto(answer, peer)

    def _serve_tcp(self) -> None:
        while not self._stopped.is_set():
            try:
                connection, _ = self._tcp.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with connection:
                connection.settimeout(2)
                self._serve_connection(connection)

    def _serve_connection(self, connection: socket.socket) -> None:
        """Length-prefixed messages until the client closes."""
        while not self._stopped.is_set():
            try:
                size = _read_exactly(connection, 2)
                if size is None:
                    return
                wire = _read_exactly(connection, struct.unpack("!H", size)[0])
            except OSError:
                return
            if wire is None:
                return
            answer = self._answer(wire, "tcp")
            if answer is not None:
                connection.sendall(struct.pack("!H", len(answer)) + answer)

    def _answer(self, wire: bytes, transport: str) -> bytes | None:
        try:
            query = dns.message.from_wire(wire)
        except Exception:  # not a DNS message: no answer, as a real server
            return None
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        if not query.question:
            response.set_rcode(dns.rcode.FORMERR)
            return response.to_wire()
        question = query.question[0]
        name = _key(question.name.to_text())
        rdtype = dns.rdatatype.to_text(question.rdtype)
        with self._lock:
            self._counts[(name, rdtype, transport)] += 1
            addresses = self._records.get(name)
            ttl = self._ttl
        if addresses is None:
            response.set_rcode(dns.rcode.NXDOMAIN)
        elif question.rdtype == dns.rdatatype.A and addresses:
            response.answer.append(
                dns.rrset.from_text_list(question.name, ttl, "IN", "A", addresses)
            )
        return response.to_wire()


def _key(name: str) -> str:
    return name.rstrip(".").lower()


def _read_exactly(connection: socket.socket, size: int) -> bytes | None:
    data = b""
    while len(data) < size:
        try:
            chunk = connection.recv(size - len(data))
        except TimeoutError:
            return None
        if not chunk:
            return None
        data += chunk
    return data
