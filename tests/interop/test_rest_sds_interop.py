"""REST SDS (`sds_config.api_config_source {api_type: REST}`, which Envoy 1.40 accepts and polls
at `POST /v3/discovery:secrets`) from the scripted REST control plane, which also serves the
listener over REST LDS; run against Envoy 1.40 and against xds-proxy with the same answers
and the same TLS clients; what each step shows must be equal:

1. the secrets poll fails (503): the TLS listener keeps warming (its port refuses), every
   failed fetch counts `sds.cert.update_failure`;
2. the secret arrives: handshakes get its certificate;
3. rotation: new handshakes get the new certificate, nothing drains;
4. bad answers (a secret whose key does not match its certificate; then failed fetches): the
   held certificate keeps serving;
5. nothing changes: the control plane answers 304, which counts only `update_attempt`.

One difference is recorded, not compared (docs/rest-xds.md): Envoy 1.40 takes the version
of a REST secret that does not load (`update_success` and `update_rejected` both count, the
next polls carry that version, so the control plane answers 304); xds-proxy rejects it as
over gRPC (the next polls carry the last accepted version, so the control plane sends it
again and it is rejected again).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.helpers.certs import CertificateAuthority
from tests.helpers.envoy import EnvoyProcess
from tests.helpers.http_client import refused
from tests.helpers.procs import free_port, wait_for
from tests.helpers.proxy import ProxyProcess
from tests.helpers.rest_cp import Reply, RestControlPlane, Scripted, by_type
from tests.helpers.upstreams import LoopThread, cluster_dict
from tests.interop.test_rest_eds_interop import TYPES, rest_source
from tests.interop.test_stub_eds_sds_interop import handshake_serial, sds_listener, tls_secret

pytestmark = [pytest.mark.envoy, pytest.mark.timeout(120)]

SECRET_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
LISTENER_STATS = "^listener_manager\\.(listener_|total_)"
UPDATES = tuple(
    f"sds.cert.{name}"
    for name in ("update_attempt", "update_success", "update_failure", "update_rejected")
)


def secret(issued: Any, key_of: Any = None) -> dict[str, Any]:
    body = tls_secret("cert", issued)
    if key_of is not None:  # a key that does not match the certificate
        body["tls_certificate"]["private_key"]["inline_string"] = key_of.key_pem.decode()
    return {"@type": SECRET_TYPE, **body}


class Scenario:
    def __init__(self, tmp_path: Path, make_process: type[EnvoyProcess]) -> None:
        self.ca = CertificateAuthority("rest-sds-ca")
        self.old = self.ca.issue("server-old", dns_names=["server.test"])
        self.new = self.ca.issue("server-new", dns_names=["server.test"])
        self.port = free_port()
        listener = sds_listener("L", self.port, "cert", {"api_config_source": api()})
        self.answers: dict[str, Scripted] = {
            "listeners": ("l1", [{"@type": TYPES["listeners"], **listener}]),
            "secrets": Reply(503),
        }
        self.loop = LoopThread()
        self.cp = RestControlPlane(respond=by_type(self.answers))
        self.loop.run(self.cp.start())
        boot = {
            "node": {"id": "proxy-1", "cluster": "web"},
            "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
            "dynamic_resources": {"lds_config": rest_source()},
            "static_resources": {"clusters": [cluster_dict("cp", [self.cp.port])]},
        }
        self.process = make_process(boot, tmp_path)

    def stat(self, name: str) -> int:
        return self.process.stat(name) or 0

    def serial(self) -> str | int:
        try:
            return handshake_serial(self.port, self.ca.cert_pem)
        except OSError as error:
            return type(error).__name__

    def which(self) -> str:
        return {self.old.serial: "old", self.new.serial: "new"}.get(self.serial(), "none")

    def secret_polls(self) -> list[Any]:
        return [seen for seen in self.cp.seen if seen.path.endswith(":secrets")]

    def polled_version(self) -> str:
        """The version the last secrets poll carried."""
        return self.secret_polls()[-1].body.get("version_info", "")

    def counters(self) -> dict[str, int]:
        return {name: self.stat(name) for name in UPDATES}

    def stop(self) -> None:
        self.process.stop()
        self.loop.run(self.cp.stop())
        self.loop.stop()


def api() -> dict[str, Any]:
    return rest_source()["api_config_source"]


def run_scenario(
    make_process: type[EnvoyProcess], tmp_path: Path
) -> tuple[list[tuple[str, Any]], dict[str, Any]]:
    """(what must be equal, what differs)."""
    notes: list[tuple[str, Any]] = []
    differs: dict[str, Any] = {}
    scenario = Scenario(tmp_path, make_process)
    try:
        scenario.process.start()
        # 1. the secrets poll fails: the listener warms.
        wait_for(lambda: scenario.stat("sds.cert.update_failure") >= 3, timeout=15)
        notes.append(("1 warming", scenario.stat("listener_manager.total_listeners_warming")))
        notes.append(("1 refused", refused(scenario.port)))
        notes.append(
            (
                "1 polls",
                {(s.path, tuple(s.body.get("resource_names", []))) for s in scenario.cp.seen},
            )
        )

        # 2. the secret arrives.
        scenario.answers["secrets"] = ("s1", [secret(scenario.old)])
        wait_for(lambda: scenario.which() == "old", timeout=15, what="the first certificate")
        notes.append(("2 active", scenario.stat("listener_manager.total_listeners_active")))
        notes.append(("2 version", scenario.process.stats("version_text")["sds.cert.version_text"]))

        # 3. rotation: nothing drains.
        before = scenario.process.stats(LISTENER_STATS)
        scenario.answers["secrets"] = ("s2", [secret(scenario.new)])
        wait_for(lambda: scenario.which() == "new", timeout=15, what="the new certificate")
        notes.append(("3 listener stats kept", scenario.process.stats(LISTENER_STATS) == before))

        # 4. bad answers keep the held certificate.
        rejected = scenario.stat("sds.cert.update_rejected")
        scenario.answers["secrets"] = ("s3", [secret(scenario.old, key_of=scenario.new)])
        wait_for(lambda: scenario.stat("sds.cert.update_rejected") > rejected, timeout=15)
        notes.append(("4 rejected: served", scenario.which()))
        polls = len(scenario.secret_polls())  # the next ones follow the rejection
        wait_for(lambda: len(scenario.secret_polls()) >= polls + 2, timeout=15)
        differs["version after the rejection"] = scenario.polled_version()
        failed = scenario.stat("sds.cert.update_failure")
        scenario.answers["secrets"] = Reply(500)
        wait_for(lambda: scenario.stat("sds.cert.update_failure") >= failed + 3, timeout=15)
        notes.append(("4 failed: served", scenario.which()))
        differs["version_text"] = scenario.process.stats("version_text")["sds.cert.version_text"]

        # 5. 304s: only update_attempt moves.
        switched = len(scenario.cp.seen)
        scenario.answers["secrets"] = (scenario.polled_version(), [secret(scenario.new)])
        # A poll sent after the switch: the answer before it (a 500) has been counted.
        wait_for(
            lambda: any(s.path.endswith(":secrets") for s in scenario.cp.seen[switched:]),
            timeout=5,
        )
        before_counts = scenario.counters()
        wait_for(
            lambda: scenario.stat(UPDATES[0]) >= before_counts[UPDATES[0]] + 4,
            timeout=15,
            what="304s counted",
        )
        after = scenario.counters()
        notes.append(("5 moved", {name: after[name] > before_counts[name] for name in UPDATES}))
        notes.append(("5 served", scenario.which()))
        return notes, differs
    except BaseException:
        print(scenario.process.log()[-6000:] if scenario.process.process else "")
        raise
    finally:
        scenario.stop()


def test_rest_sds_envoy_and_xds_proxy_agree(tmp_path: Path) -> None:
    envoy, envoy_differs = run_scenario(EnvoyProcess, tmp_path / "envoy")
    ours, ours_differs = run_scenario(ProxyProcess, tmp_path / "ours")
    assert ours == envoy
    assert envoy_differs == {"version after the rejection": "s3", "version_text": '"s3"'}
    assert ours_differs == {"version after the rejection": "s2", "version_text": '"s2"'}
    expected = dict(envoy)
    assert expected["1 refused"]
    assert ("/v3/discovery:secrets", ("cert",)) in expected["1 polls"]
    assert expected["3 listener stats kept"]
    assert expected["4 rejected: served"] == expected["4 failed: served"] == "new"
    assert expected["5 moved"] == {
        "sds.cert.update_attempt": True,
        "sds.cert.update_success": False,
        "sds.cert.update_failure": False,
        "sds.cert.update_rejected": False,
    }
