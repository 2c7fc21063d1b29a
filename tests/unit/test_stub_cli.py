"""CLI pieces that need no process: argument rules, the status table, the status codec."""

from __future__ import annotations

import pytest

from control_plane_stub.cache import SERVED_TYPES
from control_plane_stub.cli import build_parser, format_status_table, main
from control_plane_stub.server import AddressError, split_address
from control_plane_stub.status_doc import status_from_proto, status_to_proto

LISTENER_TYPE = "type.googleapis.com/envoy.config.listener.v3.Listener"

DOCUMENT = {
    "nodes": [
        {
            "node": "edge",
            "streams": [
                {
                    "stream": 3,
                    "type_url": LISTENER_TYPE,
                    "mode": "sotw",
                    "connected_since": "2026-01-02T03:04:05.250Z",
                    "sent": {"version": "v2", "nonce": "7"},
                    "acked_version": "v1",
                    "nack": {"version": "v2", "nonce": "7", "code": 13, "message": "bad"},
                    "subscribed": ["*"],
                },
                {
                    "stream": 4,
                    "type_url": "type.googleapis.com/envoy.config.cluster.v3.Cluster",
                    "mode": "delta",
                    "connected_since": "2026-01-02T03:04:06Z",
                    "sent": None,
                    "acked_version": None,
                    "nack": None,
                    "subscribed": [],
                },
                {
                    "stream": 3,
                    "type_url": "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
                    "mode": "sotw",
                    "connected_since": "2026-01-02T03:04:05.250Z",
                    "sent": {"version": "r1", "nonce": "8"},
                    "acked_version": "r1",
                    "nack": None,
                    "subscribed": ["R", "R2"],
                },
            ],
        }
    ]
}


def test_status_document_round_trips_through_the_proto() -> None:
    assert status_from_proto(status_to_proto(DOCUMENT)) == DOCUMENT


def test_status_table() -> None:
    lines = format_status_table(DOCUMENT).splitlines()
    assert lines[0].split() == [
        "NODE",
        "STREAM",
        "TYPE",
        "MODE",
        "CONNECTED",
        "SINCE",
        "SENT",
        "NONCE",
        "ACKED",
        "SUBSCRIBED",
    ]
    assert lines[1].split() == [
        "edge",
        "3",
        "Listener",
        "sotw",
        "2026-01-02T03:04:05.250Z",
        "v2",
        "7",
        "v1",
        "*",
    ]
    assert lines[2].strip() == "NACK of version v2 (nonce 7, code 13): bad"
    assert lines[3].split() == [
        "edge",
        "4",
        "Cluster",
        "delta",
        "2026-01-02T03:04:06Z",
        "-",
        "-",
        "-",
        "-",
    ]
    assert lines[4].split()[2:] == [
        "RouteConfiguration",
        "sotw",
        "2026-01-02T03:04:05.250Z",
        "r1",
        "8",
        "r1",
        "R,R2",
    ]
    assert format_status_table({"nodes": []}) == "no node connected"


def test_defaults_follow_the_interface() -> None:
    parser = build_parser()
    serve = parser.parse_args(["serve"])
    assert (serve.xds, serve.control, serve.watch) == ("127.0.0.1:18000", "127.0.0.1:18001", False)
    wait = parser.parse_args(["wait", "--version", "v"])
    assert (wait.control, wait.timeout, wait.node) == ("127.0.0.1:18001", 30.0, None)
    assert wait.section == "listeners"
    for section in SERVED_TYPES:  # `wait --type` knows every section the stub serves
        assert parser.parse_args(["wait", "--version", "v", "--type", section]).section == section
    push = parser.parse_args(["push", "f.yaml"])
    assert (push.control, push.raw, push.node) == ("127.0.0.1:18001", False, None)


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["bogus"],
        ["wait"],
        ["push"],
        ["serve", "--nope"],
        ["wait", "--version", "v", "--type", "x"],
    ],
)
def test_usage_errors_are_one_line_exit_1(argv, capsys) -> None:
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("control-plane-stub: ") and len(err.splitlines()) == 1


@pytest.mark.parametrize(
    ("address", "expected"),
    [("127.0.0.1:0", ("127.0.0.1", 0)), ("[::1]:18000", ("[::1]", 18000)), ("h:1", ("h", 1))],
)
def test_split_address(address, expected) -> None:
    assert split_address(address) == expected


@pytest.mark.parametrize("address", ["nonsense", ":1", "h:x", "h:70000"])
def test_split_address_refuses(address) -> None:
    with pytest.raises(AddressError):
        split_address(address)
