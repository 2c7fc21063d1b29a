"""Load generators from Debian's packages, installed on first use."""

from __future__ import annotations

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
