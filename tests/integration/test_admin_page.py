"""The admin page `GET /` as a person sees it during a drain: headless Chromium renders it
(JavaScript included) from a real xds-proxy fed by a real control-plane-stub."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import urllib.parse
from html.parser import HTMLParser
from pathlib import Path

import pytest

from control_plane_stub.client import StubNack
from tests.helpers.http_client import HttpConnection, get
from tests.helpers.listeners import http_listener, lds_bootstrap
from tests.helpers.procs import free_port, wait_for
from tests.helpers.proxy import ProxyProcess
from tests.helpers.stub import StubProcess
from xds_proxy.admin.update_log import LdsUpdateLog

DRAIN_SECONDS = 30  # long enough to be in progress while Chromium looks; the test ends it


def chromium_binary() -> str | None:
    """Debian's `chromium`, installed here when missing (as root with apt-get) or None."""
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return None
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "chromium", "chromium-driver"]
    result = subprocess.run(install, capture_output=True, env=env, timeout=600)
    if result.returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], capture_output=True, timeout=300)
        subprocess.run(install, capture_output=True, env=env, timeout=600)
    return shutil.which("chromium")


@pytest.fixture(scope="module")
def chromium() -> str:
    binary = chromium_binary()
    if binary is None:
        reason = "headless Chromium is not installed and cannot be installed here"
        print(f"SKIP admin page test: {reason}")
        pytest.skip(reason)
    return binary


def render(chromium: str, url: str, profile: Path, screenshot: Path | None = None) -> str:
    """The DOM after the page's scripts ran (`--virtual-time-budget` lets its fetches finish)."""
    common = [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        f"--user-data-dir={profile}",
        "--virtual-time-budget=4000",
    ]
    if screenshot is not None:
        subprocess.run(
            [*common, f"--screenshot={screenshot}", "--window-size=1200,900", url],
            capture_output=True,
            timeout=60,
        )
    result = subprocess.run([*common, "--dump-dom", url], capture_output=True, timeout=60)
    assert result.returncode == 0, result.stderr.decode(errors="replace")[-2000:]
    return result.stdout.decode()


