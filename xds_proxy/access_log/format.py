"""Access-log formats compiled once per config, so that a request pays only for the fields
its format names. A text format becomes one generated function whose body is a single
`%`-format of a bytes template (the literal pieces): plain record fields inline
(`r.status`), the request headers it names found in one pass, and small getter functions for
the rest (times, addresses). JSON formats keep Envoy's typing: a value that is
one numeric operator is a number, `-` (no value) is null.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable

from xds_proxy.access_log.record import (
    ID_SHAPE,
    LOCAL_REPLY_HEADERS,
    PIPE_PORT,
    LogRecord,
    request_id,
    request_ids,
)
from xds_proxy.codec.forwarded_for import last_xff_address
from xds_proxy.config.access_log import (
    Command,
    JsonFormat,
    JsonObject,
    Template,
    TextFormat,
)

Getter = Callable[[LogRecord], "str | int | None"]
Render = Callable[[LogRecord], str]
Line = Callable[[LogRecord], bytes]

NUMERIC = frozenset(
    {
        "RESPONSE_CODE",
        "BYTES_RECEIVED",
        "BYTES_SENT",
        "DURATION",
        "REQUEST_DURATION",
        "RESPONSE_DURATION",
        "RESPONSE_TX_DURATION",
        "DOWNSTREAM_REMOTE_PORT",
        "DOWNSTREAM_LOCAL_PORT",
    }
)


# -- request and response headers ------------------------------------------------------------


def _request_header(record: LogRecord, name: bytes) -> bytes | None:
    if name[:1] == b":":
        if name == b":method":
            return record.method
        if name == b":path":
            return record.path
        if name == b":authority":
            return record.authority
        if name == b":scheme":
            return record.scheme
        return None
    if name == b"host":
        return record.authority
    for header, value in record.request_headers:
        if header == name:
            return value
    if name == b"x-request-id":
        if record.request_id is None and record.generate_id:
            record.request_id = request_id()
        return record.request_id
    if name == b"x-forwarded-proto":
        return record.scheme
    return None


def _request_getter(command: Command) -> Getter:
    main = command.main.encode("latin-1")
    alternative = command.alternative.encode("latin-1") if command.alternative else None

    def get(record: LogRecord) -> str | None:
        value = _request_header(record, main)
        if value is None and alternative is not None:
            value = _request_header(record, alternative)
        return None if value is None else value.decode("latin-1")

    return get


def _header_in(headers: list[tuple[bytes, bytes]] | None, name: bytes) -> bytes | None:
    if headers:
        for header, value in headers:
            if header == name:
                return value
    return None


def _response_getter(command: Command, trailers: bool) -> Getter:
    main = command.main.encode("latin-1")
    alternative = command.alternative.encode("latin-1") if command.alternative else None

    if trailers:

        def trailer(record: LogRecord) -> str | None:
            value = _header_in(record.trailers, main)
            if value is None and alternative is not None:
                value = _header_in(record.trailers, alternative)
            return None if value is None else value.decode("latin-1")

        return trailer

    def get(record: LogRecord) -> str | None:
        value = record.response_header(main)
        if value is None and alternative is not None:
            value = record.response_header(alternative)
        return None if value is None else value.decode("latin-1")

    return get


def _response_bytes(command: Command, trailers: bool) -> Callable[[LogRecord], bytes | None]:
    """RESP(X?Y) / TRAILER(X?Y) as the bytes the response had, or None."""
    main = command.main.encode("latin-1")
    alternative = command.alternative.encode("latin-1") if command.alternative else None
    if trailers:

        def trailer(record: LogRecord) -> bytes | None:
            value = _header_in(record.trailers, main)
            if value is None and alternative is not None:
                value = _header_in(record.trailers, alternative)
            return value

        return trailer

    def get(record: LogRecord) -> bytes | None:
        value = record.response_header(main)
        if value is None and alternative is not None:
            value = record.response_header(alternative)
        return value

    return get


# -- times -------------------------------------------------------------------------------------


def _time_parts(pattern: str) -> list[str | int]:
    """A START_TIME pattern as strftime texts and, between them, N (N fraction digits) or -1
    (epoch seconds)."""
    if not pattern:
        pattern = "%Y-%m-%dT%H:%M:%E3SZ"
    parts: list[str | int] = []  # strftime text, or N: N fraction digits, or -1: epoch
    text: list[str] = []
    index = 0
    while index < len(pattern):
        char = pattern[index]
        rest = pattern[index + 1 : index + 4]
        if char != "%":
            text.append(char)
            index += 1
            continue
        if rest[:1] == "%":
            text.append("%%")
            index += 2
        elif rest[:1] == "s" or rest[:2] == "Es":
            parts.extend(("".join(text), -1))
            text = []
            index += 2 if rest[:1] == "s" else 3
        elif rest[:1] == "f":
            parts.extend(("".join(text), 9))
            text = []
            index += 2
        elif rest[:1].isdigit() and rest[1:2] == "f" and rest[:1] != "0":
            parts.extend(("".join(text), int(rest[0])))
            text = []
            index += 3
        elif rest[:1] == "E" and rest[1:2].isdigit() and rest[2:3] == "S":
            text.append("%S.")
            parts.extend(("".join(text), int(rest[1])))
            text = []
            index += 4
        else:
            text.append(pattern[index : index + 2])
            index += 2
    parts.append("".join(text))
    return parts


def _time_getter(pattern: str) -> Getter:
    """START_TIME: Envoy's default `%Y-%m-%dT%H:%M:%E3SZ` (UTC), or a strftime pattern with
    Envoy's additions: `%s` (epoch seconds), `%f` (nanoseconds), `%1f`..`%9f`, `%E1S`..`%E9S`
    (seconds with that many decimals)."""
    parts = _time_parts(pattern)
    cache: list = [None, ()]  # second -> rendered strftime parts
    if len(parts) == 3 and type(parts[1]) is int and parts[1] > 0:
        return _one_fraction_getter(parts[0], parts[1], parts[2])  # type: ignore[arg-type]

    def get(record: LogRecord) -> str:
        wall = record.start_wall
        second = int(wall)
        if cache[0] != second:
            utc = time.gmtime(second)
            cache[0] = second
            cache[1] = tuple(
                time.strftime(part, utc) if type(part) is str else part for part in parts
            )
        out = []
        for part in cache[1]:
            if type(part) is str:
                out.append(part)
            elif part == -1:
                out.append(str(second))
            else:
                micros = min(round((wall - second) * 1_000_000), 999_999)
                out.append(f"{micros * 1000:09d}"[:part])
        return "".join(out)

    return get


def _one_fraction_getter(before: str, digits: int, after: str) -> Getter:
    """The common shape (Envoy's default among them): text, N fraction digits, text; the text
    is rendered once per second."""
    scale = 10**digits
    shape = f"%s%0{digits}d%s"
    cached_second = cached_tick = -1
    head = tail = text = ""

    def get(record: LogRecord) -> str:
        nonlocal cached_second, cached_tick, head, tail, text
        wall = record.start_wall
        tick = int(wall * scale)  # the same text for every request in one tick (1 ms)
        if tick == cached_tick:
            return text
        second = int(wall)
        if second != cached_second:
            utc = time.gmtime(second)
            cached_second, head, tail = (
                second,
                time.strftime(before, utc),
                time.strftime(after, utc),
            )
        cached_tick = tick
        micros = min(round((wall - second) * 1_000_000), 999_999)  # the clock's precision
        fraction = micros * scale // 1_000_000
        text = shape % (head, fraction, tail)
        return text

    return get


def _time_bytes(pattern: str) -> Callable[[float], bytes]:
    """START_TIME as bytes, from the request's wall time: the common shape (text, N
    fraction digits, text) kept per tick; any other pattern through `_time_getter`."""
    parts = _time_parts(pattern)
    if not (len(parts) == 3 and type(parts[1]) is int and parts[1] > 0):
        text_of = _time_getter(pattern)
        probe = LogRecord.__new__(LogRecord)

        def render(wall: float) -> bytes:
            probe.start_wall = wall
            return text_of(probe).encode()  # type: ignore[union-attr]

        return render
    text_of = _one_fraction_getter(parts[0], parts[1], parts[2])  # type: ignore[arg-type]
    scale = 10 ** parts[1]  # type: ignore[operator]
    probe = LogRecord.__new__(LogRecord)
    cached_tick = -1
    cached = b""

    def render_tick(wall: float) -> bytes:
        nonlocal cached_tick, cached
        tick = int(wall * scale)
        if tick != cached_tick:
            probe.start_wall = wall
            cached_tick, cached = tick, text_of(probe).encode()  # type: ignore[union-attr]
        return cached

    return render_tick


def _ms(start: float | None, end: float | None) -> int | None:
    if start is None or end is None:
        return None
    return int((end - start) * 1000)


# -- addresses ---------------------------------------------------------------------------------


def _remote(record: LogRecord) -> tuple[str | None, int | None]:
    """The downstream remote address: with use_remote_address off, Envoy takes the last
    `x-forwarded-for` entry (port 0) when there is one, `xff_num_trusted_hops` entries back;
    with it on and trusted hops, the entry that many hops back."""
    if record.remote_from_xff:
        # Envoy's header map joins repeated x-forwarded-for headers.
        forwarded = b",".join(
            value for name, value in record.request_headers if name == b"x-forwarded-for"
        )
        if forwarded:
            found = last_xff_address(forwarded, record.xff_skip)
            if found is not None:
                return found, 0
    downstream = record.downstream
    return downstream.remote_ip, downstream.remote_port


def _with_port(ip: str | None, port: int | str | None) -> str | None:
    if ip is None:
        return None
    if port == PIPE_PORT:
        return ip  # a pipe's path
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def _plain_getter(name: str) -> Getter:
    getters: dict[str, Getter] = {
        "PROTOCOL": lambda r: r.protocol,
        "RESPONSE_CODE": lambda r: r.status,
        "RESPONSE_FLAGS": lambda r: r.flags or "-",  # never empty, even in JSON (as Envoy)
        "RESPONSE_CODE_DETAILS": lambda r: r.details,
        "BYTES_RECEIVED": lambda r: r.bytes_received,
        "BYTES_SENT": lambda r: r.bytes_sent,
        "DURATION": lambda r: _ms(r.start, r.end),
        "REQUEST_DURATION": lambda r: _ms(r.start, r.request_end),
        "RESPONSE_DURATION": lambda r: _ms(r.start, r.first_upstream_rx),
        "RESPONSE_TX_DURATION": lambda r: _ms(r.first_upstream_rx, r.end),
        "UPSTREAM_HOST": lambda r: r.upstream_host,
        "UPSTREAM_REMOTE_ADDRESS": lambda r: r.upstream_remote,
        "UPSTREAM_CLUSTER": lambda r: r.upstream_cluster,
        "UPSTREAM_LOCAL_ADDRESS": lambda r: r.upstream_local,
        "UPSTREAM_TRANSPORT_FAILURE_REASON": lambda r: r.upstream_failure,
        "DOWNSTREAM_REMOTE_ADDRESS": lambda r: _with_port(*_remote(r)),
        "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT": lambda r: _remote(r)[0],
        "DOWNSTREAM_REMOTE_PORT": lambda r: _remote(r)[1],
        "DOWNSTREAM_DIRECT_REMOTE_ADDRESS": lambda r: r.downstream.remote,
        "DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT": lambda r: r.downstream.remote_ip,
        "DOWNSTREAM_LOCAL_ADDRESS": lambda r: r.downstream.local,
        "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT": lambda r: r.downstream.local_ip,
        "DOWNSTREAM_LOCAL_PORT": lambda r: r.downstream.local_port,
        "CONNECTION_TERMINATION_DETAILS": lambda r: r.termination,
        "ROUTE_NAME": lambda r: r.route_name or None,
        "UPSTREAM_REQUEST_ATTEMPT_COUNT": lambda r: r.attempt_count,
    }
    if name == "HOSTNAME":
        hostname = socket.gethostname()
        return lambda r: hostname
    return getters[name]


def getter(command: Command) -> Getter:
    name = command.name
    if name == "REQ":
        return _request_getter(command)
    if name in ("RESP", "TRAILER"):
        return _response_getter(command, name == "TRAILER")
    if name == "START_TIME":
        return _time_getter(command.main)
    return _plain_getter(name)


# -- text ----------------------------------------------------------------------------------------


def _text_piece(piece: str | Command, empty: str) -> Render:
    if isinstance(piece, str):
        return lambda record: piece
    get = getter(piece)
    limit = piece.max_length

    def render(record: LogRecord) -> str:
        value = get(record)
        if value is None:
            return empty
        text = value if type(value) is str else str(value)
        return text[:limit] if limit is not None else text

    return render


# Operators read straight from a record attribute, inline in the generated function: an int
# (always present) or an optional str (None or "" print the empty marker).
_INLINE_INTS = {
    "RESPONSE_CODE": "r.status",
    "BYTES_RECEIVED": "r.bytes_received",
    "BYTES_SENT": "r.bytes_sent",
    "UPSTREAM_REQUEST_ATTEMPT_COUNT": "r.attempt_count",
}
_INLINE_TEXTS = {
    "PROTOCOL": "r.protocol",
    "RESPONSE_FLAGS": "r.flags",  # "" prints `-` even with omit_empty_values (below)
    "RESPONSE_CODE_DETAILS": "r.details",
    "UPSTREAM_HOST": "r.upstream_host",
    "UPSTREAM_REMOTE_ADDRESS": "r.upstream_remote",
    "UPSTREAM_CLUSTER": "r.upstream_cluster",
    "UPSTREAM_LOCAL_ADDRESS": "r.upstream_local",
    "UPSTREAM_TRANSPORT_FAILURE_REASON": "r.upstream_failure",
    "CONNECTION_TERMINATION_DETAILS": "r.termination",
    "ROUTE_NAME": "r.route_name",
}
_INLINE_DURATIONS = {
    "DURATION": ("r.start", "r.end"),
    "REQUEST_DURATION": ("r.start", "r.request_end"),
    "RESPONSE_DURATION": ("r.start", "r.first_upstream_rx"),
    "RESPONSE_TX_DURATION": ("r.first_upstream_rx", "r.end"),
}


def _expression(piece: Command, index: int, namespace: dict[str, object], empty: str) -> str:
    """The bytes expression of one command (names it needs go into `namespace`)."""
    name = piece.name
    if piece.max_length is None:
        if name in _INLINE_INTS:
            return f"(b'%d' % {_INLINE_INTS[name]})"
        if name in _INLINE_TEXTS:
            field = _INLINE_TEXTS[name]
            marker = "_dash" if name == "RESPONSE_FLAGS" else "_empty"
            return f"({field}.encode() if {field} else {marker})"
        if name in _INLINE_DURATIONS:
            start, end = _INLINE_DURATIONS[name]
            return (
                f"(_empty if {start} is None or {end} is None "
                f"else b'%d' % int(({end} - {start}) * 1000))"
            )
        if name == "START_TIME":
            function = f"_t{index}"
            namespace[function] = _time_bytes(piece.main)
            return f"{function}(r.start_wall)"
        if name in ("RESP", "TRAILER"):
            function = f"_b{index}"
            namespace[function] = _response_bytes(piece, name == "TRAILER")
            call = f"(_x{index} if (_x{index} := {function}(r)) is not None else _empty)"
            names = {piece.main.encode("latin-1"), piece.alternative.encode("latin-1")} - {b""}
            if name == "RESP" and not names & LOCAL_REPLY_HEADERS:
                # Not a header of a local reply: no response headers, nothing to look for.
                return f"(_empty if r.response_headers is None else {call})"
            return call
    function = f"_g{index}"
    namespace[function] = _text_piece(piece, empty)
    return f"{function}(r).encode()"


_PSEUDO_EXPRESSIONS = {
    b":method": "r.method",
    b":path": "r.path",
    b":authority": "r.authority",
    b"host": "r.authority",
    b":scheme": "r.scheme",
}


class _HeaderScan:
    """The request headers a text format reads, found in one pass over the request's headers
    (each REQ operator then costs an expression, not a scan)."""

    def __init__(self) -> None:
        self.names: dict[bytes, str] = {}  # header name -> local variable
        self.request_id = ""  # the variable of x-request-id, if the format reads it

    def expression(self, name: bytes) -> str:
        """The expression of one REQ name's value (bytes or None)."""
        pseudo = _PSEUDO_EXPRESSIONS.get(name)
        if pseudo is not None:
            return pseudo
        if name[:1] == b":":
            return "None"
        variable = self.names.setdefault(name, f"_h{len(self.names)}")
        if name == b"x-request-id":
            self.request_id = variable  # completed after the scan (`source`)
            return variable
        if name == b"x-forwarded-proto":
            return f"({variable} if {variable} is not None else r.scheme)"
        return variable

    def source(self, namespace: dict[str, object]) -> str:
        if not self.names:
            return ""
        lines = [" = ".join([*self.names.values(), "None"])]
        lines.append("for _n, _v in reversed(r.request_headers):")  # the first one wins
        for index, (name, variable) in enumerate(self.names.items()):
            namespace[f"_k{index}"] = name
            keyword = "if" if index == 0 else "elif"
            lines.append(f"    {keyword} _n == _k{index}:")
            lines.append(f"        {variable} = _v")
        if self.request_id:
            # The request's own id, else the one made for it (once, when the HCM makes ids;
            # every operator and logger then prints the same).
            variable = self.request_id
            namespace["_id_shape"], namespace["_ids"] = ID_SHAPE, request_ids
            lines += [
                f"if {variable} is None:",
                f"    {variable} = r.request_id",
                f"    if {variable} is None and r.generate_id:",
                f"        {variable} = r.request_id = _id_shape % next(_ids)",
            ]
        return "".join(f"    {line}\n" for line in lines)


