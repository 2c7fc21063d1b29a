"""Zero-downtime proof under churn (issue 10): xds-proxy and Envoy 1.40 side by side.

One run per proxy: control-plane-stub, a backend (an Envoy answering with `direct_response`),
the proxy under test with the same bootstrap and flags (`--drain-time-s 2`, gradual), steady
load from well-behaved HTTP/1.1 and HTTP/2 clients, while the listener set churns, one push
every 500 ms, in four phases:

1. full modify of listener `main` (a listener-level field changes: a new version takes over
   the listen socket and the old one drains);
2. in-place filter-chain changes of `main` (a route inside its only chain changes);
3. remove / re-add of listener `second` (no load on it: a removed listener refuses by design);
4. a 100-listener fleet, 10 % of it fully modified per push (load on three of them).

The control plane is killed (SIGKILL) between phases 2 and 3 and restarted on the same address
with the current set after `outage_s`; `POST /drain_listeners?graceful` ends the run under
load (the load stops before the drain time, when the listeners stop accepting by design).

The clients behave like well-written ones: a new connection after `connection: close` or a
GOAWAY; a request is retried only when the protocol says it was not processed (HTTP/1.1: the
connection closed before any byte of the response, RFC 9112 9.3.1; HTTP/2: RST_STREAM
REFUSED_STREAM, or a stream above a GOAWAY's last_stream_id), and those retries are counted
apart. Everything else is a failure: `refused` (ECONNREFUSED), `reset` (closed or reset after
the request was processed or may have been), `5xx`, `timeout`, `other` (a wrong status or
body).

fds and RSS of the proxy are read from /proc with no client connected and nothing draining,
before and after the churn, with the same listener set. "Before" comes after two warm-ups: load
alone (its RSS is shown too), then a short churn under load through every kind of push (not
counted). The second one matters: the first drains, in-place updates and fleet pushes raise
the allocators' high-water marks (pymalloc keeps free pools inside arenas that still hold live
blocks; glibc keeps freed heap) and fill the bounded compile caches. That growth is not per
push (after hundreds of pushes the proxy holds the same objects as before) and it flattens; a
leak does not. So RSS is also sampled every second while churning: the peak is in the table
and the curve follows it. The benchmark pins the proxy to CPU 0 and everything else (load,
backend, stub) to CPU 1.

The RDS mode (`--rds`, issue 19) runs another scenario with the same clients, processes,
measurements and graceful drain at the end (no control-plane outage; the routes answer
directly, so the backend answers nothing). The bootstrap takes LDS over ADS; three loaded
listeners take their routes from RDS over the same ADS stream: `main` and `twin` share route
config `main-routes-<k>`,
`other` has `other-routes`. Every push (one every 200 ms) is a new generation of every route
config, whose body says which answered (`<route config> g<generation>`); the clients check
the route family of their listener and that the generation never goes back on a connection.
Four phases (plus one in between):

1. routes only: route updates alone;
2. in-place renames: every 5th push also points `main` and `twin` at a new route name (only
   their filter chain changes: an in-place update, the old chain drains);
3. full renames: the same with a listener-level change too (a full update, the old version
   drains);
   then route updates go on until nothing drains (not counted as route-only);
4. routes only again.

The table counts the `connection: close` responses (HTTP/1.1) and GOAWAY frames (HTTP/2) the
clients saw, in three groups: route-only (phases 1 and 4, and `other`, which no listener update
touches, in every phase), renames (`main` and `twin` in phases 2 and 3 until their drains end:
allowed, the listener updates drain) and graceful (the final drain). Route-only must be 0;
the other two show that the counting works.

The EDS mode (`--eds`, issue 20) runs the same clients, processes and measurements through
two routing listeners (`main`, `other`, inline routes to cluster `backend`). `backend` is an
EDS cluster (CDS and EDS over the ADS stream); its ClusterLoadAssignment is replaced every
200 ms: a sliding window of two of the backend's four ports, with changing weights, so every
push removes a host that carries traffic and adds one. No listener changes, no outage;
nothing may fail: requests in flight to a removed host finish, new ones go to the current
hosts.

    python -m bench.churn [--seconds N] [--warmup-churn S] [--rds | --eds]
                          [--concurrency N] [--drain-time S] [--drain-strategy gradual|immediate]
        (default 20 s of churn per proxy after an 8 s churn warm-up; --warmup-churn 0 measures
        "before" after the load alone, as earlier runs did)

`--concurrency N` (issue 22) runs both proxies with N workers (Envoy's threads, our
processes); above 1 they run unpinned on every CPU while the load, the backend and the stub
stay on the load CPU, and fds and RSS are the whole process tree's (our main process and
workers). `--drain-time` and `--drain-strategy` set both proxies' drain flags (default 2 s,
gradual); issue 22 asks for immediate DT 5 s and gradual DT 1 s at `--concurrency 2`.

A PNG plot (requests/s, failures and pushes over time, ours above Envoy) and the table go to
bench/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import struct
import threading
import time
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import httptools
from hyperframe.frame import Frame, GoAwayFrame

from control_plane_stub.client import StubNack
from tests.helpers.envoy import EnvoyProcess
from tests.helpers.h2_client import H2Client
from tests.helpers.listeners import HCM, ROUTER, lds_bootstrap
from tests.helpers.procs import free_port, wait_for
from tests.helpers.proxy import ProxyProcess
from tests.helpers.stub import StubProcess
from tests.helpers.upstreams import cluster_dict

RESULTS = Path(__file__).resolve().parent / "results"
DRAIN_TIME_S = 2  # the default; --drain-time and --drain-strategy change it
DRAIN_STRATEGY = "gradual"
PUSH_INTERVAL_S = 0.5
REQUEST_TIMEOUT_S = 3.0
MAX_ATTEMPTS = 3
FLEET_SIZE = 100
FLEET_CHURN = FLEET_SIZE // 10
FLEET_LOADED = (0, 37, 73)
BACKEND_BODY = b"churn backend\n"
STAT_PREFIX = "churn"
FAILURE_REASONS = ("refused", "reset", "5xx", "timeout", "other")
PROXY_CPU, LOAD_CPU = 0, 1
ALL_CPUS = (PROXY_CPU, LOAD_CPU)
REFUSED_STREAM = 7
PHASES = ("full modify", "in-place chains", "remove/re-add", "fleet 10 %")
# The RDS mode (--rds): a route update every ROUTE_PUSH_INTERVAL_S; in the rename phases every
# RENAME_EVERY-th push is a listener update pointing `main` and `twin` at a new route name.
RDS_LISTENERS = ("main", "twin", "other")
RDS_UNTOUCHED = "other"  # no listener update ever changes it: only route updates reach it
OTHER_ROUTES = "other-routes"
ROUTE_PUSH_INTERVAL_S = 0.2
RENAME_EVERY = 5
ROUTES_ONLY, IN_PLACE_RENAMES, FULL_RENAMES, SETTLING, ROUTES_ONLY_AGAIN = (
    "routes only",
    "routes + in-place renames",
    "routes + full renames",
    "routes, drains ending",
    "routes only again",
)
RDS_PHASES = (ROUTES_ONLY, IN_PLACE_RENAMES, FULL_RENAMES, SETTLING, ROUTES_ONLY_AGAIN)
ROUTE_ONLY_PHASES = (ROUTES_ONLY, ROUTES_ONLY_AGAIN)
# The EDS mode (--eds): the assignment of cluster `backend` is replaced every
# ROUTE_PUSH_INTERVAL_S by a window of EDS_WINDOW of the backend's EDS_BACKENDS ports.
EDS_BACKENDS = 4
EDS_WINDOW = 2
EDS_LISTENERS = ("main", "other")
ENDPOINTS_REPLACED = "endpoints replaced"
EDS_PHASES = (ENDPOINTS_REPLACED,)
GRACEFUL = "graceful drain"
WARMUP_S = 1.0  # load alone before measuring
WARMUP_CHURN_S = 8.0  # every phase's pushes under load before "before" (see the docstring)


# ----------------------------------------------------------------------------- config


def routed_listener(name: str, port: int, revision: int, chain_revision: int) -> dict[str, Any]:
    """`/` goes to cluster `backend`. `revision` is a listener-level field (a change is a
    full update); `chain_revision` is a route inside the chain (an in-place chain update)."""
    hcm = {
        "@type": HCM,
        "stat_prefix": STAT_PREFIX,
        "drain_timeout": "1s",
        "route_config": {
            "name": "routes",
            "virtual_hosts": [
                {
                    "name": "all",
                    "domains": ["*"],
                    "routes": [
                        {
                            "match": {"path": f"/churn-marker/{chain_revision}"},
                            "direct_response": {"status": 204},
                        },
                        {"match": {"prefix": "/"}, "route": {"cluster": "backend"}},
                    ],
                }
            ],
        },
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}}],
    }
    return _hcm_listener(name, port, revision, hcm)


def _hcm_listener(name: str, port: int, revision: int, hcm: dict[str, Any]) -> dict[str, Any]:
    """One filter chain with `hcm`; `revision` is a listener-level field."""
    return {
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "per_connection_buffer_limit_bytes": (1 << 20) + revision,
        "filter_chains": [
            {
                "filters": [
                    {"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}
                ]
            }
        ],
    }


def rds_listener(name: str, port: int, revision: int, route_name: str) -> dict[str, Any]:
    """The HCM takes route config `route_name` from RDS over the ADS stream. `revision` is a
    listener-level field (a change is a full update); a new `route_name` alone changes only
    the filter chain (an in-place update)."""
    hcm = {
        "@type": HCM,
        "stat_prefix": STAT_PREFIX,
        "drain_timeout": "1s",
        "rds": {
            "route_config_name": route_name,
            "config_source": {"ads": {}, "resource_api_version": "V3"},
        },
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}}],
    }
    return _hcm_listener(name, port, revision, hcm)


def route_config(name: str, generation: int) -> dict[str, Any]:
    """Answers 200 with `<name> g<generation>`: a client sees which route version answered."""
    body = route_body(name, generation).decode()
    route = {
        "match": {"prefix": "/"},
        "direct_response": {"status": 200, "body": {"inline_string": body}},
    }
    return {
        "name": name,
        "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [route]}],
    }


def route_body(name: str, generation: int) -> bytes:
    return f"{name} g{generation}\n".encode()


def backend_bootstrap(*ports: int) -> dict[str, Any]:
    """The backend: static Envoy listeners (one per port: one upstream host each) answering
    200 with BACKEND_BODY."""
    route = {
        "match": {"prefix": "/"},
        "direct_response": {"status": 200, "body": {"inline_string": BACKEND_BODY.decode()}},
    }
    hcm = {
        "@type": HCM,
        "stat_prefix": "backend",
        "route_config": {
            "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [route]}],
        },
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}}],
    }
    listeners = [
        {
            "name": f"backend-{index}",
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
            "filter_chains": [
                {
                    "filters": [
                        {
                            "name": "envoy.filters.network.http_connection_manager",
                            "typed_config": hcm,
                        }
                    ]
                }
            ],
        }
        for index, port in enumerate(ports)
    ]
    admin = {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}}
    return {"admin": admin, "static_resources": {"listeners": listeners}}


def distinct_free_ports(count: int) -> list[int]:
    """`count` different ports that were free a moment ago (all held while choosing, so
    that no two are the same)."""
    held = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            held.append(sock)
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in held]
    finally:
        for sock in held:
            sock.close()


class ListenerSet:
    """The listener set being churned: `main`, `second` and the fleet, with revisions."""

    def __init__(self) -> None:
        names = ["main", "second", *(f"fleet-{i:03d}" for i in range(FLEET_SIZE))]
        self.ports = dict(zip(names, distinct_free_ports(len(names)), strict=True))
        self.revisions = dict.fromkeys(names, 0)
        self.chain_revisions = dict.fromkeys(names, 0)
        self.second_present = True
        self.version_number = 0

    def fleet_name(self, index: int) -> str:
        return f"fleet-{index % FLEET_SIZE:03d}"

    def listeners(self) -> list[dict[str, Any]]:
        return [
            routed_listener(name, port, self.revisions[name], self.chain_revisions[name])
            for name, port in self.ports.items()
            if name != "second" or self.second_present
        ]

    def next_version(self) -> str:
        self.version_number += 1
        return f"v{self.version_number}"

    # The four kinds of push; `step` counts the pushes of a phase.
    def full_modify(self, step: int) -> None:
        self.revisions["main"] += 1

    def in_place(self, step: int) -> None:
        self.chain_revisions["main"] += 1

    def remove_readd(self, step: int) -> None:
        self.second_present = not self.second_present

    def fleet_churn(self, step: int) -> None:
        for offset in range(FLEET_CHURN):
            self.revisions[self.fleet_name(step * FLEET_CHURN + offset)] += 1


class RdsListenerSet:
    """The RDS mode's listeners: `main` and `twin` share one route config (renamed by the
    listener updates, `main-routes-<k>`), `other` has its own (`other-routes`) and is never
    changed by a listener update. Every push carries a new route generation."""

    def __init__(self) -> None:
        self.ports = dict(zip(RDS_LISTENERS, distinct_free_ports(len(RDS_LISTENERS)), strict=True))
        self.revision = 0  # listener-level field of `main` and `twin`
        self.rename = 0  # `main` and `twin` use main-routes-<rename>
        self.generation = 0
        self.version_number = 0

    def route_name(self, listener: str) -> str:
        return OTHER_ROUTES if listener == RDS_UNTOUCHED else f"main-routes-{self.rename}"

    def listeners(self) -> list[dict[str, Any]]:
        return [
            rds_listener(
                name,
                port,
                0 if name == RDS_UNTOUCHED else self.revision,
                self.route_name(name),
            )
            for name, port in self.ports.items()
        ]

    def routes(self) -> list[dict[str, Any]]:
        """`other-routes` and the last few main names (old versions may still drain on them)."""
        recent = range(max(0, self.rename - 2), self.rename + 1)
        names = [OTHER_ROUTES, *(f"main-routes-{k}" for k in recent)]
        return [route_config(name, self.generation) for name in names]

    def next_version(self) -> str:
        self.version_number += 1
        return f"v{self.version_number}"


class EdsSet:
    """The EDS mode's resources: listeners `main` and `other` routing to EDS cluster
    `backend`, whose assignment moves over the backend's ports (one generation per push)."""

    def __init__(self, backend_ports: list[int]) -> None:
        self.ports = dict(zip(EDS_LISTENERS, distinct_free_ports(len(EDS_LISTENERS)), strict=True))
        self.backends = backend_ports
        self.generation = 0
        self.version_number = 0

    def listeners(self) -> list[dict[str, Any]]:
        return [routed_listener(name, port, 0, 0) for name, port in self.ports.items()]

    @staticmethod
    def clusters() -> list[dict[str, Any]]:
        source = {"ads": {}, "resource_api_version": "V3", "initial_fetch_timeout": "0s"}
        return [
            {
                "name": "backend",
                "type": "EDS",
                "connect_timeout": "1s",
                "eds_cluster_config": {"service_name": "backend", "eds_config": source},
            }
        ]

    def endpoints(self) -> list[dict[str, Any]]:
        """EDS_WINDOW consecutive backend ports from `generation`, weights 1 to 3."""
        count = len(self.backends)
        lb_endpoints = [
            {
                "endpoint": {
                    "address": {
                        "socket_address": {
                            "address": "127.0.0.1",
                            "port_value": self.backends[(self.generation + offset) % count],
                        }
                    }
                },
                "load_balancing_weight": 1 + (self.generation + offset) % 3,
            }
            for offset in range(EDS_WINDOW)
        ]
        return [{"cluster_name": "backend", "endpoints": [{"lb_endpoints": lb_endpoints}]}]

    def next_version(self) -> str:
        self.version_number += 1
        return f"v{self.version_number}"


