"""The walker that checks a message against the support table, and the checks built on it.

`check_listener` / `listener_errors` are the LDS path's checks (paths start at the caller's
prefix), `check_bootstrap` the bootstrap's, and `require_valid` (the proto constraints, then
the table) the gate of a message that arrives on its own (a CDS cluster). Checks of content
that repeats byte for byte (the same HCM in 10,000 chains) are cached by those bytes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import address_pb2
from envoy.config.listener.v3 import listener_pb2
from google.protobuf import any_pb2
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from xds_proxy import extensions
from xds_proxy.bounded_cache import RELATIVE_ROOT, BoundedCache, cached, relocate
from xds_proxy.config.clean import is_clean
from xds_proxy.config.overload import global_limit_errors
from xds_proxy.config.pgv import (
    CACHED_SUBTREES,
    canonical_ip,
    join_path,
    map_key_path,
    validate_message,
)
from xds_proxy.config.rules import (
    Extension,
    Inert,
    InertExcept,
    NotYet,
    Rule,
    Supported,
    Values,
)
from xds_proxy.config.table import LEAF_TYPES, TABLE
from xds_proxy.errors import ConfigError

NOT_YET = "not supported yet"


@dataclass
class _Findings:
    errors: list[str] = field(default_factory=list)
    inert: list[str] = field(default_factory=list)

    def add_relocated(self, found: tuple[tuple[str, ...], tuple[str, ...]], path: str) -> None:
        """Findings computed under RELATIVE_ROOT, as if found under `path`."""
        self.errors += relocate(found[0], path)
        self.inert += relocate(found[1], path)


def _relative_findings(
    check: Callable[[_Findings], None],
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    relative = _Findings()
    check(relative)
    return tuple(relative.errors), tuple(relative.inert)


def _check(
    message: Message, path: str, findings: _Findings, table: Mapping[str, Rule] | None = None
) -> None:
    name = message.DESCRIPTOR.full_name
    if name in LEAF_TYPES:
        return
    if table is None:
        if path and name in CACHED_SUBTREES:
            _check_cached(message, name, path, findings)
            return
        table = TABLE.get(name, {})
    _check_fields(message, path, findings, table)


def _check_cached(message: Message, name: str, path: str, findings: _Findings) -> None:
    """A message that repeats byte for byte (a filter chain): checked once per content."""
    packed = message.SerializeToString()
    table = TABLE.get(name, {})
    found = cached(
        _packed_findings,
        (name, packed),
        len(packed),
        lambda: _relative_findings(lambda f: _check_fields(message, RELATIVE_ROOT, f, table)),
    )
    findings.add_relocated(found, path)


def _check_fields(
    message: Message, path: str, findings: _Findings, table: Mapping[str, Rule]
) -> None:
    for descriptor, value in message.ListFields():
        field_path = join_path(path, descriptor.name)
        rule = table.get(descriptor.name)
        if rule is None:
            findings.errors.append(f"{field_path}: not supported")
        elif isinstance(rule, NotYet):
            findings.errors.append(f"{field_path}: {NOT_YET}")
        elif isinstance(rule, Inert):
            findings.inert.append(field_path)
        elif isinstance(rule, InertExcept):
            for position, item in enumerate(value):
                item_path = f"{field_path}[{position}]"
                if rule.active(item):
                    _check(item, item_path, findings)
                else:
                    findings.inert.append(item_path)
        elif isinstance(rule, Values):
            _check_value(descriptor, value, rule, field_path, findings)
        elif isinstance(rule, Extension):
            _check_extension(descriptor, value, rule, field_path, findings, message)
        elif isinstance(rule, Supported):
            _descend(descriptor, value, field_path, findings, rule.fields)
    for field_name, rule in table.items():
        if isinstance(rule, Extension) and rule.required:
            descriptor = message.DESCRIPTOR.fields_by_name[field_name]
            if not descriptor.is_repeated and not message.HasField(field_name):
                findings.errors.append(f"{join_path(path, field_name)}: is required")


def _descend(
    descriptor: FieldDescriptor,
    value: object,
    path: str,
    findings: _Findings,
    table: Mapping[str, Rule] | None = None,
) -> None:
    if descriptor.type != FieldDescriptor.TYPE_MESSAGE:
        return
    if descriptor.message_type.GetOptions().map_entry:
        value_field = descriptor.message_type.fields_by_name["value"]
        if value_field.type == FieldDescriptor.TYPE_MESSAGE:
            for key in sorted(value):
                _check(value[key], map_key_path(path, key), findings, table)
    elif descriptor.is_repeated:
        for position, item in enumerate(value):
            _check(item, f"{path}[{position}]", findings, table)
    else:
        _check(value, path, findings, table)


def _check_value(
    descriptor: FieldDescriptor, value: object, rule: Values, path: str, findings: _Findings
) -> None:
    shown = value
    if descriptor.type == FieldDescriptor.TYPE_ENUM:
        enum_value = descriptor.enum_type.values_by_number.get(value)
        shown = enum_value.name if enum_value is not None else value
    allowed = rule.allowed.get(shown)
    if allowed is None:
        findings.errors.append(f"{path}: {shown} not supported")
    elif isinstance(allowed, NotYet):
        findings.errors.append(f"{path}: {shown} {NOT_YET}")


def _check_extension(
    descriptor: FieldDescriptor,
    value: object,
    rule: Extension,
    path: str,
    findings: _Findings,
    parent: Message,
) -> None:
    if descriptor.message_type.GetOptions().map_entry:
        for key in sorted(value):
            _check_any(value[key], rule, map_key_path(path, key), findings, optional=False)
        return
    optional = bool(getattr(parent, "is_optional", False))
    _check_any(value, rule, path, findings, optional=optional)


def _check_any(
    any_msg: any_pb2.Any, rule: Extension, path: str, findings: _Findings, optional: bool
) -> None:
    type_url = any_msg.type_url
    if not type_url:
        findings.errors.append(f"{path}: @type is required")
        return
    name = extensions.type_name(type_url)
    category = extensions.CATEGORIES[rule.category]
    if name not in category:
        if optional:
            return  # an optional HTTP filter we do not know is skipped, as Envoy does
        findings.errors.append(f"{path}: @type '{type_url}' not supported")
        return
    if name in extensions.NOT_YET:
        findings.errors.append(f"{path}: @type '{type_url}' {NOT_YET}")
        return
    if not path:
        _check_packed(any_msg, path, findings)
        return
    # What is inside depends on the bytes only: checked once per distinct content.
    packed = any_msg.value
    found = cached(
        _packed_findings,
        (type_url, packed),
        len(packed),
        lambda: _relative_findings(lambda f: _check_packed(any_msg, RELATIVE_ROOT, f)),
    )
    findings.add_relocated(found, path)


def _check_packed(any_msg: any_pb2.Any, path: str, findings: _Findings) -> None:
    try:
        inner = extensions.unpack(any_msg, path)
    except ConfigError as error:
        findings.errors.append(str(error))
        return
    _check(inner, path, findings)


# (type URL or type name, bytes) -> (errors, inert paths), under RELATIVE_ROOT: an Any's
# content, or a message of CACHED_SUBTREES.
_packed_findings: BoundedCache[tuple[str, bytes], tuple[tuple[str, ...], ...]] = (
    BoundedCache.for_config_bytes()
)


def unsupported(message: Message, path: str) -> list[str]:
    """The fields of `message` (at `path`) that the table does not accept, one line each."""
    findings = _Findings()
    _check(message, path, findings)
    return findings.errors


def require_supported(message: Message, path: str) -> None:
    """The gate of a message that arrives on its own (a CDS cluster): raises
    `ConfigError("PATH.FIELD: not supported[ yet]")` for the first field the table refuses."""
    errors = unsupported(message, path)
    if errors:
        raise ConfigError(errors[0])


def require_valid(message: Message, path: str) -> None:
    """The PGV rules, then the table: raises `ConfigError` with the first violation."""
    errors = validate_message(message, path) or unsupported(message, path)
    if errors:
        raise ConfigError(errors[0])


def listener_errors(listener: listener_pb2.Listener) -> list[str]:
    """Proto constraint violations, else what we do not support: the LDS path's check.

    The listeners of a fleet differ in name and address only, so everything else is checked
    once per content: keyed by the listener's bytes without those two fields. A listener the
    compiled fast path passes (clean.py: no violation, nothing refused) skips both walks."""
    if is_clean(listener):
        return _listener_semantics(listener, "")
    if not listener.HasField("address"):
        return validate_message(listener) or check_listener(listener)
    shape = listener_pb2.Listener()
    shape.CopyFrom(listener)
    shape.ClearField("name")
    shape.ClearField("address")
    key = shape.SerializeToString()
    violations, unsupported = cached(_listener_shapes, key, len(key), lambda: _shape_errors(shape))
    address_violations = validate_message(listener.address, "address")
    if address_violations or violations:
        return address_violations + list(violations)
    findings = _Findings()
    _check(listener.address, "address", findings, _LISTENER_ADDRESS.fields)
    return _listener_semantics(listener, "") + findings.errors + list(unsupported)


# What a listener's own address may be (the table's rule for Listener.address).
_LISTENER_ADDRESS = TABLE["envoy.config.listener.v3.Listener"]["address"]
assert isinstance(_LISTENER_ADDRESS, Supported)


def _shape_errors(shape: listener_pb2.Listener) -> tuple[tuple[str, ...], tuple[str, ...]]:
    findings = _Findings()
    _check(shape, "", findings)
    return tuple(validate_message(shape)), tuple(findings.errors)


# A listener's bytes without name and address -> (violations, unsupported fields).
_listener_shapes: BoundedCache[bytes, tuple[tuple[str, ...], tuple[str, ...]]] = (
    BoundedCache.for_config_bytes()
)


def check_listener(listener: listener_pb2.Listener, path: str = "") -> list[str]:
    """Errors for fields of a listener that we do not support (LDS NACKs with these lines)."""
    findings = _Findings()
    _check(listener, path, findings)
    return _listener_semantics(listener, path) + findings.errors


def _listener_semantics(listener: listener_pb2.Listener, path: str) -> list[str]:
    """What Envoy refuses when it adds a listener, beyond the PGV rules."""
    errors = []
    if not listener.HasField("address"):
        errors.append(f"{join_path(path, 'address')}: is required")
    addresses = [(join_path(path, "address"), listener.address)] + [
        (join_path(path, f"additional_addresses[{i}].address"), extra.address)
        for i, extra in enumerate(listener.additional_addresses)
    ]
    for address_path, address in addresses:
        if address.HasField("socket_address"):
            errors += _ip_literal(address.socket_address, f"{address_path}.socket_address")
    if not listener.filter_chains and not listener.HasField("default_filter_chain"):
        errors.append(f"{join_path(path, 'filter_chains')}: must have at least 1 item, got 0")
    return errors


def _ip_literal(socket_address: address_pb2.SocketAddress, path: str) -> list[str]:
    if canonical_ip(socket_address.address) is None:
        return [f"{path}.address: must be an IP address, got {socket_address.address!r}"]
    return []


def address_key(socket_address: address_pb2.SocketAddress) -> str:
    """`ip:port` as Envoy prints it (`[::1]:80` for IPv6)."""
    host = socket_address.address
    if ":" in host:
        host = f"[{host}]"
    return f"{host}:{socket_address.port_value}"


def bootstrap_findings(b: bootstrap_pb2.Bootstrap) -> tuple[list[str], list[str]]:
    """(errors, warnings) for a bootstrap that already passed the PGV rules."""
    findings = _Findings()
    _check(b, "", findings)
    errors: list[str] = []
    for position, listener in enumerate(b.static_resources.listeners):
        errors += _listener_semantics(listener, f"static_resources.listeners[{position}]")
    errors += findings.errors + _cross_references(b)
    warnings = []
    if findings.inert:
        warnings.append(
            f"{', '.join(findings.inert)}: accepted and ignored (no effect in xds-proxy)"
        )
    return errors, warnings


def _cross_references(b: bootstrap_pb2.Bootstrap) -> list[str]:
    """What Envoy checks when it starts: unique names, xDS clusters that exist, ADS configured."""
    errors: list[str] = []
    errors += _duplicates([lst.name for lst in b.static_resources.listeners], "listeners")
    errors += _duplicate_addresses(b.static_resources.listeners)
    cluster_names = [cluster.name for cluster in b.static_resources.clusters]
    errors += _duplicates(cluster_names, "clusters")
    errors += _static_cluster_ips(b.static_resources.clusters)
    errors += _eds_sources(b)
    errors += global_limit_errors(b)
    dynamic = b.dynamic_resources
    sources: list[tuple[str, object]] = []
    if dynamic.HasField("lds_config"):
        if dynamic.lds_config.HasField("api_config_source"):
            sources.append(
                (
                    "dynamic_resources.lds_config.api_config_source",
                    dynamic.lds_config.api_config_source,
                )
            )
        if dynamic.lds_config.HasField("ads") and not dynamic.HasField("ads_config"):
            errors.append("dynamic_resources.lds_config.ads: needs dynamic_resources.ads_config")
    if dynamic.HasField("ads_config"):
        sources.append(("dynamic_resources.ads_config", dynamic.ads_config))
    for path, source in sources:
        if source.api_type == source.REST:  # one static cluster by name (xds/source.py)
            errors += [
                f"{path}.cluster_names: unknown cluster '{name}' (not in static_resources.clusters)"
                for name in source.cluster_names
                if name not in cluster_names
            ]
            continue
        if len(source.grpc_services) != 1:
            errors.append(
                f"{path}.grpc_services: must have exactly 1 item, got {len(source.grpc_services)}"
            )
            continue
        grpc = source.grpc_services[0]
        if grpc.HasField("envoy_grpc") and grpc.envoy_grpc.cluster_name not in cluster_names:
            errors.append(
                f"{path}.grpc_services[0].envoy_grpc.cluster_name: unknown cluster"
                f" '{grpc.envoy_grpc.cluster_name}' (not in static_resources.clusters)"
            )
    return errors


def _duplicate_addresses(listeners) -> list[str]:
    owners: dict[str, str] = {}
    errors = []
    for position, listener in enumerate(listeners):
        socket_address = listener.address.socket_address
        if not listener.address.HasField("socket_address") or socket_address.port_value == 0:
            continue
        key = address_key(socket_address)
        if key in owners:
            errors.append(
                f"static_resources.listeners[{position}].address: duplicate address '{key}'"
                f" (listener '{owners[key]}')"
            )
        else:
            owners[key] = listener.name
    return errors


def _static_cluster_ips(clusters) -> list[str]:
    """A STATIC cluster's endpoints are IP literals (Envoy: malformed IP address)."""
    errors = []
    for c_index, cluster in enumerate(clusters):
        custom_type = cluster.WhichOneof("cluster_discovery_type") == "cluster_type"
        if custom_type or cluster.type != cluster_pb2.Cluster.STATIC:
            continue
        for e_index, locality in enumerate(cluster.load_assignment.endpoints):
            for l_index, lb_endpoint in enumerate(locality.lb_endpoints):
                address = lb_endpoint.endpoint.address
                if address.HasField("socket_address"):
                    errors += _ip_literal(
                        address.socket_address,
                        f"static_resources.clusters[{c_index}].load_assignment.endpoints"
                        f"[{e_index}].lb_endpoints[{l_index}].endpoint.address.socket_address",
                    )
    return errors