def _request_expression(piece: Command, scan: _HeaderScan, index: int) -> str:
    """REQ(X?Y):Z as a bytes expression: the header values are written as they came."""
    main = _once(scan.expression(piece.main.encode("latin-1")), f"_m{index}")
    value = f"({main[1]} if {main[0]} is not None else _empty)"
    if piece.alternative:
        alternative = _once(scan.expression(piece.alternative.encode("latin-1")), f"_a{index}")
        value = (
            f"({main[1]} if {main[0]} is not None "
            f"else {alternative[1]} if {alternative[0]} is not None else _empty)"
        )
    return f"{value}[:{piece.max_length}]" if piece.max_length is not None else value


def _once(expression: str, variable: str) -> tuple[str, str]:
    """(first use, later use) of an expression: a call is made once, through `variable`."""
    if "(" not in expression:
        return expression, expression
    return f"({variable} := {expression})", variable


def compile_template(template: Template, omit_empty: bool = False) -> Line:
    """A text template as one generated function returning the line as bytes: one `%`
    format of a bytes template (the literal pieces) with one expression per operator. A
    missing value prints `-`, or nothing with omit_empty_values."""
    empty = "" if omit_empty else "-"
    namespace: dict[str, object] = {
        "_empty": empty.encode(),
        "_dash": b"-",
    }
    scan = _HeaderScan()
    shape: list[bytes] = []
    values: list[str] = []
    for index, piece in enumerate(template):
        if isinstance(piece, str):
            shape.append(piece.encode().replace(b"%", b"%%"))
            continue
        shape.append(b"%s")
        if piece.name == "REQ":
            values.append(_request_expression(piece, scan, index))
        else:
            values.append(_expression(piece, index, namespace, empty))
    namespace["_shape"] = b"".join(shape)
    if values:
        body = f"    return _shape % ({', '.join(values)},)\n"
    else:
        body = "    return _shape.replace(b'%%', b'%')\n"
    source = f"def render(r):\n{scan.source(namespace)}{body}"
    exec(compile(source, "<access-log format>", "exec"), namespace)
    return namespace["render"]  # type: ignore[return-value]