class PhaseClock:
    """The phase the churn is in, read by the clients to label what they are told."""

    def __init__(self) -> None:
        self.label = "warm-up"


class RouteBodies:
    """The RDS mode's body check for one client: a body of its listener's route family;
    returns the route generation that answered, or None for a wrong body."""

    def __init__(self, family: str) -> None:
        self.family = family  # "main-routes-" or "other-routes"

    def generation(self, body: bytes) -> int | None:
        name, _, rest = body.decode(errors="replace").partition(" g")
        if not name.startswith(self.family) or not rest.endswith("\n"):
            return None
        digits = rest[:-1]
        return int(digits) if digits.isdigit() else None


# ----------------------------------------------------------------------------- load


@dataclass
class Tally:
    """What one client (or a sum of them) saw."""

    sent: int = 0  # attempts written, retries included
    ok: int = 0
    retried: int = 0  # attempts the protocol says were not processed, sent again
    connections: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    events: list[tuple[float, str]] = field(default_factory=list)  # (end, outcome) for the plot
    errors: list[str] = field(default_factory=list)
    retry_notes: list[str] = field(default_factory=list)
    # (route family, phase) -> HTTP/1.1 `connection: close` responses or HTTP/2 GOAWAY frames
    told_to_leave: Counter[tuple[str, str]] = field(default_factory=Counter)
    route_generations: set[int] = field(default_factory=set)  # RDS mode: which answered

    def add(self, other: Tally) -> None:
        self.sent += other.sent
        self.ok += other.ok
        self.retried += other.retried
        self.connections += other.connections
        self.failures.update(other.failures)
        self.latencies += other.latencies
        self.events += other.events
        self.errors += other.errors[:5]
        self.retry_notes += other.retry_notes[:5]
        self.told_to_leave.update(other.told_to_leave)
        self.route_generations |= other.route_generations

    @property
    def failed(self) -> int:
        return sum(self.failures.values())

    def succeed(self, started: float) -> None:
        now = time.monotonic()
        self.ok += 1
        self.latencies.append(now - started)
        self.events.append((now, "ok"))

    def fail(self, reason: str, detail: str) -> None:
        self.failures[reason] += 1
        self.events.append((time.monotonic(), reason))
        if len(self.errors) < 20:
            self.errors.append(f"{reason}: {detail}")

    def retry(self, detail: str) -> None:
        self.retried += 1
        self.events.append((time.monotonic(), "retried"))
        if len(self.retry_notes) < 20:
            self.retry_notes.append(detail)


