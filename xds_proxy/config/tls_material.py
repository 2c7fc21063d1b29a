"""Loading TLS material (a certificate chain and its private key) into an `ssl.SSLContext`,
for both directions: a listener's server context and a cluster's client context (config/tls.py).

`ssl` loads certificates from files only: it is handed anonymous in-memory files where the
system has them (memfd: the private key never touches a disk), a private temporary folder
(mode 0700, removed at once) otherwise.
"""

from __future__ import annotations

import contextlib
import os
import ssl
import tempfile
from collections.abc import Iterator

from xds_proxy.errors import ConfigError


def load_cert_chain(context: ssl.SSLContext, chain: bytes, key: bytes, path: str) -> None:
    """Raises ConfigError (`PATH: cannot load the certificate chain and private key (...)`)."""
    reason = try_load_cert_chain(context, chain, key)
    if reason is not None:
        raise ConfigError(f"{path}: cannot load the certificate chain and private key ({reason})")


def try_load_cert_chain(context: ssl.SSLContext, chain: bytes, key: bytes) -> str | None:
    """Load them; None, or OpenSSL's reason why not (e.g. `KEY_VALUES_MISMATCH`)."""
    try:
        with _as_files(chain, key) as (chain_path, key_path):
            context.load_cert_chain(chain_path, key_path)
    except ssl.SSLError as error:
        return str(error.reason)
    return None


@contextlib.contextmanager
def _as_files(*contents: bytes) -> Iterator[tuple[str, ...]]:
    if hasattr(os, "memfd_create") and os.path.isdir("/proc/self/fd"):
        fds = []
        try:
            for content in contents:
                fd = os.memfd_create("xds-proxy-tls", os.MFD_CLOEXEC)
                fds.append(fd)
                os.write(fd, content)
            yield tuple(f"/proc/self/fd/{fd}" for fd in fds)
        finally:
            for fd in fds:
                os.close(fd)
        return
    with tempfile.TemporaryDirectory(prefix="xds-proxy-tls-") as folder:
        paths = []
        for index, content in enumerate(contents):
            file_path = os.path.join(folder, f"{index}.pem")
            with open(file_path, "wb") as out:
                out.write(content)
            paths.append(file_path)
        yield tuple(paths)
