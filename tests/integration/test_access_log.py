"""Access-log writing in a real xds-proxy: lines are buffered off the event loop and reach
the file within `--file-flush-interval-msec`, and every buffered line is written at exit."""

from __future__ import annotations

import time

import httpx

from tests.helpers.procs import free_port, wait_for
from tests.helpers.proxy import ProxyProcess
from tests.integration.test_upstream_proxy import bootstrap, http_listener

FILE_LOG = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"
DIRECT = {"match": {"prefix": "/"}, "direct_response": {"status": 200}}


def _start(tmp_path, flush_msec: int, extra_logs: tuple = ()) -> tuple[ProxyProcess, int]:
    port = free_port()
    access_log = [
        {
            "name": "file",
            "typed_config": {
                "@type": FILE_LOG,
                "path": str(tmp_path / "access.log"),
                "log_format": {"text_format_source": {"inline_string": "%REQ(:PATH)%\n"}},
            },
        },
        *extra_logs,
    ]
    process = ProxyProcess(
        bootstrap([http_listener(port, [DIRECT], access_log=access_log)], []),
        tmp_path,
        extra_args=["--file-flush-interval-msec", str(flush_msec)],
    )
    process.start()
    process.wait_ready()
    return process, port


def _lines(tmp_path) -> list[str]:
    path = tmp_path / "access.log"
    return path.read_text().splitlines() if path.exists() else []


def test_lines_are_flushed_within_the_interval(tmp_path) -> None:
    process, port = _start(tmp_path, 300)
    try:
        httpx.get(f"http://127.0.0.1:{port}/one")
        sent = time.monotonic()
        wait_for(lambda: _lines(tmp_path) == ["/one"], timeout=5, what="the line in the file")
        assert time.monotonic() - sent < 2.0
    finally:
        process.stop()


def test_buffered_lines_are_written_at_exit(tmp_path) -> None:
    process, port = _start(tmp_path, 600_000)  # never flushed by the timer in this test
    try:
        with httpx.Client() as client:
            for index in range(3):
                assert client.get(f"http://127.0.0.1:{port}/r{index}").status_code == 200
        time.sleep(0.3)
        assert _lines(tmp_path) == []
    finally:
        process.stop()
    assert _lines(tmp_path) == ["/r0", "/r1", "/r2"]


def test_stdout_and_stderr_loggers_write_to_the_process_streams(tmp_path) -> None:
    stream = "type.googleapis.com/envoy.extensions.access_loggers.stream.v3."

    def logger(kind: str) -> dict:
        text = f"{kind} %REQ(:PATH)% %RESPONSE_CODE%\n"
        return {
            "name": f"envoy.access_loggers.{kind.lower()}",
            "typed_config": {
                "@type": f"{stream}{kind}AccessLog",
                "log_format": {"text_format_source": {"inline_string": text}},
            },
        }

    process, port = _start(tmp_path, 100, (logger("Stdout"), logger("Stderr")))
    try:
        httpx.get(f"http://127.0.0.1:{port}/streamed")
        wait_for(
            lambda: (
                "Stdout /streamed 200" in process.log() and "Stderr /streamed 200" in process.log()
            ),
            timeout=5,
            what="the stdout and stderr lines in the process output",
        )
    finally:
        process.stop()