class _Unprocessed(Exception):
    """The connection closed before any byte of the response: safe to retry. `how` says
    whether the server's FIN or a reset came first."""

    def __init__(self, how: str) -> None:
        super().__init__(how)
        self.how = how


class _Reset(Exception):
    """The connection closed or was reset after part of the response."""


class _Parsed:
    """httptools callbacks for one response."""

    def __init__(self) -> None:
        self.body = bytearray()
        self.complete = False
        self.keep_alive = False
        self.parser: httptools.HttpResponseParser | None = None

    def on_headers_complete(self) -> None:
        # llhttp forgets keep-alive once the message is complete: read it here.
        assert self.parser is not None
        self.keep_alive = self.parser.should_keep_alive()

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.complete = True


class _Bodies:
    """What a client accepts as the body: BACKEND_BODY (or the given one), or, in the RDS
    mode, a body of its route family whose generation never goes back on one connection
    (the next request uses the newest routes; an older one would be a stale route table)."""

    def __init__(self, tally: Tally, body: bytes, routes: RouteBodies | None) -> None:
        self.tally = tally
        self.body = body
        self.routes = routes
        self._connection_generation = -1

    def new_connection(self) -> None:
        self._connection_generation = -1

    def wrong(self, body: bytes) -> str | None:
        """None if `body` is right, else why not."""
        if self.routes is None:
            return None if body == self.body else "wrong body"
        generation = self.routes.generation(body)
        if generation is None:
            return "wrong body"
        if generation < self._connection_generation:
            return f"route g{generation} after g{self._connection_generation} on one connection"
        self._connection_generation = generation
        self.tally.route_generations.add(generation)
        return None


