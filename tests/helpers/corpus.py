"""Push a control plane's resource list over ADS to a real Envoy or to xds-proxy, and see what
it makes of it: which types it ACKs, the NACK texts, which listeners are active.

A resource list is the shape control planes print and keep as golden files:

    resources:
    - name: inbound_80
      resource:
        '@type': type.googleapis.com/envoy.config.listener.v3.Listener
        ...

`load_resource_list` sorts it into the stub's sections; `localize` moves every listener
that binds to 127.0.0.1 on a free port (a golden file names its pod's addresses);
`with_placeholder_secrets` adds a generated secret for every SDS name a file uses and does
not hold (tests/helpers/secrets.py). `push_and_observe` starts the stub, then the proxy under
test with LDS and CDS over ADS, and waits until every pushed type is answered (ACK or NACK)
or the deadline.
"""

from __future__ import annotations

import contextlib
import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from control_plane_stub.cache import SERVED_TYPES
from tests.helpers.envoy import EnvoyProcess, load_bootstrap, with_xds_address
from tests.helpers.procs import free_port, wait_for
from tests.helpers.proxy import ProxyProcess
from tests.helpers.secrets import placeholder_secrets
from tests.helpers.stub import StubProcess

SECTION_OF_TYPE = {type_url: section for section, type_url in SERVED_TYPES.items()}


def load_resource_list(path: Path) -> dict[str, list[dict[str, Any]]]:
    """The resources of a golden file, by stub section, each without its `@type`."""
    document = yaml.safe_load(path.read_text())
    sections: dict[str, list[dict[str, Any]]] = {}
    for entry in document.get("resources") or []:
        body = dict(entry["resource"])
        type_url = body.pop("@type")
        section = SECTION_OF_TYPE.get(type_url)
        if section is None:
            raise ValueError(f"{path}: {entry.get('name')}: a type the stub does not serve")
        sections.setdefault(section, []).append(body)
    return sections


def _socket_address(listener: dict[str, Any]) -> dict[str, Any] | None:
    address = listener.get("address") or {}
    return address.get("socket_address") or address.get("socketAddress")


def localize(sections: dict[str, list[dict[str, Any]]]) -> dict[str, list[dict[str, Any]]]:
    """A copy whose listeners that bind listen on 127.0.0.1, each on a free port."""
    moved = copy.deepcopy(sections)
    for listener in moved.get("listeners", []):
        socket_address = _socket_address(listener)
        binds = listener.get("bind_to_port", listener.get("bindToPort", True))
        if socket_address is None or binds is False:
            continue
        socket_address["address"] = "127.0.0.1"
        socket_address.pop("portValue", None)
        socket_address["port_value"] = free_port()
    return moved


def with_placeholder_secrets(
    sections: dict[str, list[dict[str, Any]]],
) -> dict[str, list[dict[str, Any]]]:
    """`sections` plus a placeholder for every SDS secret they use and do not hold."""
    held = sections.get("secrets", [])
    placeholders = placeholder_secrets(
        sections.get("listeners", []),
        sections.get("clusters", []),
        held=[secret["name"] for secret in held],
    )
    return {**sections, "secrets": held + placeholders}


@dataclass
class Observed:
    """What one proxy made of one resource list."""

    answered: dict[str, str] = field(default_factory=dict)  # section -> "ack" | "nack" | "none"
    nacks: list[str] = field(default_factory=list)
    listeners_pushed: int = 0
    listeners_active: list[str] = field(default_factory=list)
    listener_ports: dict[str, int] = field(default_factory=dict)  # active listener -> port

    @property
    def accepted_fully(self) -> bool:
        """Every resource ACKed and every listener active."""
        return (
            all(state == "ack" for state in self.answered.values())
            and len(self.listeners_active) == self.listeners_pushed
        )


def _proxy_class(kind: str) -> type[EnvoyProcess]:
    return EnvoyProcess if kind == "envoy" else ProxyProcess


def _answer(stub: StubProcess, node: str, section: str, version: str) -> str:
    type_url = SERVED_TYPES[section]
    for nack in stub.nacks():
        if nack.get("version") == version:
            return "nack"
    acked = stub.acked_versions(node, type_url)
    if acked and all(v == version for v in acked):
        return "ack"
    for stream in (s for n in stub.client.status()["nodes"] for s in n["streams"]):
        if stream["type_url"] == type_url and stream.get("nack") is not None:
            return "nack"
    return "none"


def _active_listeners(proxy: EnvoyProcess) -> dict[str, int]:
    """Active dynamic listeners of the admin's config dump, with their ports."""
    status, body = proxy.get("/config_dump?resource=dynamic_listeners")
    if status != 200:
        return {}
    active: dict[str, int] = {}
    for config in json.loads(body).get("configs", []):
        state = config.get("active_state")
        if state is None:
            continue
        listener = state["listener"]
        socket_address = _socket_address(listener) or {}
        active[listener["name"]] = int(socket_address.get("port_value", 0))
    return active


def push_and_observe(
    kind: str,
    sections: dict[str, list[dict[str, Any]]],
    workdir: Path,
    node: str = "corpus",
    timeout: float = 15.0,
    keep_running: bool = False,
) -> tuple[Observed, EnvoyProcess | None, StubProcess | None]:
    """Start the stub with `sections`, then `kind` ("envoy" or "xds-proxy") on ADS (SotW)
    for LDS and CDS; wait until every pushed section is answered. With `keep_running` the
    processes are returned running (the caller stops them), else stopped."""
    stub = StubProcess(workdir / "stub").start()
    proxy: EnvoyProcess | None = None
    try:
        versions = stub.client.set_resources(**{k: v for k, v in sections.items() if v})
        bootstrap = with_xds_address(load_bootstrap("ads-sotw"), stub.xds_address, node_id=node)
        bootstrap["dynamic_resources"]["cds_config"] = {"resource_api_version": "V3", "ads": {}}
        proxy = _proxy_class(kind)(bootstrap, workdir / kind).start()
        observed = Observed(listeners_pushed=len(sections.get("listeners", [])))

        def answered() -> bool:
            observed.answered = {
                section: _answer(stub, node, section, version)
                for section, version in versions.items()
                if sections.get(section)
            }
            return all(state != "none" for state in observed.answered.values())

        # A type left unanswered (e.g. a cluster still warming) stays "none".
        with contextlib.suppress(TimeoutError):
            wait_for(answered, timeout=timeout, what="every section answered")
        observed.nacks = [nack["message"] for nack in stub.nacks()]
        observed.listener_ports = _active_listeners(proxy)
        observed.listeners_active = sorted(observed.listener_ports)
    except BaseException:
        if proxy is not None:
            proxy.stop()
        stub.stop()
        raise
    if keep_running:
        return observed, proxy, stub
    proxy.stop()
    stub.stop()
    return observed, None, None
