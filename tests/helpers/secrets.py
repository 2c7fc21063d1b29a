"""Placeholder SDS secrets for resource lists that reference secrets they do not hold (a corpus
of control-plane output): every secret name a listener's or cluster's TLS context takes from
SDS gets a generated one, a certificate for `tls_certificate_sds_secret_configs`, a CA bundle
for a validation context.

    secrets = placeholder_secrets(listeners, clusters, held=[s["name"] for s in secrets])
    stub.client.set_resources(listeners=listeners, clusters=clusters, secrets=secrets)

Resources are the stub's dicts (proto JSON with `@type` in each Any), with field names in
snake_case or camelCase (as control planes dump them).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from tests.helpers.certs import CertificateAuthority

_PLACEHOLDER_CA = CertificateAuthority("placeholder-secrets-ca")
_TLS_CONTEXTS = (
    "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
    "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
)


def placeholder_secrets(
    listeners: Iterable[dict[str, Any]] = (),
    clusters: Iterable[dict[str, Any]] = (),
    held: Iterable[str] = (),
) -> list[dict[str, Any]]:
    """A Secret for every SDS name the resources use and `held` does not name, sorted."""
    wanted: dict[str, bool] = {}  # name -> a validation context (else a certificate)
    for common in _common_tls_contexts([*listeners, *clusters]):
        for config in _field(common, "tls_certificate_sds_secret_configs") or []:
            wanted.setdefault(config["name"], False)
        combined = _field(common, "combined_validation_context") or {}
        for config in (
            _field(common, "validation_context_sds_secret_config"),
            _field(combined, "validation_context_sds_secret_config"),
        ):
            if config is not None:
                wanted.setdefault(config["name"], True)
    missing = sorted(set(wanted) - set(held))
    return [_secret(name, validation=wanted[name]) for name in missing]


def _secret(name: str, validation: bool) -> dict[str, Any]:
    if validation:
        bundle = _PLACEHOLDER_CA.cert_pem.decode()
        return {"name": name, "validation_context": {"trusted_ca": {"inline_string": bundle}}}
    issued = _PLACEHOLDER_CA.issue(name, dns_names=["placeholder.test"])
    return {
        "name": name,
        "tls_certificate": {
            "certificate_chain": {"inline_string": issued.cert_pem.decode()},
            "private_key": {"inline_string": issued.key_pem.decode()},
        },
    }


def _field(message: dict[str, Any], name: str) -> Any:
    """A field by its snake_case name or its camelCase JSON name."""
    if name in message:
        return message[name]
    head, *rest = name.split("_")
    return message.get(head + "".join(part.title() for part in rest))


def _common_tls_contexts(value: Any) -> Iterator[dict[str, Any]]:
    """Every `common_tls_context` of a TLS context anywhere in `value` (sockets nest in filter
    chains, clusters, transport_socket_matches...)."""
    if isinstance(value, dict):
        if value.get("@type", "").rpartition("/")[2] in _TLS_CONTEXTS:
            yield _field(value, "common_tls_context") or {}
        for item in value.values():
            yield from _common_tls_contexts(item)
    elif isinstance(value, list):
        for item in value:
            yield from _common_tls_contexts(item)