# -- JSON ----------------------------------------------------------------------------------------

_ABSENT = object()


def _json_value(value: object, omit_empty: bool) -> Callable[[LogRecord], object]:
    if isinstance(value, JsonObject):
        return _json_object(value, omit_empty)
    if isinstance(value, tuple):  # a template
        if len(value) == 1 and isinstance(value[0], Command):
            command = value[0]
            get = getter(command)
            numeric = command.name in NUMERIC
            limit = command.max_length

            def typed(record: LogRecord) -> object:
                found = get(record)
                if found is None or found == "":
                    return _ABSENT if omit_empty else None
                if numeric:
                    return found
                text = found if type(found) is str else str(found)
                return text[:limit] if limit is not None else text

            return typed
        render = compile_template(value)
        return lambda record: render(record).decode("utf-8", "replace")
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # a Struct's numbers are doubles; Envoy prints 5, not 5.0
    return lambda record: value


def _json_object(value: JsonObject, omit_empty: bool) -> Callable[[LogRecord], object]:
    members = tuple((key, _json_value(item, omit_empty)) for key, item in value.fields)

    def build(record: LogRecord) -> object:
        out = {}
        for key, get in members:
            found = get(record)
            if found is _ABSENT or (omit_empty and isinstance(found, dict) and not found):
                continue
            out[key] = found
        return out

    return build


def compile_format(spec: TextFormat | JsonFormat, omit_empty: bool) -> Line:
    """A format as a function from a finished record to its line (bytes, with its newline
    when the format has one; JSON lines always end with one)."""
    if isinstance(spec, TextFormat):
        return compile_template(spec.template, omit_empty)
    build = _json_object(spec.root, omit_empty)
    # Envoy's keys come out sorted at every level (a Struct is a map).
    encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, sort_keys=True).encode
    return lambda record: (encode(build(record)) + "\n").encode("utf-8", "replace")