class Http1Client:
    """A keep-alive HTTP/1.1 client in a thread: one request at a time, reconnects after
    `connection: close`, retries only requests the server provably did not process."""

    def __init__(
        self,
        port: int,
        stop: threading.Event,
        body: bytes = BACKEND_BODY,
        routes: RouteBodies | None = None,
        clock: PhaseClock | None = None,
    ) -> None:
        """`routes` and `clock`: the RDS mode's body check, and the phase that labels each
        `connection: close` response."""
        self.port = port
        self.stop = stop
        self.body = body
        self.tally = Tally()
        self.bodies = _Bodies(self.tally, body, routes)
        self.clock = clock
        self.request = f"GET / HTTP/1.1\r\nhost: churn-{port}\r\n\r\n".encode()
        self._sock: socket.socket | None = None
        self._requests_on_connection = 0

    def run(self) -> None:
        while not self.stop.is_set():
            self._one_request()
        self._drop()

    def _drop(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _connect(self) -> bool:
        try:
            self._sock = socket.create_connection(("127.0.0.1", self.port), REQUEST_TIMEOUT_S)
        except ConnectionRefusedError:
            self.tally.fail("refused", f"connect to {self.port}")
            self.stop.wait(0.01)  # pacing: a refused port must not spin the loop
            return False
        except TimeoutError:
            self.tally.fail("timeout", f"connect to {self.port}")
            return False
        except OSError as error:
            self.tally.fail("other", f"connect to {self.port}: {error!r}")
            self.stop.wait(0.01)
            return False
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.tally.connections += 1
        self._requests_on_connection = 0
        self.bodies.new_connection()
        return True

    def _one_request(self) -> None:
        started = time.monotonic()
        for _ in range(MAX_ATTEMPTS):
            if self._sock is None and not self._connect():
                return
            self.tally.sent += 1
            try:
                status, body, keep_alive = self._exchange()
            except _Unprocessed as unprocessed:
                self._drop()
                reused = "reused" if self._requests_on_connection else "fresh"
                self.tally.retry(
                    f"h1: {reused} connection closed ({unprocessed.how}) before any response byte"
                )
                continue
            except TimeoutError:
                self._drop()
                self.tally.fail("timeout", f"no response within {REQUEST_TIMEOUT_S} s")
                return
            except (_Reset, OSError, httptools.HttpParserError) as error:
                self._drop()
                self.tally.fail("reset", repr(error))
                return
            self._requests_on_connection += 1
            if not keep_alive:
                self._drop()
                if self.clock is not None:
                    family = self.bodies.routes.family if self.bodies.routes is not None else ""
                    self.tally.told_to_leave[family, self.clock.label] += 1
            wrong = self.bodies.wrong(body) if status == 200 else None
            if status >= 500:
                self.tally.fail("5xx", f"status {status} {body[:60]!r}")
            elif status != 200 or wrong == "wrong body":
                self.tally.fail("other", f"status {status} {body[:60]!r}")
            elif wrong is not None:
                self.tally.fail("other", wrong)
            else:
                self.tally.succeed(started)
            return
        self.tally.fail("reset", f"not processed {MAX_ATTEMPTS} times in a row")

    def _exchange(self) -> tuple[int, bytes, bool]:
        sock = self._sock
        assert sock is not None
        try:
            sock.sendall(self.request)
        except (BrokenPipeError, ConnectionResetError) as error:
            raise _Unprocessed(f"{type(error).__name__} on send") from None
        parsed = _Parsed()
        parser = httptools.HttpResponseParser(parsed)
        parsed.parser = parser
        received = 0
        while not parsed.complete:
            how = "FIN"
            try:
                data = sock.recv(65536)
            except ConnectionResetError:
                data, how = b"", "RST"
            if not data:
                if received == 0:
                    raise _Unprocessed(how)
                raise _Reset(f"{how} after {received} bytes of the response")
            received += len(data)
            parser.feed_data(data)
        return parser.get_status_code(), bytes(parsed.body), parsed.keep_alive


class _H2Connection(H2Client):
    """H2Client that keeps the lowest GOAWAY last_stream_id and forgets old frames (a
    connection that lives for thousands of requests would otherwise keep them all)."""

    def __init__(self, port: int, clock: PhaseClock | None = None) -> None:
        """`clock`: label each GOAWAY frame with the phase it came in (in `goaways`)."""
        self.goaway_last: int | None = None
        self.clock = clock
        self.goaways: Counter[str] = Counter()
        super().__init__(port, timeout=REQUEST_TIMEOUT_S)

    def _on_frame(self, frame: Frame) -> None:
        if isinstance(frame, GoAwayFrame):
            with self._condition:
                last = frame.last_stream_id
                self.goaway_last = last if self.goaway_last is None else min(self.goaway_last, last)
                if self.clock is not None:
                    self.goaways[self.clock.label] += 1
        super()._on_frame(frame)
        with self._condition:
            if len(self.frames) > 512:
                del self.frames[:-64]

    def forget(self, stream_id: int) -> None:
        with self._condition:
            self._responses.pop(stream_id, None)

    def unprocessed(self, stream_id: int) -> bool:
        """Above a GOAWAY's last_stream_id: the server says it never processed the stream."""
        return self.goaway_last is not None and stream_id > self.goaway_last


class Http2Client:
    """An HTTP/2 (prior knowledge) client in a thread: one stream at a time; after a GOAWAY it
    opens no more streams on that connection; retries refused streams and streams above a
    GOAWAY's last_stream_id on a new connection."""

    def __init__(
        self,
        port: int,
        stop: threading.Event,
        body: bytes = BACKEND_BODY,
        routes: RouteBodies | None = None,
        clock: PhaseClock | None = None,
    ) -> None:
        """`routes` and `clock`: the RDS mode's body check, and the phase that labels each
        GOAWAY frame."""
        self.port = port
        self.stop = stop
        self.body = body
        self.tally = Tally()
        self.bodies = _Bodies(self.tally, body, routes)
        self.clock = clock if routes is not None else None
        self._conn: _H2Connection | None = None

    def run(self) -> None:
        while not self.stop.is_set():
            self._one_request()
        self._drop()

    def _drop(self) -> None:
        if self._conn is not None:
            self._conn.close()
            if self.clock is not None:
                family = self.bodies.routes.family if self.bodies.routes is not None else ""
                for label, count in self._conn.goaways.items():
                    self.tally.told_to_leave[family, label] += count
            self._conn = None

    def _connect(self) -> bool:
        try:
            self._conn = _H2Connection(self.port, self.clock)
        except ConnectionRefusedError:
            self.tally.fail("refused", f"connect to {self.port}")
            self.stop.wait(0.01)  # pacing: a refused port must not spin the loop
            return False
        except TimeoutError:
            self.tally.fail("timeout", f"connect to {self.port}")
            return False
        except OSError as error:
            self.tally.fail("other", f"connect to {self.port}: {error!r}")
            self.stop.wait(0.01)
            return False
        self.tally.connections += 1
        self.bodies.new_connection()
        return True

    def _one_request(self) -> None:
        started = time.monotonic()
        for _ in range(MAX_ATTEMPTS):
            conn = self._conn
            if conn is not None and (conn.goaway_last is not None or conn.closed_at is not None):
                self._drop()  # told to go away (or gone): no new stream on it
            if self._conn is None and not self._connect():
                return
            conn = self._conn
            assert conn is not None
            self.tally.sent += 1
            try:
                stream_id = conn.request("/", authority=f"churn-{self.port}")
            except OSError:
                self._drop()  # nothing reached the server
                self.tally.retry("h2: the connection was gone before the request was written")
                continue
            try:
                response = conn.response(stream_id, timeout=REQUEST_TIMEOUT_S)
            except TimeoutError:
                closed = conn.closed_at is not None
                if closed and conn.unprocessed(stream_id):
                    self._drop()
                    self.tally.retry(f"h2: stream {stream_id} above GOAWAY {conn.goaway_last}")
                    continue
                self._drop()
                if closed:
                    self.tally.fail("reset", f"connection closed under stream {stream_id}")
                else:
                    self.tally.fail("timeout", f"no response within {REQUEST_TIMEOUT_S} s")
                return
            conn.forget(stream_id)
            if response.reset_code is not None:
                if response.reset_code == REFUSED_STREAM or conn.unprocessed(stream_id):
                    self._drop()
                    self.tally.retry(
                        f"h2: stream {stream_id} reset {response.reset_code},"
                        f" GOAWAY last {conn.goaway_last}"
                    )
                    continue
                self._drop()
                self.tally.fail("reset", f"RST_STREAM code {response.reset_code}")
                return
            wrong = self.bodies.wrong(response.body) if response.status == 200 else None
            if response.status >= 500:
                self.tally.fail("5xx", f"status {response.status} {response.body[:60]!r}")
            elif response.status != 200 or wrong == "wrong body":
                self.tally.fail("other", f"status {response.status} {response.body[:60]!r}")
            elif wrong is not None:
                self.tally.fail("other", wrong)
            else:
                self.tally.succeed(started)
            return
        self.tally.fail("reset", f"not processed {MAX_ATTEMPTS} times in a row")


class Load:
    """HTTP/1.1 and HTTP/2 clients on the given ports, each in its own thread."""

    def __init__(
        self,
        h1_ports: list[int],
        h2_ports: list[int],
        body: bytes = BACKEND_BODY,
        families: dict[int, str] | None = None,
        clock: PhaseClock | None = None,
    ) -> None:
        """`body`: what every response must carry (the backend's, unless given). RDS mode:
        `families` maps a port to its route family (see RouteBodies) and `clock` labels what
        the clients are told."""
        self._stop = threading.Event()

        def routes(port: int) -> RouteBodies | None:
            return None if families is None else RouteBodies(families[port])

        self.h1 = [Http1Client(port, self._stop, body, routes(port), clock) for port in h1_ports]
        self.h2 = [Http2Client(port, self._stop, body, routes(port), clock) for port in h2_ports]
        self._threads = [
            threading.Thread(target=client.run, daemon=True) for client in (*self.h1, *self.h2)
        ]

    def start(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def ok(self) -> int:
        return sum(client.tally.ok for client in (*self.h1, *self.h2))

    def stop(self) -> tuple[Tally, Tally]:
        """Stop every client (each finishes its request first); the HTTP/1.1 and HTTP/2 sums."""
        self._stop.set()
        for thread in self._threads:
            thread.join(REQUEST_TIMEOUT_S * MAX_ATTEMPTS + 5)
        return _sum(client.tally for client in self.h1), _sum(client.tally for client in self.h2)


def _sum(tallies: Any) -> Tally:
    total = Tally()
    for tally in tallies:
        total.add(tally)
    return total


# ----------------------------------------------------------------------------- processes


class _PinnedMixin:
    """Runs the program under `taskset -c CPU` when `cpu` is set (taskset execs: same pid)."""

    cpu: int | str | None = None  # a CPU or a taskset list ("0,1")

    def command(self) -> list[str]:
        command = super().command()  # type: ignore[misc]
        return command if self.cpu is None else ["taskset", "-c", str(self.cpu), *command]


class PinnedEnvoy(_PinnedMixin, EnvoyProcess):
    pass


class PinnedProxy(_PinnedMixin, ProxyProcess):
    pass


def process_usage(pid: int) -> tuple[int, int]:
    """(open fds, RSS in KiB) of a process and its children (our workers with
    `--concurrency N`), from /proc."""
    fds = rss = 0
    for one in (pid, *_children(pid)):
        fds += len(os.listdir(f"/proc/{one}/fd"))
        for line in Path(f"/proc/{one}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss += int(line.split()[1])
    return fds, rss


def _children(pid: int) -> list[int]:
    try:
        return [
            int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        ]
    except OSError:
        return []


class DrainWatcher:
    """Polls the proxy's draining gauges every 100 ms and keeps their peaks."""

    NAMES = (
        "listener_manager.total_listeners_draining",
        "listener_manager.total_filter_chains_draining",
    )

    RSS_EVERY = 10  # polls between two RSS samples: one a second

    def __init__(self, proxy: EnvoyProcess, pid: int = 0) -> None:
        self.proxy = proxy
        self.pid = pid
        self.peaks = dict.fromkeys(self.NAMES, 0)
        self.samples: list[tuple[float, int]] = []  # (time, listeners draining)
        self.rss_samples: list[tuple[float, int]] = []  # (time, RSS KiB) of `pid`
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def start(self) -> DrainWatcher:
        self._thread.start()
        return self

    def current(self) -> dict[str, int]:
        stats = self.proxy.stats(r"^listener_manager\.total_(listeners|filter_chains)_draining$")
        return {name: int(stats.get(name, "0")) for name in self.NAMES}

    def _poll(self) -> None:
        polls = 0
        while not self._stop.wait(0.1):
            if self.pid and polls % self.RSS_EVERY == 0:
                self.rss_samples.append((time.monotonic(), process_usage(self.pid)[1]))
            polls += 1
            try:
                values = self.current()
            except OSError:
                continue
            for name, value in values.items():
                self.peaks[name] = max(self.peaks[name], value)
            self.samples.append((time.monotonic(), values[self.NAMES[0]]))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


# ----------------------------------------------------------------------------- one run


@dataclass
class Push:
    at: float
    phase: str
    version: str
    ack_s: float | None  # None: not ACKed before the next push
    nack: str | None = None
    kind: str = "listeners"  # RDS mode: "routes" for a route-only update


@dataclass
class ChurnResult:
    proxy: str
    h1: Tally
    h2: Tally
    started: float
    seconds: float
    pushes: list[Push]
    phase_starts: list[tuple[float, str]]
    outage: tuple[float, float]
    reconnect_s: float
    graceful_at: float
    peak_listeners_draining: int
    peak_chains_draining: int
    fds_before: int
    fds_after: int
    rss_before_kib: int
    rss_after_kib: int
    backend_requests: int  # what the backend answered while the load ran
    rss_load_warm_kib: int = 0  # after the load-only warm-up, before the churn warm-up
    rss_samples: list[tuple[float, int]] = field(default_factory=list)  # (time, KiB), churning
    rds: bool = False  # the RDS mode's scenario (routes answer directly, no outage)
    eds: bool = False  # the EDS mode's scenario (the backend's endpoints move, no outage)
    drain_time_s: float = DRAIN_TIME_S
    concurrency: int = 1

    @property
    def rss_peak_kib(self) -> int:
        return max((kib for _, kib in self.rss_samples), default=0)

    @property
    def answered_but_lost(self) -> int:
        """Requests the backend answered whose response no client got: a retried request
        that had in fact been processed, or a failure after forwarding."""
        return self.backend_requests - self.total().ok

    def total(self) -> Tally:
        return _sum([self.h1, self.h2])


class ChurnRun:
    """One proxy under churn; `run()` returns the ChurnResult."""

    def __init__(
        self,
        workdir: Path,
        envoy: bool,
        seconds: float,
        outage_s: float,
        http2: bool = True,
        pin: bool = False,
        warmup_s: float = WARMUP_S,
        warmup_churn_s: float = 0.0,
        rds: bool = False,
        eds: bool = False,
        drain_time_s: float = DRAIN_TIME_S,
        drain_strategy: str = DRAIN_STRATEGY,
        concurrency: int | None = None,
    ) -> None:
        """`warmup_s`: load alone before measuring; `warmup_churn_s`: then every phase's
        pushes under load for that long in all (not counted), before "before". `rds`: the
        RDS scenario (RDS_PHASES) instead of the four listener phases; no outage. `eds`: the
        EDS scenario (EDS_PHASES); no outage. `drain_time_s`, `drain_strategy`: the proxy's
        `--drain-time-s` and `--drain-strategy`. `concurrency`: its `--concurrency` (None:
        the process helper's default, which XDS_PROXY_TEST_CONCURRENCY sets for ours); above
        1 the proxy runs on every CPU when pinned."""
        self.workdir = workdir
        self.envoy = envoy
        self.seconds = seconds
        self.outage_s = outage_s
        self.http2 = http2
        self.pin = pin
        self.warmup_s = warmup_s
        self.warmup_churn_s = warmup_churn_s
        self.rds = rds
        self.eds = eds
        self.drain_time_s = drain_time_s
        self.drain_strategy = drain_strategy
        self.concurrency = concurrency
        self.eds_set: EdsSet | None = None  # once the backend's ports are known
        self.clock = PhaseClock()
        self.listeners = ListenerSet()
        self.rds_listeners = RdsListenerSet()
        self.pushes: list[Push] = []
        self.phase_starts: list[tuple[float, str]] = []
        self.stub = StubProcess(workdir / "stub", xds=f"127.0.0.1:{free_port()}")
        self.proxy: EnvoyProcess | None = None
        self.backend: PinnedEnvoy | None = None

    # -- pieces ------------------------------------------------------------------------------

    def _start_backend(self) -> int:
        ports = distinct_free_ports(EDS_BACKENDS) if self.eds else [free_port()]
        self.backend = PinnedEnvoy(backend_bootstrap(*ports), self.workdir, log_level="warning")
        self.backend.start()
        for port in ports:
            wait_for(lambda port=port: _connects(port), what="backend listening")
        if self.eds:
            self.eds_set = EdsSet(ports)
        return ports[0]

    def _start_proxy(self, backend_port: int) -> EnvoyProcess:
        ads = self.rds or self.eds
        bootstrap = lds_bootstrap(self.stub.xds_address, node_id="churn", ads=ads)
        if self.eds:  # cluster `backend` comes from CDS, its endpoints from EDS
            bootstrap["dynamic_resources"]["cds_config"] = {"ads": {}, "resource_api_version": "V3"}
        else:
            bootstrap["static_resources"]["clusters"].append(
                cluster_dict("backend", [backend_port])
            )
        flags = [
            "--drain-time-s",
            f"{self.drain_time_s:g}",
            "--drain-strategy",
            self.drain_strategy,
        ]
        kind = PinnedEnvoy if self.envoy else PinnedProxy
        proxy = kind(bootstrap, self.workdir, log_level="warning", extra_args=flags)
        if self.concurrency is not None:
            proxy.concurrency = self.concurrency
        if self.pin:  # the load, the backend and the stub stay on LOAD_CPU
            proxy.cpu = PROXY_CPU if proxy.concurrency == 1 else ",".join(map(str, ALL_CPUS))
        self.proxy = proxy.start()
        return proxy

    def _push(self, phase: str, deadline: float) -> None:
        version = self.listeners.next_version()
        at = time.monotonic()
        self.stub.client.set_resources(listeners=self.listeners.listeners(), version=version)
        push = Push(at, phase, version, None)
        try:
            self.stub.client.wait(version, timeout=max(0.05, deadline - time.monotonic()))
            push.ack_s = time.monotonic() - at
        except StubNack as nack:
            push.nack = nack.detail
        except TimeoutError:
            pass
        self.pushes.append(push)

    def _phase(self, name: str, change: Callable[[int], None], seconds: float) -> None:
        self.phase_starts.append((time.monotonic(), name))
        end = time.monotonic() + seconds
        step = 0
        while time.monotonic() < end:
            tick = time.monotonic() + PUSH_INTERVAL_S
            change(step)
            self._push(name, tick)
            step += 1
            _sleep_until(tick)  # pacing of the pushes, not synchronisation

    def _outage(self) -> tuple[tuple[float, float], float]:
        """SIGKILL the stub, wait `outage_s`, restart it on the same xDS address with the
        current set from a file; returns (outage span, restart -> ACK seconds)."""
        down = time.monotonic()
        assert self.stub.process is not None
        self.stub.process.popen.send_signal(signal.SIGKILL)
        self.stub.stop()
        version = self.listeners.next_version()
        resources = self.workdir / f"resources-{version}.json"
        resources.write_text(
            json.dumps({"version": version, "listeners": self.listeners.listeners()})
        )
        self.stub.resources = resources
        _sleep_until(down + self.outage_s)  # the outage itself
        self.stub.start()
        up = time.monotonic()
        self.stub.client.wait(version, timeout=60)
        return (down, up), time.monotonic() - up

    def _wait_quiet(self, proxy: EnvoyProcess, watcher: DrainWatcher) -> None:
        """Nothing draining and no client connection left (before measuring fds/RSS)."""
        active = f"http.{STAT_PREFIX}.downstream_cx_active"
        wait_for(
            lambda: not any(watcher.current().values()) and proxy.stat(active) == 0,
            timeout=self.drain_time_s + 15,
            interval=0.1,
            what="no draining listener and no downstream connection",
        )

    def _backend_requests(self) -> int:
        assert self.backend is not None
        return self.backend.stat("http.backend.downstream_rq_total") or 0

    def _load(self) -> Load:
        if self.rds:
            return self._rds_load()
        if self.eds_set is not None:
            main, other = self.eds_set.ports["main"], self.eds_set.ports["other"]
            h2_ports = [main, other] if self.http2 else []
            return Load([main, main, other], h2_ports, clock=self.clock).start()
        ports = self.listeners.ports
        main = ports["main"]
        loaded_fleet = [ports[self.listeners.fleet_name(i)] for i in FLEET_LOADED]
        h2_ports = [main, main, loaded_fleet[0]] if self.http2 else []
        return Load([main, main, main, *loaded_fleet], h2_ports).start()

    # -- the RDS mode --------------------------------------------------------------------------

    def _rds_load(self) -> Load:
        """HTTP/1.1 on main (x2), twin and other; HTTP/2 on each of them."""
        ports = self.rds_listeners.ports
        families = {
            port: OTHER_ROUTES if name == RDS_UNTOUCHED else "main-routes-"
            for name, port in ports.items()
        }
        h1_ports = [ports["main"], ports["main"], ports["twin"], ports["other"]]
        h2_ports = [ports["main"], ports["twin"], ports["other"]] if self.http2 else []
        return Load(h1_ports, h2_ports, families=families, clock=self.clock).start()

    def _rds_push(self, phase: str, deadline: float, listeners: bool) -> None:
        """A new route generation; with `listeners`, the listener set in the same push."""
        ls = self.rds_listeners
        ls.generation += 1
        version = ls.next_version()
        at = time.monotonic()
        client = self.stub.client
        if listeners:
            client.set_resources(listeners=ls.listeners(), routes=ls.routes(), version=version)
        else:
            client.set_resources(routes=ls.routes(), version=version)
        push = Push(at, phase, version, None, kind="listeners" if listeners else "routes")
        try:
            sections = ("listeners", "routes") if listeners else ("routes",)
            for section in sections:
                timeout = max(0.05, deadline - time.monotonic())
                client.wait(version, timeout=timeout, section=section)
            push.ack_s = time.monotonic() - at
        except StubNack as nack:
            push.nack = nack.detail
        except TimeoutError:
            pass
        self.pushes.append(push)

    def _rds_phase(self, name: str, seconds: float, renames: str | None = None) -> None:
        """A route update every ROUTE_PUSH_INTERVAL_S; with `renames` ("in-place" or
        "full"), every RENAME_EVERY-th push also points main and twin at a new route name
        (and, for "full", changes a listener-level field too)."""
        self.phase_starts.append((time.monotonic(), name))
        self.clock.label = name
        ls = self.rds_listeners
        end = time.monotonic() + seconds
        step = 0
        while time.monotonic() < end:
            tick = time.monotonic() + ROUTE_PUSH_INTERVAL_S
            rename = renames is not None and step % RENAME_EVERY == RENAME_EVERY - 1
            if rename:
                ls.rename += 1
                ls.revision += renames == "full"
            self._rds_push(name, tick, listeners=rename)
            step += 1
            _sleep_until(tick)  # pacing of the pushes, not synchronisation

    def _rds_settle(self, watcher: DrainWatcher) -> None:
        """Route updates go on until nothing drains (the renames' drains may still say
        `connection: close` / GOAWAY until then), then one more interval."""
        self.phase_starts.append((time.monotonic(), SETTLING))
        self.clock.label = SETTLING
        give_up = time.monotonic() + self.drain_time_s + 15
        quiet_since: float | None = None
        while quiet_since is None or time.monotonic() < quiet_since + ROUTE_PUSH_INTERVAL_S:
            if time.monotonic() > give_up:
                raise TimeoutError("the renames' drains did not end")
            tick = time.monotonic() + ROUTE_PUSH_INTERVAL_S
            self._rds_push(SETTLING, tick, listeners=False)
            if quiet_since is None and not any(watcher.current().values()):
                quiet_since = time.monotonic()
            _sleep_until(tick)

    def _rds_churn(self, watcher: DrainWatcher, seconds: float) -> None:
        phase_s = seconds / 4
        self._rds_phase(ROUTES_ONLY, phase_s)
        self._rds_phase(IN_PLACE_RENAMES, phase_s, renames="in-place")
        self._rds_phase(FULL_RENAMES, phase_s, renames="full")
        self._rds_settle(watcher)
        self._rds_phase(ROUTES_ONLY_AGAIN, phase_s)

    # -- the EDS mode --------------------------------------------------------------------------

    def _eds_push(self, phase: str, deadline: float) -> None:
        """A new assignment of `backend` (the window moves by one port)."""
        assert self.eds_set is not None
        self.eds_set.generation += 1
        version = self.eds_set.next_version()
        at = time.monotonic()
        self.stub.client.set_resources(endpoints=self.eds_set.endpoints(), version=version)
        push = Push(at, phase, version, None, kind="endpoints")
        try:
            timeout = max(0.05, deadline - time.monotonic())
            self.stub.client.wait(version, timeout=timeout, section="endpoints")
            push.ack_s = time.monotonic() - at
        except StubNack as nack:
            push.nack = nack.detail
        except TimeoutError:
            pass
        self.pushes.append(push)

    def _eds_churn(self, seconds: float) -> None:
        self.phase_starts.append((time.monotonic(), ENDPOINTS_REPLACED))
        self.clock.label = ENDPOINTS_REPLACED
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            tick = time.monotonic() + ROUTE_PUSH_INTERVAL_S
            self._eds_push(ENDPOINTS_REPLACED, tick)
            _sleep_until(tick)  # pacing of the pushes, not synchronisation

    # -- the run -----------------------------------------------------------------------------

    def run(self) -> ChurnResult:
        try:
            return self._run()
        finally:
            for process in (self.proxy, self.backend, self.stub):
                if process is not None:
                    process.stop()

    def _run(self) -> ChurnResult:
        self.stub.start()
        backend_port = self._start_backend()
        if self.rds:
            first = self.rds_listeners.next_version()
            self.stub.client.set_resources(
                listeners=self.rds_listeners.listeners(),
                routes=self.rds_listeners.routes(),
                version=first,
            )
        elif self.eds_set is not None:
            first = self.eds_set.next_version()
            self.stub.client.set_resources(
                clusters=self.eds_set.clusters(),
                listeners=self.eds_set.listeners(),
                endpoints=self.eds_set.endpoints(),
                version=first,
            )
        else:
            first = self.listeners.next_version()
            self.stub.client.set_resources(listeners=self.listeners.listeners(), version=first)
        proxy = self._start_proxy(backend_port)
        pid = proxy.process.popen.pid if proxy.process is not None else 0
        proxy.wait_ready(timeout=20)
        self.stub.client.wait(first, timeout=20)
        if self.eds_set is not None:
            wanted = len(self.eds_set.ports)
        else:
            wanted = len(self.rds_listeners.ports if self.rds else self.listeners.ports)
        wait_for(lambda: len(proxy.listeners()) == wanted, timeout=20, what="every listener")
        watcher = DrainWatcher(proxy, pid)

        warmup = self._load()
        wait_for(lambda: warmup.ok() > 0, timeout=10, what="warm-up traffic flowing")
        time.sleep(self.warmup_s)  # warm-up length, not synchronisation
        warmup.stop()
        self._wait_quiet(proxy, watcher)
        rss_load_warm = process_usage(pid)[1]
        if self.warmup_churn_s > 0:
            self._churn_warmup(watcher)
            self._wait_quiet(proxy, watcher)
        fds_before, rss_before = process_usage(pid)
        backend_before = self._backend_requests()

        started = time.monotonic()
        watcher.start()
        load = self._load()
        if self.rds:
            self._rds_churn(watcher, self.seconds)
            outage, reconnect_s = (started, started), float("nan")
        elif self.eds:
            self._eds_churn(self.seconds)
            outage, reconnect_s = (started, started), float("nan")
        else:
            phase_s = self.seconds / len(PHASES)
            ls = self.listeners
            self._phase(PHASES[0], ls.full_modify, phase_s)
            self._phase(PHASES[1], ls.in_place, phase_s)
            outage, reconnect_s = self._outage()
            self._phase(PHASES[2], ls.remove_readd, phase_s)
            if not ls.second_present:
                ls.remove_readd(0)
                self._push(PHASES[2], time.monotonic() + PUSH_INTERVAL_S)
            self._phase(PHASES[3], ls.fleet_churn, phase_s)
        churned = load.stop()
        churn_end = time.monotonic()
        self._wait_quiet(proxy, watcher)
        fds_after, rss_after = process_usage(pid)

        self.clock.label = GRACEFUL
        final = self._load()
        wait_for(lambda: final.ok() > 0, timeout=10, what="traffic flowing before the drain")
        graceful_at = time.monotonic()
        status, body = proxy.post("/drain_listeners?graceful")
        if status != 200:
            raise RuntimeError(f"/drain_listeners?graceful: {status} {body.strip()}")
        # Keep the load for half the drain time: connections are told to go away and
        # reconnect; the listeners stop accepting only at the drain time.
        _sleep_until(graceful_at + self.drain_time_s / 2)
        drained = final.stop()
        watcher.stop()
        backend_requests = self._backend_requests() - backend_before
        h1, h2 = churned
        h1.add(drained[0])
        h2.add(drained[1])
        return ChurnResult(
            proxy="envoy 1.40" if self.envoy else "xds-proxy",
            h1=h1,
            h2=h2,
            started=started,
            seconds=churn_end - started,
            pushes=self.pushes,
            phase_starts=self.phase_starts,
            outage=outage,
            reconnect_s=reconnect_s,
            graceful_at=graceful_at,
            peak_listeners_draining=watcher.peaks[DrainWatcher.NAMES[0]],
            peak_chains_draining=watcher.peaks[DrainWatcher.NAMES[1]],
            fds_before=fds_before,
            fds_after=fds_after,
            rss_before_kib=rss_before,
            rss_after_kib=rss_after,
            backend_requests=backend_requests,
            rss_load_warm_kib=rss_load_warm,
            rss_samples=[sample for sample in watcher.rss_samples if sample[0] <= churn_end],
            rds=self.rds,
            eds=self.eds,
            drain_time_s=self.drain_time_s,
            concurrency=proxy.concurrency,
        )

    def _churn_warmup(self, watcher: DrainWatcher) -> None:
        """Every phase's pushes under load, briefly, then the same listener set as before;
        neither the pushes nor the load count in the result."""
        load = self._load()
        wait_for(lambda: load.ok() > 0, timeout=10, what="warm-up traffic flowing")
        if self.rds or self.eds:
            if self.rds:
                self._rds_churn(watcher, self.warmup_churn_s)
            else:
                self._eds_churn(self.warmup_churn_s)
            load.stop()
            self.pushes.clear()
            self.phase_starts.clear()
            self.clock.label = "warm-up"
            return
        ls = self.listeners
        changes = (ls.full_modify, ls.in_place, ls.remove_readd, ls.fleet_churn)
        for name, change in zip(PHASES, changes, strict=True):
            self._phase(name, change, self.warmup_churn_s / len(PHASES))
        if not ls.second_present:
            ls.remove_readd(0)
            self._push(PHASES[2], time.monotonic() + PUSH_INTERVAL_S)
        load.stop()
        self.pushes.clear()
        self.phase_starts.clear()


def _connects(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def _sleep_until(moment: float) -> None:
    remaining = moment - time.monotonic()
    if remaining > 0:
        time.sleep(remaining)


# ----------------------------------------------------------------------------- report


def rss_curve(result: ChurnResult) -> str:
    """The RSS samples, to tell a warm-up that flattens from a leak that keeps growing."""
    return " ".join(f"{kib / 1024:.1f}" for _, kib in result.rss_samples)


def _growth(before: int, after: int) -> float:
    return 100.0 * (after - before) / before if before else 0.0


def _percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def told_to_leave(tally: Tally, group: str) -> int:
    """RDS mode: `connection: close` responses (HTTP/1.1) or GOAWAY frames (HTTP/2) in one
    group: "route-only" (the route-only phases, and the listener no listener update touches,
    until the graceful drain), "renames" (main and twin while listener updates rename their
    route config, until their drains end) or "graceful". EDS mode: "endpoint updates" (every
    phase but the graceful drain, warm-ups excluded) or "graceful"."""

    def group_of(family: str, phase: str) -> str:
        if phase == GRACEFUL:
            return "graceful"
        if phase in EDS_PHASES:
            return "endpoint updates"
        if phase in ROUTE_ONLY_PHASES or family == OTHER_ROUTES:
            return "route-only"
        return "renames"

    return sum(
        count
        for (family, phase), count in tally.told_to_leave.items()
        if group_of(family, phase) == group
    )


def table(results: list[ChurnResult]) -> list[str]:
    """One column per proxy; HTTP/1.1 and HTTP/2 rows apart where they differ."""
    rds = any(result.rds for result in results)
    eds = any(result.eds for result in results)

    def pushes(kind: str) -> Callable[[ChurnResult], str]:
        def shown(result: ChurnResult) -> str:
            mine = [p for p in result.pushes if p.phase == kind]
            acked = sum(p.ack_s is not None for p in mine)
            if rds:
                lds = sum(p.kind == "listeners" for p in mine)
                return f"{len(mine)} ({acked} acked, {lds} LDS)"
            return f"{len(mine)} ({acked} acked)"

        return shown

    def ack_p99(result: ChurnResult) -> str:
        acks = [p.ack_s for p in result.pushes if p.ack_s is not None]
        return f"{1000 * _percentile(acks, 0.99):.0f}"

    rows: list[tuple[str, Callable[[ChurnResult], Any]]] = [
        ("churn seconds (load on)", lambda r: f"{r.seconds:.1f}"),
    ]
    for label, pick in (("h1", lambda r: r.h1), ("h2", lambda r: r.h2), ("all", ChurnResult.total)):
        rows += [
            (f"{label} requests sent", lambda r, p=pick: p(r).sent),
            (f"{label} succeeded", lambda r, p=pick: p(r).ok),
            (f"{label} failed", lambda r, p=pick: p(r).failed),
        ]
        if label == "all":
            rows += [
                (f"all failed: {reason}", lambda r, reason=reason: r.total().failures[reason])
                for reason in FAILURE_REASONS
            ]
        rows += [
            (f"{label} retried (not processed)", lambda r, p=pick: p(r).retried),
            (f"{label} connections opened", lambda r, p=pick: p(r).connections),
            (
                f"{label} p50 latency ms",
                lambda r, p=pick: f"{1000 * _percentile(p(r).latencies, 0.5):.2f}",
            ),
            (
                f"{label} p99 latency ms",
                lambda r, p=pick: f"{1000 * _percentile(p(r).latencies, 0.99):.2f}",
            ),
        ]
    phases = RDS_PHASES if rds else EDS_PHASES if eds else PHASES
    rows += [(f"pushes: {kind}", pushes(kind)) for kind in phases]
    if rds:
        rows += [
            (
                "route generations answered",
                # every push is a new generation, and one was in force when the load started
                lambda r: f"{len(r.total().route_generations)} of {len(r.pushes) + 1}",
            ),
        ]
        for group in ("route-only", "renames", "graceful"):
            rows += [
                (f"h1 conn: close, {group}", lambda r, g=group: told_to_leave(r.h1, g)),
                (f"h2 GOAWAY frames, {group}", lambda r, g=group: told_to_leave(r.h2, g)),
            ]
        rows += [("push -> ACK p99 ms", ack_p99)]
    elif eds:
        for group in ("endpoint updates", "graceful"):
            rows += [
                (f"h1 conn: close, {group}", lambda r, g=group: told_to_leave(r.h1, g)),
                (f"h2 GOAWAY frames, {group}", lambda r, g=group: told_to_leave(r.h2, g)),
            ]
        rows += [
            ("backend answered", lambda r: r.backend_requests),
            ("answered, response lost", lambda r: r.answered_but_lost),
            ("push -> ACK p99 ms", ack_p99),
        ]
    else:
        rows += [
            ("backend answered", lambda r: r.backend_requests),
            ("answered, response lost", lambda r: r.answered_but_lost),
            ("push -> ACK p99 ms", ack_p99),
            ("stub restart -> ACK s", lambda r: f"{r.reconnect_s:.2f}"),
        ]
    rows += [
        ("peak listeners draining", lambda r: r.peak_listeners_draining),
        ("peak filter chains draining", lambda r: r.peak_chains_draining),
        ("fds before / after", lambda r: f"{r.fds_before} / {r.fds_after}"),
        ("RSS MiB after load-only warm-up", lambda r: f"{r.rss_load_warm_kib / 1024:.1f}"),
        (
            "RSS MiB before / after",
            lambda r: f"{r.rss_before_kib / 1024:.1f} / {r.rss_after_kib / 1024:.1f}",
        ),
        ("RSS after vs before %", lambda r: f"{_growth(r.rss_before_kib, r.rss_after_kib):+.1f}"),
        ("RSS MiB peak while churning", lambda r: f"{r.rss_peak_kib / 1024:.1f}"),
    ]
    width = 22 if rds else 20  # the RDS push counts are wider
    lines = ["   " + f"{'':34}" + "".join(f"{r.proxy:>{width}}" for r in results)]
    for label, value in rows:
        lines.append("   " + f"{label:34}" + "".join(f"{value(r)!s:>{width}}" for r in results))
    for result in results:
        for error in result.total().errors[:5]:
            lines.append(f"   {result.proxy} error: {error}")
        for note, count in Counter(result.total().retry_notes).most_common(3):
            lines.append(f"   {result.proxy} retried: {note} (x{count} among the first noted)")
    return lines


# ----------------------------------------------------------------------------- plot


def _png(width: int, height: int, pixels: bytearray) -> bytes:
    """A truecolour PNG (no dependency: zlib and struct)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    stride = width * 3
    raw = b"".join(b"\x00" + pixels[y * stride : (y + 1) * stride] for y in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw, 9))
        + chunk(b"IEND", b"")
    )


class _Canvas:
    def __init__(self, width: int, height: int) -> None:
        self.width, self.height = width, height
        self.pixels = bytearray(b"\xff" * (width * height * 3))

    def rect(self, x0: int, y0: int, x1: int, y1: int, colour: tuple[int, int, int]) -> None:
        x0, x1 = max(0, min(x0, x1)), min(self.width, max(x0, x1))
        y0, y1 = max(0, min(y0, y1)), min(self.height, max(y0, y1))
        row = bytes(colour) * (x1 - x0)
        for y in range(y0, y1):
            start = (y * self.width + x0) * 3
            self.pixels[start : start + len(row)] = row


PLOT_LEGEND = (
    "plot: one panel per proxy (xds-proxy on top); grey = requests/s (250 ms buckets, same "
    "scale), red = buckets with a failure, orange ticks = retries, blue ticks = pushes, "
    "black lines = phase starts, yellow = control plane down, green = graceful drain"
)


def plot(results: list[ChurnResult], path: Path, bucket_s: float = 0.25) -> None:
    width, panel, margin = 1000, 180, 10
    span = max(r.graceful_at - r.started + r.drain_time_s for r in results)
    buckets = int(span / bucket_s) + 1
    counts = []
    for result in results:
        ok = [0] * buckets
        bad = [0] * buckets
        retried = [0] * buckets
        for at, outcome in result.total().events:
            index = int((at - result.started) / bucket_s)
            if 0 <= index < buckets:
                target = ok if outcome == "ok" else retried if outcome == "retried" else bad
                target[index] += 1
        counts.append((ok, bad, retried))
    peak = max((max(ok) for ok, _, _ in counts), default=1) or 1
    canvas = _Canvas(width, len(results) * (panel + margin) + margin)

    def x_of(seconds: float) -> int:
        return int(seconds / span * (width - 1))

    for index, (result, (ok, bad, retried)) in enumerate(zip(results, counts, strict=True)):
        top = margin + index * (panel + margin)
        bottom = top + panel
        base = result.started
        canvas.rect(0, top, width, bottom, (245, 245, 245))
        down, up = result.outage
        canvas.rect(x_of(down - base), top, x_of(up - base), bottom, (255, 240, 170))
        canvas.rect(x_of(result.graceful_at - base), top, width, bottom, (205, 240, 205))
        for bucket, value in enumerate(ok):
            x0, x1 = x_of(bucket * bucket_s), x_of((bucket + 1) * bucket_s)
            height = int(value / peak * (panel - 20))
            canvas.rect(x0, bottom - height, max(x1 - 1, x0 + 1), bottom, (150, 150, 150))
            if bad[bucket]:
                canvas.rect(x0, top, max(x1 - 1, x0 + 2), bottom, (220, 30, 30))
            if retried[bucket]:
                canvas.rect(x0, top, max(x1 - 1, x0 + 2), top + 8, (255, 140, 0))
        for push in result.pushes:
            x = x_of(push.at - base)
            canvas.rect(x, bottom - 10, x + 1, bottom, (30, 60, 220))
        for at, _ in result.phase_starts:
            x = x_of(at - base)
            canvas.rect(x, top, x + 1, bottom, (0, 0, 0))
    path.write_bytes(_png(canvas.width, canvas.height, canvas.pixels))


# ----------------------------------------------------------------------------- entry points


def churn_both(
    seconds: float,
    outage_s: float,
    pin: bool = True,
    warmup_churn_s: float = WARMUP_CHURN_S,
    rds: bool = False,
    eds: bool = False,
    drain_time_s: float = DRAIN_TIME_S,
    drain_strategy: str = DRAIN_STRATEGY,
    concurrency: int | None = None,
) -> list[ChurnResult]:
    """Ours, then Envoy, with the same scenario and flags; pinned like every benchmark here
    (with `concurrency` above 1 the proxies run on every CPU, the rest on LOAD_CPU)."""
    results = []
    saved = os.sched_getaffinity(0)
    if pin:
        os.sched_setaffinity(0, {LOAD_CPU})  # children (stub, backend) inherit it
    try:
        for envoy in (False, True):
            with TemporaryDirectory(prefix="bench-churn-") as tmp:
                run = ChurnRun(
                    Path(tmp),
                    envoy=envoy,
                    seconds=seconds,
                    outage_s=outage_s,
                    pin=pin,
                    warmup_churn_s=warmup_churn_s,
                    rds=rds,
                    eds=eds,
                    drain_time_s=drain_time_s,
                    drain_strategy=drain_strategy,
                    concurrency=concurrency,
                )
                results.append(run.run())
    finally:
        os.sched_setaffinity(0, saved)
    return results


def run(
    large: bool = False,
    seconds: float | None = None,
    warmup_churn_s: float = WARMUP_CHURN_S,
    rds: bool = False,
    eds: bool = False,
    drain_time_s: float = DRAIN_TIME_S,
    drain_strategy: str = DRAIN_STRATEGY,
    concurrency: int | None = None,
) -> list[str]:
    seconds = seconds or (60.0 if large else 20.0)
    outage_s = 10.0 if seconds >= 60 else max(1.0, seconds / 8)
    pin = len(os.sched_getaffinity(0)) > 1
    results = churn_both(
        seconds,
        outage_s,
        pin=pin,
        warmup_churn_s=warmup_churn_s,
        rds=rds,
        eds=eds,
        drain_time_s=drain_time_s,
        drain_strategy=drain_strategy,
        concurrency=concurrency,
    )
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    workers = results[0].concurrency
    drain = f"DT {drain_time_s:g} s {drain_strategy}" + (
        f", --concurrency {workers}" if workers != 1 else ""
    )
    if rds:
        scenario = (
            f"   churn --rds: {seconds:.0f} s of route updates every"
            f" {ROUTE_PUSH_INTERVAL_S * 1000:.0f} ms over ADS in 4 phases (routes only; every"
            f" {RENAME_EVERY}th push also renames main's and twin's route config, in place;"
            f" the same with a full update; routes only again, after the drains), {drain},"
            " graceful drain at the end; HTTP/1.1 and HTTP/2 clients"
        )
    elif eds:
        scenario = (
            f"   churn --eds: {seconds:.0f} s of EDS updates every"
            f" {ROUTE_PUSH_INTERVAL_S * 1000:.0f} ms over ADS (cluster backend's assignment:"
            f" {EDS_WINDOW} of {EDS_BACKENDS} backend ports, the window moves by one per push,"
            f" weights 1-3), two routing listeners, {drain},"
            " graceful drain at the end; HTTP/1.1 and HTTP/2 clients"
        )
    else:
        scenario = (
            f"   churn: {seconds:.0f} s of pushes every {PUSH_INTERVAL_S * 1000:.0f} ms in 4"
            f" phases, control plane down {outage_s:.0f} s, {drain},"
            " graceful drain at the end; HTTP/1.1 and HTTP/2 clients"
        )
    lines = [
        scenario,
        f"   before = after {WARMUP_S:.0f} s of load, then {warmup_churn_s:.0f} s of every"
        " push kind under load (not counted)",
        *table(results),
    ]
    lines += [
        f"   {result.proxy} RSS MiB each second while churning: {rss_curve(result)}"
        for result in results
    ]
    RESULTS.mkdir(exist_ok=True)
    name = f"churn-rds-{stamp}" if rds else f"churn-eds-{stamp}" if eds else f"churn-{stamp}"
    if (workers, drain_time_s, drain_strategy) != (1, DRAIN_TIME_S, DRAIN_STRATEGY):
        name += f"-c{workers}-{drain_strategy}-dt{drain_time_s:g}"
    picture = RESULTS / f"{name}.png"
    plot(results, picture)
    lines += [f"   {PLOT_LEGEND}", f"   plot: {picture}"]
    (RESULTS / f"{name}.txt").write_text("\n".join(lines) + "\n")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.churn")
    parser.add_argument("--seconds", type=float, default=None, help="churn per proxy (20)")
    parser.add_argument("--large", action="store_true", help="the issue's full 60 s")
    parser.add_argument(
        "--warmup-churn",
        type=float,
        default=WARMUP_CHURN_S,
        help=f"seconds of pushes under load before 'before' ({WARMUP_CHURN_S:.0f}; 0: load only)",
    )
    parser.add_argument(
        "--rds",
        action="store_true",
        help="the RDS scenario: route updates every 200 ms over ADS, listener updates that"
        " rename the route config",
    )
    parser.add_argument(
        "--eds",
        action="store_true",
        help="the EDS scenario: the backend cluster's endpoints replaced every 200 ms over ADS",
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=None,
        help="--concurrency of both proxies (1; above 1 they run on every CPU)",
    )
    parser.add_argument(
        "--drain-time",
        type=float,
        default=DRAIN_TIME_S,
        help=f"--drain-time-s of both proxies ({DRAIN_TIME_S})",
    )
    parser.add_argument(
        "--drain-strategy",
        choices=("gradual", "immediate"),
        default=DRAIN_STRATEGY,
        help=f"--drain-strategy of both proxies ({DRAIN_STRATEGY})",
    )
    args = parser.parse_args()
    if args.rds and args.eds:
        parser.error("--rds and --eds are two scenarios: pick one")
    lines = run(
        args.large,
        args.seconds,
        args.warmup_churn,
        args.rds,
        args.eds,
        drain_time_s=args.drain_time,
        drain_strategy=args.drain_strategy,
        concurrency=args.concurrency,
    )
    for line in lines:
        print(line, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