def _eds_sources(b: bootstrap_pb2.Bootstrap) -> list[str]:
    """A bootstrap EDS cluster needs an `eds_cluster_config` whose source can be subscribed."""
    errors = []
    for index, cluster in enumerate(b.static_resources.clusters):
        custom_type = cluster.WhichOneof("cluster_discovery_type") == "cluster_type"
        if custom_type or cluster.type != cluster_pb2.Cluster.EDS:
            continue
        path = f"static_resources.clusters[{index}].eds_cluster_config"
        if not cluster.HasField("eds_cluster_config"):
            errors.append(f"{path}: cannot create an EDS cluster without an EDS config")
            continue
        kind = cluster.eds_cluster_config.eds_config.WhichOneof("config_source_specifier")
        if kind not in ("ads", "api_config_source"):
            errors.append(f"{path}.eds_config: one of ads or api_config_source is required")
        elif kind == "ads" and not b.dynamic_resources.HasField("ads_config"):
            errors.append(f"{path}.eds_config.ads: needs dynamic_resources.ads_config")
    return errors


def _duplicates(names: list[str], section: str) -> list[str]:
    seen: set[str] = set()
    errors = []
    for position, name in enumerate(names):
        if name in seen:
            errors.append(f"static_resources.{section}[{position}].name: duplicate name '{name}'")
        seen.add(name)
    return errors
