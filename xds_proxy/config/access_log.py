"""Access logs, translated once from checked `AccessLog` messages (an HCM's, a tcp_proxy's or a
listener's `access_log`): where lines go (a file, stdout, stderr), their format (parsed into
literal pieces and command operators) and the filter deciding which requests are logged.

Only the command operators in `OPERATORS` are built; any other one is refused with an error
that names it (never a line with a silently wrong field). The compiled getters are
xds_proxy/access_log/format.py's; docs/access-logs.md lists both.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from envoy.config.accesslog.v3 import accesslog_pb2
from envoy.config.core.v3 import substitution_format_string_pb2 as format_pb2
from envoy.extensions.access_loggers.file.v3 import file_pb2
from envoy.extensions.access_loggers.stream.v3 import stream_pb2
from google.protobuf import json_format, struct_pb2

from xds_proxy.config.values import read_data_source
from xds_proxy.errors import ConfigError

# Envoy's format when a logger has none (source/common/formatter/substitution_format_string.h).
DEFAULT_FORMAT = (
    '[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" '
    "%RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% "
    '%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%" '
    '"%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%"\n'
)

# The operators that take a header name (`REQ(X?Y):Z`), the one with a time format, and those
# without an argument. Each has a getter in xds_proxy/access_log/format.py.
HEADER_OPERATORS = frozenset({"REQ", "RESP", "TRAILER"})
TIME_OPERATORS = frozenset({"START_TIME"})
PLAIN_OPERATORS = frozenset(
    {
        "PROTOCOL",
        "RESPONSE_CODE",
        "RESPONSE_FLAGS",
        "RESPONSE_CODE_DETAILS",
        "BYTES_RECEIVED",
        "BYTES_SENT",
        "DURATION",
        "REQUEST_DURATION",
        "RESPONSE_DURATION",
        "RESPONSE_TX_DURATION",
        "UPSTREAM_HOST",
        "UPSTREAM_CLUSTER",
        "UPSTREAM_LOCAL_ADDRESS",
        "UPSTREAM_REMOTE_ADDRESS",
        "UPSTREAM_TRANSPORT_FAILURE_REASON",
        "DOWNSTREAM_REMOTE_ADDRESS",
        "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT",
        "DOWNSTREAM_REMOTE_PORT",
        "DOWNSTREAM_DIRECT_REMOTE_ADDRESS",
        "DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT",
        "DOWNSTREAM_LOCAL_ADDRESS",
        "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT",
        "DOWNSTREAM_LOCAL_PORT",
        "CONNECTION_TERMINATION_DETAILS",
        "ROUTE_NAME",
        "UPSTREAM_REQUEST_ATTEMPT_COUNT",
        "HOSTNAME",
    }
)
OPERATORS = HEADER_OPERATORS | TIME_OPERATORS | PLAIN_OPERATORS

# Envoy's command syntax: %NAME%, %NAME(ARG)%, %NAME(ARG):MAX_LENGTH%.
_COMMAND = re.compile(r"%([A-Z]|[A-Z][A-Z0-9_]*[A-Z0-9])(?:\(([^)]*)\))?(?::([0-9]+))?%")


@dataclass(frozen=True, slots=True)
class Command:
    """One command operator. For REQ/RESP/TRAILER `main` and `alternative` are lowercase header
    names (`REQ(X?Y)`); for START_TIME `main` is the time format ("" for Envoy's default)."""

    name: str
    main: str = ""
    alternative: str = ""
    max_length: int | None = None


Piece = str | Command
Template = tuple[Piece, ...]


@dataclass(frozen=True, slots=True)
class TextFormat:
    template: Template


@dataclass(frozen=True, slots=True)
class JsonObject:
    """A JSON format's object. A value is a nested JsonObject, a Template (typed as Envoy
    types it: a lone numeric operator gives a number), or a constant (number, bool, null)."""

    fields: tuple[tuple[str, object], ...]  # in the configured order


@dataclass(frozen=True, slots=True)
class JsonFormat:
    root: JsonObject


# -- filters ------------------------------------------------------------------------------------

# ComparisonFilter.Op
EQ, GE, LE, NE = 0, 1, 2, 3


@dataclass(frozen=True, slots=True)
class StatusCodeFilter:
    op: int
    value: int  # the default value (no runtime layer: the key never overrides it)


@dataclass(frozen=True, slots=True)
class DurationFilter:
    op: int
    value_ms: int


@dataclass(frozen=True, slots=True)
class NotHealthCheckFilter:
    pass


@dataclass(frozen=True, slots=True)
class RuntimeFilter:
    """Samples `numerator / denominator` of the requests (the runtime key is absent here, so
    `percent_sampled` decides, as Envoy with no runtime value)."""

    numerator: int
    denominator: int


@dataclass(frozen=True, slots=True)
class ResponseFlagFilter:
    flags: frozenset[str]  # empty: any flag


@dataclass(frozen=True, slots=True)
class AndFilter:
    filters: tuple[object, ...]


@dataclass(frozen=True, slots=True)
class OrFilter:
    filters: tuple[object, ...]


Filter = (
    StatusCodeFilter
    | DurationFilter
    | NotHealthCheckFilter
    | RuntimeFilter
    | ResponseFlagFilter
    | AndFilter
    | OrFilter
)

# Envoy's short response flags (StreamInfo::ResponseFlagUtils), all accepted by the filter.
RESPONSE_FLAGS = frozenset(
    {
        "LH",
        "UH",
        "UT",
        "LR",
        "UR",
        "UF",
        "UC",
        "UO",
        "NR",
        "DI",
        "FI",
        "RL",
        "UAEX",
        "RLSE",
        "DC",
        "URX",
        "SI",
        "IH",
        "DPE",
        "UMSDR",
        "RFCF",
        "NFCF",
        "DT",
        "UPE",
        "NC",
        "OM",
        "DF",
        "DO",
        "DR",
    }
)


# -- the loggers --------------------------------------------------------------------------------

FILE_TYPE = file_pb2.FileAccessLog.DESCRIPTOR.full_name
STDOUT_TYPE = stream_pb2.StdoutAccessLog.DESCRIPTOR.full_name
STDERR_TYPE = stream_pb2.StderrAccessLog.DESCRIPTOR.full_name
STDOUT_PATH = "/dev/stdout"
STDERR_PATH = "/dev/stderr"


@dataclass(frozen=True, slots=True)
class AccessLogSpec:
    path: str  # a file, or STDOUT_PATH / STDERR_PATH
    format: TextFormat | JsonFormat
    omit_empty_values: bool
    filter: Filter | None


def build_access_logs(
    logs: list[accesslog_pb2.AccessLog] | tuple, path: str
) -> tuple[AccessLogSpec, ...]:
    """Translate a repeated `access_log` field that passed the PGV rules and the table."""
    return tuple(build_access_log(log, f"{path}[{index}]") for index, log in enumerate(logs))


def build_access_log(log: accesslog_pb2.AccessLog, path: str) -> AccessLogSpec:
    config_path = f"{path}.typed_config"
    type_name = log.typed_config.type_url.rsplit("/", 1)[-1]
    log_filter = build_filter(log.filter, f"{path}.filter") if log.HasField("filter") else None
    if type_name == FILE_TYPE:
        file_log = file_pb2.FileAccessLog()
        log.typed_config.Unpack(file_log)
        if file_log.HasField("log_format"):
            text, omit = _substitution_format(file_log.log_format, f"{config_path}.log_format")
        elif file_log.format:
            text, omit = TextFormat(parse_format(file_log.format, f"{config_path}.format")), False
        elif file_log.HasField("json_format"):
            text = JsonFormat(_json_object(file_log.json_format, f"{config_path}.json_format"))
            omit = False
        else:
            text, omit = TextFormat(parse_format(DEFAULT_FORMAT, config_path)), False
        return AccessLogSpec(file_log.path, text, omit, log_filter)
    stream_log = (
        stream_pb2.StdoutAccessLog() if type_name == STDOUT_TYPE else stream_pb2.StderrAccessLog()
    )
    log.typed_config.Unpack(stream_log)
    if stream_log.HasField("log_format"):
        text, omit = _substitution_format(stream_log.log_format, f"{config_path}.log_format")
    else:
        text, omit = TextFormat(parse_format(DEFAULT_FORMAT, config_path)), False
    target = STDOUT_PATH if type_name == STDOUT_TYPE else STDERR_PATH
    return AccessLogSpec(target, text, omit, log_filter)


def _substitution_format(
    message: format_pb2.SubstitutionFormatString, path: str
) -> tuple[TextFormat | JsonFormat, bool]:
    omit = message.omit_empty_values
    kind = message.WhichOneof("format")
    if kind == "json_format":
        return JsonFormat(_json_object(message.json_format, f"{path}.json_format")), omit
    if kind == "text_format_source":
        source_path = f"{path}.text_format_source"
        text = read_data_source(message.text_format_source, source_path).decode()
        return TextFormat(parse_format(text, source_path)), omit
    return TextFormat(parse_format(DEFAULT_FORMAT, path)), omit


def _json_object(struct: struct_pb2.Struct, path: str) -> JsonObject:
    document = json_format.MessageToDict(struct)
    return _json_value(document, path)  # type: ignore[return-value]


def _json_value(value: object, path: str) -> object:
    if isinstance(value, dict):
        return JsonObject(
            tuple((key, _json_value(item, f"{path}.{key}")) for key, item in value.items())
        )
    if isinstance(value, str):
        return parse_format(value, path)
    if isinstance(value, list):
        raise ConfigError(f"{path}: a list in json_format is not supported")
    return value  # number, bool, None


def parse_format(text: str, path: str) -> Template:
    """Split a format string into literal pieces and commands; an unknown or malformed
    operator is an error naming it."""
    pieces: list[Piece] = []
    literal: list[str] = []
    position = 0
    size = len(text)
    while position < size:
        mark = text.find("%", position)
        if mark == -1:
            literal.append(text[position:])
            break
        literal.append(text[position:mark])
        if text.startswith("%%", mark):
            literal.append("%")
            position = mark + 2
            continue
        found = _COMMAND.match(text, mark)
        if found is None:
            raise ConfigError(
                f"{path}: Incorrect configuration: {json.dumps(text)[1:-1]}. Couldn't find "
                f"valid command at position {mark}"
            )
        if literal:
            joined = "".join(literal)
            if joined:
                pieces.append(joined)
            literal = []
        pieces.append(_command(found.group(1), found.group(2), found.group(3), path))
        position = found.end()
    joined = "".join(literal)
    if joined:
        pieces.append(joined)
    return tuple(pieces)


def _command(name: str, argument: str | None, length: str | None, path: str) -> Command:
    if name not in OPERATORS:
        raise ConfigError(f"{path}: command operator %{name}% is not supported")
    max_length = int(length) if length is not None else None
    if name in HEADER_OPERATORS:
        if not argument:
            raise ConfigError(f"{path}: %{name}% needs a header name: %{name}(X)%")
        main, _, alternative = argument.partition("?")
        return Command(name, main.lower(), alternative.lower(), max_length)
    if name in TIME_OPERATORS:
        return Command(name, argument or "", "", max_length)
    if argument:
        raise ConfigError(f"{path}: %{name}% takes no argument: not supported")
    return Command(name, "", "", max_length)


# -- filters --------------------------------------------------------------------------------------


def build_filter(message: accesslog_pb2.AccessLogFilter, path: str) -> Filter:
    kind = message.WhichOneof("filter_specifier")
    here = f"{path}.{kind}"
    if kind == "status_code_filter":
        comparison = message.status_code_filter.comparison
        return StatusCodeFilter(comparison.op, comparison.value.default_value)
    if kind == "duration_filter":
        comparison = message.duration_filter.comparison
        return DurationFilter(comparison.op, comparison.value.default_value)
    if kind == "not_health_check_filter":
        return NotHealthCheckFilter()
    if kind == "runtime_filter":
        runtime = message.runtime_filter
        numerator, denominator = 0, 100
        if runtime.HasField("percent_sampled"):
            sampled = runtime.percent_sampled
            numerator = sampled.numerator
            denominator = (100, 10_000, 1_000_000)[sampled.denominator]
        return RuntimeFilter(numerator, denominator)
    if kind == "response_flag_filter":
        flags = message.response_flag_filter.flags
        for index, flag in enumerate(flags):
            if flag not in RESPONSE_FLAGS:
                raise ConfigError(f"{here}.flags[{index}]: unknown response flag '{flag}'")
        return ResponseFlagFilter(frozenset(flags))
    if kind in ("and_filter", "or_filter"):
        inner = getattr(message, kind).filters
        built = tuple(
            build_filter(item, f"{here}.filters[{index}]") for index, item in enumerate(inner)
        )
        return AndFilter(built) if kind == "and_filter" else OrFilter(built)
    raise ConfigError(f"{here}: not supported")
