"""Text access-log formats, compiled once per config into one generated function, so that a
request pays only for the operators its format names and nothing per operator that can be
done at config time.

The function's body is straight-line code: the request headers the format reads are found in
one pass (none when the request has no other header), the request id is made if the format
prints it, and the line is one `%`-format of a bytes template (the literal pieces) with one
expression per operator: record fields read inline, numbers from a table, a text field's bytes
kept per value, START_TIME's text kept per tick (a millisecond by default) behind one
comparison, the rest through the getters (getters.py). With a sink, the same body appends the
line to the sink's buffer and checks its trigger (writer.py) instead of returning it: one call
per logged request.

Each operator prints what its getter gives, as bytes (header values as they came, text as
UTF-8; `-` or, with omit_empty_values, nothing for no value; `max_length` cuts the bytes, as
Envoy cuts its string): tests/unit/test_access_log_compiled.py checks that against a plain
renderer made from the getters, over random records.
"""

from __future__ import annotations

from collections.abc import Callable

from xds_proxy.access_log.getters import getter, response_bytes
from xds_proxy.access_log.record import LOCAL_REPLY_HEADERS, LogRecord, request_ids
from xds_proxy.access_log.times import TimeBytes
from xds_proxy.access_log.writer import LogFile
from xds_proxy.config.access_log import Command, Template

Line = Callable[[LogRecord], bytes]
Log = Callable[[LogRecord], None]

# Numbers as their decimal bytes: those below SMALL_NUMBERS are made once (status codes, byte
# counts and durations in ms mostly are), any other when asked.
SMALL_NUMBERS = 1024


class _Numbers(dict):
    def __missing__(self, number: int) -> bytes:
        return b"%d" % number


_NUMBERS = _Numbers((number, b"%d" % number) for number in range(SMALL_NUMBERS))


class _Encoded(dict):
    """One text operator's values (few: protocols, flags, details, hosts) as bytes, each
    encoded once (at most 256 kept); None and "" are `empty`."""

    def __init__(self, empty: bytes) -> None:
        super().__init__()
        self._empty = empty

    def __missing__(self, key: str | None) -> bytes:
        if len(self) >= 256:
            self.clear()
        made = self[key] = key.encode() if key else self._empty
        return made


# Operators read straight from a record attribute: an int (always present), an optional str
# (None or "" print the empty marker; RESPONSE_FLAGS prints `-` even with
# omit_empty_values), a duration in ms between two monotonic times (the first, when it is
# `r.start`, is always set).
_INTS = {
    "RESPONSE_CODE": "r.status",
    "BYTES_RECEIVED": "r.bytes_received",
    "BYTES_SENT": "r.bytes_sent",
    "UPSTREAM_REQUEST_ATTEMPT_COUNT": "r.attempt_count",
}
_TEXTS = {
    "PROTOCOL": "r.protocol",
    "RESPONSE_FLAGS": "r.flags",
    "RESPONSE_CODE_DETAILS": "r.details",
    "UPSTREAM_HOST": "r.upstream_host",
    "UPSTREAM_REMOTE_ADDRESS": "r.upstream_remote",
    "UPSTREAM_CLUSTER": "r.upstream_cluster",
    "UPSTREAM_LOCAL_ADDRESS": "r.upstream_local",
    "UPSTREAM_TRANSPORT_FAILURE_REASON": "r.upstream_failure",
    "CONNECTION_TERMINATION_DETAILS": "r.termination",
    "ROUTE_NAME": "r.route_name",
}
_DURATIONS = {
    "DURATION": ("r.start", "r.end"),
    "REQUEST_DURATION": ("r.start", "r.request_end"),
    "RESPONSE_DURATION": ("r.start", "r.first_upstream_rx"),
    "RESPONSE_TX_DURATION": ("r.first_upstream_rx", "r.end"),
}

# REQ names that are record fields (bytes or None).
_PSEUDO_HEADERS = {
    b":method": "r.method",
    b":path": "r.path",
    b":authority": "r.authority",
    b"host": "r.authority",
    b":scheme": "r.scheme",
}
# Request headers whose absence matters beyond printing the marker.
_COMPLETED_HEADERS = frozenset({b"x-request-id", b"x-forwarded-proto"})