class Tables(HTMLParser):
    """Rows of text cells per table id, and the progress bars' values, from a DOM dump."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.progress: list[int] = []
        self.texts: dict[str, str] = {}
        self._table: str | None = None
        self._cell: list[str] | None = None
        self._row: list[str] | None = None
        self._id: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "table":
            self._table = found.get("id")
            self.tables[self._table or ""] = []
        elif tag == "tr" and self._table is not None:
            self._row = []
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []
        if found.get("role") == "progressbar":
            self.progress.append(int(found.get("aria-valuenow") or 0))
        if tag == "div" and found.get("id"):
            self._id = found["id"]
            self.texts[self._id] = ""

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._row.append(" ".join(" ".join(self._cell).split()))
            self._cell = None
        elif tag == "tr" and self._row is not None and self._table is not None:
            self.tables[self._table].append(self._row)
            self._row = None
        elif tag == "table":
            self._table = None
        elif tag == "div":
            self._id = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)
        if self._id is not None:
            self.texts[self._id] += data


def parse(dom: str) -> Tables:
    tables = Tables()
    tables.feed(dom)
    return tables


def push(stub, listeners: list, version: str) -> None:
    stub.client.wait(
        stub.client.set_resources(listeners=listeners, version=version)["listeners"], timeout=10
    )


@pytest.fixture
def stub(tmp_path):
    process = StubProcess(tmp_path, xds=f"127.0.0.1:{free_port()}").start()
    yield process
    process.stop()


@pytest.fixture
def proxy(tmp_path, stub):
    args = ["--drain-time-s", str(DRAIN_SECONDS), "--drain-strategy", "immediate"]
    process = ProxyProcess(lds_bootstrap(stub.xds_address), tmp_path, extra_args=args)
    process.start()
    process.wait_ready()
    yield process
    process.stop()


# The first run installs Chromium (its apt-get steps are bounded at 600 + 300 + 600 s).
@pytest.mark.timeout(1560)
def test_page_shows_listeners_drain_progress_and_lds_outcomes(chromium, tmp_path, stub, proxy):
    web, api = free_port(), free_port()
    push(stub, [http_listener("web", web, body="v1")], "v1")
    busy = HttpConnection(web)
    assert busy.request().text == "v1"
    busy.sock.sendall(b"GET / HTTP/1.1\r\nhost: x\r\n")  # a request half sent: it stays
    modified = http_listener("web", web, body="v2", per_connection_buffer_limit_bytes=65536)
    v2 = [modified, http_listener("api", api, body="api")]
    push(stub, v2, "v2")
    wait_for(lambda: get(web).text == "v2", timeout=5)
    clash = [*v2, http_listener("clash", api, body="clash")]
    stub.client.set_resources(listeners=clash, version="v3")
    with pytest.raises(StubNack):
        stub.client.wait("v3", timeout=10)
    drains = json.loads(proxy.get("/drain_status")[1])["drains"]
    assert [(d["listener"], d["connections"]) for d in drains] == [("web", 1)]

    admin = proxy.admin_address
    status, body = proxy.get("/")
    assert status == 200 and "<title>xds-proxy admin</title>" in body
    assert not re.search(r"(src|href)=\"(https?:)?//", body)  # no external assets
    screenshot = tmp_path / "admin-page.png"
    page = parse(render(chromium, f"http://{admin}/", tmp_path / "chromium", screenshot))

    summary = page.texts.get("summary", "")
    assert "server: LIVE" in summary and "LDS version: v2" in summary, summary
    assert re.search(r"updates: \d+ accepted, 1 rejected", summary), summary

    listeners = {(row[0], row[3].split()[0]): row for row in page.tables["listeners"][1:]}
    assert listeners[("web", "active")][1:3] == [f"127.0.0.1:{web}", "v2"]
    assert listeners[("web", "draining")][1:3] == [f"127.0.0.1:{web}", "v1"]
    assert listeners[("api", "active")][1:3] == [f"127.0.0.1:{api}", "v2"]
    assert "has duplicate address" in listeners[("clash", "error")][3]

    drain_rows = page.tables["drains"][1:]
    assert len(drain_rows) == 1, drain_rows
    what, version, trigger, progress, connections = drain_rows[0]
    assert (what, version, connections) == ("listener web", "v1", "1")
    # The trigger and why (issue 24): the push, its nonce, what changed.
    assert trigger.startswith("lds_update · push v2 (nonce "), trigger
    assert trigger.endswith(
        " · changed filter_chains[0].filters[0].typed_config.route_config.virtual_hosts[0]"
        ".routes[0].direct_response.body.inline_string, per_connection_buffer_limit_bytes"
    ), trigger
    assert re.search(rf"\d+% · [\d.]+ s left of {DRAIN_SECONDS} s \(immediate\)", progress)
    assert len(page.progress) == 1 and 0 <= page.progress[0] < 100

    updates = page.tables["updates"][1:]
    assert [row[1:3] for row in updates[:3]] == [["v3", "NACK"], ["v2", "ACK"], ["v1", "ACK"]]
    assert "duplicate address" in updates[0][4]
    assert updates[1][4] == "" and updates[1][3] == "2 in response"

    # The drain ends (the held request completes on v1): the page says nothing is draining.
    busy.sock.sendall(b"\r\n")
    assert busy.read_response().text == "v1"
    wait_for(lambda: json.loads(proxy.get("/drain_status")[1])["drains"] == [], timeout=5)
    after = parse(render(chromium, f"http://{admin}/", tmp_path / "chromium"))
    assert after.tables["drains"][1:] == [["nothing is draining"]]
    states = {(row[0], row[3].split()[0]) for row in after.tables["listeners"][1:]}
    assert ("web", "draining") not in states and ("web", "active") in states


@pytest.mark.timeout(1560)
def test_the_plan_box_shows_what_a_push_would_do(chromium, tmp_path, stub, proxy):
    web = free_port()
    push(stub, [http_listener("web", web, body="v1")], "v1")
    held = HttpConnection(web)
    held.sock.sendall(b"GET / HTTP/1.1\r\nhost: x\r\n")  # a request half sent
    wait_for(lambda: proxy.stat("server.total_connections") == 1, timeout=5)
    body = json.dumps(
        {"listeners": [http_listener("web", web, body="v1", per_connection_buffer_limit_bytes=9)]}
    )
    url = f"http://{proxy.admin_address}/#plan={urllib.parse.quote(body)}"
    page = parse(render(chromium, url, tmp_path / "chromium"))
    assert page.tables["plan"][1:] == [
        ["web", "full_update", "1", "version v1; changed per_connection_buffer_limit_bytes"]
    ]
    assert page.texts["plan-verdict"] == "would ACK · connections that would drain: 1"
    assert json.loads(proxy.get("/drain_status")[1])["drains"] == []  # nothing changed
    held.close()


def test_json_log_of_lds_updates(stub, proxy):
    port = free_port()
    push(stub, [http_listener("web", port)], "one")
    status, body = proxy.get("/?format=json")
    assert status == 200
    entries = json.loads(body)["lds_updates"]
    # The stub's first response is its empty initial set; then ours.
    assert [(e["version_info"], e["outcome"], e["error"]) for e in entries][-1] == (
        "one",
        "ACK",
        "",
    )
    assert entries[-1]["kind"] == "sotw" and entries[-1]["updated"] == 1
    assert entries[-1]["at"].endswith("+00:00")


def test_update_log_keeps_the_newest_entries() -> None:
    clock = iter(range(100, 200))
    log = LdsUpdateLog(size=3, clock=lambda: float(next(clock)))
    for index in range(5):
        log.record("sotw", f"v{index}", None if index % 2 == 0 else f"bad {index}\n", index)
    entries = log.entries()
    assert [(e["version_info"], e["outcome"], e["error"]) for e in entries] == [
        ("v2", "ACK", ""),
        ("v3", "NACK", "bad 3"),
        ("v4", "ACK", ""),
    ]
    assert entries[0]["at"] == "1970-01-01T00:01:42.000+00:00" and entries[2]["updated"] == 4


def test_json_log_records_delta_updates(tmp_path, stub) -> None:
    bootstrap = lds_bootstrap(stub.xds_address)
    bootstrap["dynamic_resources"]["lds_config"]["api_config_source"]["api_type"] = "DELTA_GRPC"
    proxy = ProxyProcess(bootstrap, tmp_path).start()
    try:
        proxy.wait_ready()
        first, second = free_port(), free_port()
        push(stub, [http_listener("a", first), http_listener("b", second)], "d1")
        push(stub, [http_listener("a", first)], "d2")
        entries = json.loads(proxy.get("/?format=json")[1])["lds_updates"]
        assert {entry["kind"] for entry in entries} == {"delta"}
        assert [(e["outcome"], e["updated"], e["removed"]) for e in entries][-2:] == [
            ("ACK", 2, 0),
            ("ACK", 0, 1),
        ]
    finally:
        proxy.stop()
