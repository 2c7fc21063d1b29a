"""Load generators from Debian's packages, installed on first use, and reading their output."""

from __future__ import annotations

import re
import shutil
import subprocess


def ensure_tool(binary: str, package: str) -> str:
    """The path of `binary`; installs Debian's `package` with apt-get when it is missing."""
    found = shutil.which(binary)
    if found:
        return found
    print(f"   {binary} not found: installing `apt-get install -y {package}`", flush=True)
    sudo = [] if shutil.which("sudo") is None else ["sudo"]
    install = [*sudo, "apt-get", "install", "-y", package]
    if subprocess.run(install, capture_output=True).returncode != 0:
        subprocess.run([*sudo, "apt-get", "update"], capture_output=True)
        subprocess.run(install, capture_output=True)
    found = shutil.which(binary)
    if not found:
        raise RuntimeError(f"{binary} is missing and `apt-get install -y {package}` failed")
    return found


def wrk_result(output: str) -> tuple[float, int]:
    """(requests/s, requests answered) from wrk's output; raises on non-2xx responses."""
    rate = re.search(r"Requests/sec:\s+([0-9.]+)", output)
    total = re.search(r"(\d+) requests in", output)
    if rate is None or total is None:
        raise RuntimeError(f"cannot read wrk's output: {output!r}")
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    if errors:
        raise RuntimeError(f"{errors.group(1)} non-2xx responses: {output!r}")
    return float(rate.group(1)), int(total.group(1))


def h2load_result(output: str) -> tuple[float, int]:
    """(requests/s, requests answered) from h2load's output; raises on a failed request."""
    rate = re.search(r"finished in [0-9.]+m?s, ([0-9.]+) req/s", output)
    done = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded", output)
    if rate is None or done is None:
        raise RuntimeError(f"cannot read h2load's output: {output!r}")
    if done.group(1) != done.group(2):
        raise RuntimeError(f"failed requests: {output!r}")
    return float(rate.group(1)), int(done.group(2))