class _Compiler:
    """The source and the namespace of one template's function."""

    def __init__(self, template: Template, omit_empty: bool) -> None:
        self.empty = b"" if omit_empty else b"-"
        self.namespace: dict[str, object] = {"_empty": self.empty, "_N": _NUMBERS}
        # Request header name -> its local variable. A header whose absence only prints the
        # marker starts as the marker (its operator is then the variable alone); the others
        # (the first choice of `REQ(X?Y)`, the request id, x-forwarded-proto) start as None.
        self.headers: dict[bytes, str] = {}
        self.nullable = set(_COMPLETED_HEADERS)
        for piece in template:
            if isinstance(piece, Command) and piece.name == "REQ" and piece.alternative:
                self.nullable.add(piece.main.encode("latin-1"))
        self.request_id = ""  # the variable of x-request-id, if the format reads it
        self.wall = False  # START_TIME is read: `_w` holds the start's wall time

    def add(self, name: str, value: object) -> str:
        self.namespace[name] = value
        return name

    def command(self, piece: Command, index: int) -> str:
        """The bytes expression of one command operator."""
        name = piece.name
        if name == "REQ":
            expression = self._request(piece, index)
        elif name in _INTS:
            expression = f"_N[{_INTS[name]}]"
        elif name in _TEXTS:
            empty = b"-" if name == "RESPONSE_FLAGS" else self.empty
            expression = f"{self.add(f'_c{index}', _Encoded(empty))}[{_TEXTS[name]}]"
        elif name in _DURATIONS:
            expression = _duration(*_DURATIONS[name], index)
        elif name == "START_TIME":
            expression = self._time(piece, index)
        elif name in ("RESP", "TRAILER"):
            expression = self._response(piece, index)
        else:
            value = _bytes_getter(piece, self.empty)
            expression = f"{self.add(f'_g{index}', value)}(r)"
        if piece.max_length is not None:
            return f"{expression}[:{piece.max_length}]"
        return expression

    def _request(self, piece: Command, index: int) -> str:
        main, nullable = self._request_value(piece.main.encode("latin-1"))
        if not piece.alternative:
            return _or_empty(main, f"_v{index}") if nullable else main
        alternative, alternative_nullable = self._request_value(piece.alternative.encode("latin-1"))
        if alternative_nullable:
            alternative = _or_empty(alternative, f"_a{index}")
        return f"(_v{index} if (_v{index} := {main}) is not None else {alternative})"

    def _request_value(self, name: bytes) -> tuple[str, bool]:
        """The expression of one REQ name's value, and whether it may be None (else it is
        bytes: the value or the marker)."""
        pseudo = _PSEUDO_HEADERS.get(name)
        if pseudo is not None:
            return pseudo, True
        if name[:1] == b":":
            return "None", True
        variable = self.headers.setdefault(name, f"_h{len(self.headers)}")
        if name == b"x-request-id":
            self.request_id = variable  # completed after the scan (`prelude`)
        elif name == b"x-forwarded-proto":
            return f"({variable} if {variable} is not None else r.scheme)", True
        return variable, name in self.nullable

    def _time(self, piece: Command, index: int) -> str:
        self.wall = True
        time_bytes = TimeBytes(piece.main)
        miss = self.add(f"_tm{index}", time_bytes.miss)
        if not time_bytes.scale:
            return f"{miss}(_w)"
        state = self.add(f"_ts{index}", time_bytes.state)
        return f"({state}[1] if int(_w * {time_bytes.scale}) == {state}[0] else {miss}(_w))"

    def _response(self, piece: Command, index: int) -> str:
        read = self.add(f"_b{index}", response_bytes(piece))
        call = _or_empty(f"{read}(r)", f"_v{index}")
        names = {piece.main.encode("latin-1"), piece.alternative.encode("latin-1")} - {b""}
        if piece.name == "RESP" and not names & LOCAL_REPLY_HEADERS:
            # Not a header of a local reply: without response headers, nothing to look for.
            return f"(_empty if r.response_headers is None else {call})"
        return call

    def prelude(self) -> str:
        """The statements before the line: the start's wall time, the request headers the
        format reads (found in one pass; the first of a name wins), the request id."""
        lines = ["_w = r.start_wall"] if self.wall else []
        if self.headers:
            for name, variable in self.headers.items():
                lines.append(f"{variable} = {'None' if name in self.nullable else '_empty'}")
            lines.append("if r.request_headers:")
            lines.append("    for _n, _v in reversed(r.request_headers):")
            for index, (name, variable) in enumerate(self.headers.items()):
                keyword = "if" if index == 0 else "elif"
                lines.append(f"        {keyword} _n == {self.add(f'_k{index}', name)}:")
                lines.append(f"            {variable} = _v")
        if self.request_id:
            # The request's own id, else the one made for it (once, when the HCM makes ids;
            # every operator and logger then prints the same).
            variable = self.request_id
            self.add("_ids", request_ids)
            lines += [
                f"if {variable} is None:",
                f"    {variable} = r.request_id",
                f"    if {variable} is None and r.generate_id:",
                f"        {variable} = r.request_id = next(_ids)",
            ]
        return "".join(f"    {line}\n" for line in lines)


def _or_empty(expression: str, variable: str) -> str:
    """A value that may be None, or the marker."""
    return f"({variable} if ({variable} := {expression}) is not None else _empty)"


def _duration(start: str, end: str, index: int) -> str:
    """Milliseconds from `start` to `end`, or the empty marker when one of them is unset."""
    ms = f"_N[int((_e{index} - {start}) * 1000)]"
    if start == "r.start":
        return f"(_empty if (_e{index} := {end}) is None else {ms})"
    return f"(_empty if {start} is None or (_e{index} := {end}) is None else {ms})"


def _bytes_getter(command: Command, empty: bytes) -> Line:
    """An operator without an inline expression, through its getter: the value's text as
    UTF-8 (a header's as it came), or the empty marker."""
    get = getter(command)
    header = command.name in ("REQ", "RESP", "TRAILER")

    def value(record: LogRecord) -> bytes:
        found = get(record)
        if found is None:
            return empty
        if header:
            return found.encode("latin-1")  # type: ignore[union-attr]
        return (found if type(found) is str else str(found)).encode()

    return value


def _source(template: Template, compiler: _Compiler, name: str, tail: str) -> str:
    shape: list[bytes] = []  # the literal pieces, `%` escaped, and `%s` for each operator
    values: list[str] = []
    for index, piece in enumerate(template):
        if isinstance(piece, str):
            shape.append(piece.encode().replace(b"%", b"%%"))
            continue
        shape.append(b"%s")
        values.append(compiler.command(piece, index))
    compiler.add("_shape", b"".join(shape))
    # (A format without operators is its one literal piece.)
    compiler.add("_text", "".join(piece for piece in template if isinstance(piece, str)).encode())
    line = f"_shape % ({', '.join(values)},)" if values else "_text"
    return f"def {name}(r):\n{compiler.prelude()}" + tail.replace("LINE", line)


def compile_text(template: Template, omit_empty: bool = False) -> Line:
    """A text template as a function returning the line as bytes."""
    compiler = _Compiler(template, omit_empty)
    source = _source(template, compiler, "render", "    return LINE\n")
    exec(compile(source, "<access-log format>", "exec"), compiler.namespace)
    return compiler.namespace["render"]  # type: ignore[return-value]


def compile_text_logger(template: Template, omit_empty: bool, sink: LogFile) -> Log:
    """A text template as a function writing the line to `sink` (its buffer, then its
    trigger: writer.py)."""
    compiler = _Compiler(template, omit_empty)
    compiler.add("_append", sink.lines.append)
    compiler.add("_lines", sink.lines)
    compiler.add("_sink", sink)
    tail = "    _append(LINE)\n    if len(_lines) >= _sink.trigger:\n        _sink.written()\n"
    source = _source(template, compiler, "log", tail)
    exec(compile(source, "<access-log format>", "exec"), compiler.namespace)
    return compiler.namespace["log"]  # type: ignore[return-value]
