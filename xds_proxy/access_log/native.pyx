# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The access log's compiled core (Cython, built with the package: setup.py).

- `LogRecord`: what one request (or one TCP connection) leaves for its access-log line, filled
  in by the codec and the upstream exchange as the request goes. Its fields live in the
  object itself, so making one and reading it are a few instructions.
- `request_id()`: the x-request-id of a request that had none.
- `TextLine`: a text format as a program (text.py builds it from the parsed template), run
  over a finished record into one bytes line.

A request pays only for the operators its format names: a field is read in place, a number is
written as digits, text as its UTF-8 (cached by the str), START_TIME once per tick; the
operators without a fast form call their getter (getters.py). tests/unit/
test_access_log_compiled.py checks every line against a plain renderer made from the getters,
over random formats and records.
"""

import os

cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE, PyByteArray_Resize
from cpython.list cimport PyList_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from cpython.ref cimport PyObject
from cpython.tuple cimport PyTuple_GET_ITEM, PyTuple_GET_SIZE
from libc.string cimport memcpy

from xds_proxy.access_log import writer
from xds_proxy.codec.responses import HTTP_DATE


cdef extern from "Python.h":
    const char* PyUnicode_AsUTF8AndSize(object text, Py_ssize_t* size) except NULL
    long long PyLong_AsLongLongAndOverflow(object number, int* overflow) except? -1


cdef extern from "<time.h>" nogil:
    ctypedef long time_t
    ctypedef int clockid_t

    cdef struct timespec:
        time_t tv_sec
        long tv_nsec

    int clock_gettime(clockid_t clock, timespec* now)
    clockid_t CLOCK_MONOTONIC
    clockid_t CLOCK_REALTIME


cdef double _clock(clockid_t clock):
    """The clock as Python's time.monotonic() / time.time() read it (same clock, same
    rounding)."""
    cdef timespec now
    cdef long long nanoseconds
    clock_gettime(clock, &now)
    nanoseconds = now.tv_sec * 1000000000LL + now.tv_nsec
    if nanoseconds % 1000000000 == 0:
        return <double>(nanoseconds // 1000000000)
    return <double>nanoseconds / 1e9


# The headers a local reply has (a record builds them only for a format that reads one).
LOCAL_REPLY_HEADERS = frozenset({b":status", b"content-length", b"content-type", b"date", b"server"})


# The ProxyPolicy that took_request read last, and what it read.
cdef object _policy = None
cdef bint _generate_id, _remote_from_xff
cdef object _xff_skip = 0
cdef object _server_name = b"envoy"


cdef inline tuple _pair(header):
    """A header as a (name, value) tuple whose items are read in place: a tuple or a tuple
    subclass as it is (hpack's HeaderTuple: indexing it would go through a Python-level
    __getitem__), another pair made a tuple."""
    if isinstance(header, tuple) and PyTuple_GET_SIZE(header) == 2:
        return <tuple>header
    made = tuple(header)
    if PyTuple_GET_SIZE(made) != 2:
        raise ValueError(f"a header is a (name, value) pair, not {header!r}")
    return made


cdef inline bint _is_pseudo(name):
    """A header name starting with `:`."""
    if type(name) is bytes:
        return PyBytes_GET_SIZE(name) > 0 and PyBytes_AS_STRING(name)[0] == b":"[0]
    return name[:1] == b":"


@cython.final
@cython.freelist(64)
cdef class LogRecord:
    """One request's facts. Times are monotonic seconds, except `start_wall`.

    `LogRecord(downstream)` reads both clocks itself; `LogRecord(downstream, start,
    start_wall)` takes them."""

    cdef public object downstream  # access_log.record.Downstream: the connection's addresses
    cdef public double start, start_wall
    cdef public object request_headers  # [(lowercase name, value)], host excluded
    cdef public object protocol  # "HTTP/1.1", ...; None: a TCP connection (`-`)
    cdef public object method, path, authority, scheme  # bytes; scheme once the HCM took it
    cdef public object request_id  # bytes: the request's own, or the one made for it
    cdef public bint generate_id  # the HCM makes ids for requests without one
    cdef public bint remote_from_xff  # use_remote_address off: x-forwarded-for is the peer
    cdef public object xff_skip  # x-forwarded-for entries after the peer's (trusted hops)
    cdef public object status
    cdef public object response_headers  # [(name, value)] as the response had them, or None
    cdef readonly bint answered_locally  # a local reply: its body size and server follow
    cdef object _local_status, _local_body_size, _local_server
    cdef public object trailers
    cdef public object flags  # RESPONSE_FLAGS, comma-separated ("" for none)
    cdef public object details, termination
    cdef public object bytes_received, bytes_sent
    cdef public object request_end, first_upstream_rx, end  # monotonic, or None
    cdef public object upstream_host, upstream_cluster, upstream_local, upstream_remote
    cdef public object upstream_failure, route_name
    cdef public object attempt_count  # upstream attempts made (UPSTREAM_REQUEST_ATTEMPT_COUNT)
    cdef public object server  # the HCM's server_name (the `server` response header)

    def __cinit__(self, downstream, start=None, start_wall=None):
        self.downstream = downstream
        if start is None:
            self.start = _clock(CLOCK_MONOTONIC)
            self.start_wall = _clock(CLOCK_REALTIME)
        else:
            self.start = start
            self.start_wall = start_wall
        self.request_headers = []
        self.protocol = "HTTP/1.1"
        self.flags = ""
        self.xff_skip = self.status = self.bytes_received = self.bytes_sent = 0
        self.attempt_count = 0
        self.server = b"envoy"

    def add_flag(self, str flag):
        self.flags = f"{self.flags},{flag}" if self.flags else flag

    def local_reply(self, status, body_size, server):
        """A response made here (its headers are built only if a format reads them; `date`
        then, within the same second)."""
        self._reply(status, body_size, server)

    cdef _reply(self, status, body_size, server):
        self.status = status
        self.answered_locally = True
        self._local_status = status
        self._local_body_size = body_size
        self._local_server = server

    def answered_here(self, status, body_size, server, details, route_name, bytes_sent,
                      bint ends_request):
        """A request answered here, in one call: the reply (as `local_reply`), its details,
        route and bytes sent; the response ends now, and so does the request with
        `ends_request` (HTTP/1.1: a request is answered once it is complete)."""
        self._reply(status, body_size, server)
        self.details = details
        self.route_name = route_name
        self.bytes_sent = bytes_sent
        self.end = _clock(CLOCK_MONOTONIC)
        if ends_request:
            self.request_end = self.end

    def took_line(self, method, path):
        """The request line's method and target, as they came (a request refused before
        the HCM takes it is logged with these)."""
        self.method = method
        self.path = path

    def took_request(self, method, path, authority, scheme, policy):
        """The request's pseudo-headers, and what the HCM's policy means for its line
        (`_take_policy`)."""
        self.method = method
        self.path = path
        self.authority = authority
        self.scheme = scheme
        self._take_policy(policy)

    def took_headers(self, headers, protocol, scheme, policy):
        """A request's header block (HTTP/2: `(name, value)` pairs, pseudo-headers first):
        its pseudo-headers (`host` when there is no :authority), the other headers kept for
        the format, and the HCM's policy (`_take_policy`)."""
        cdef list kept = self.request_headers
        self.protocol = protocol
        self.scheme = scheme
        for header in headers:
            pair = _pair(header)
            name = <object>PyTuple_GET_ITEM(pair, 0)
            value = <object>PyTuple_GET_ITEM(pair, 1)
            if _is_pseudo(name):
                if name == b":method":
                    self.method = value
                elif name == b":path":
                    self.path = value
                elif name == b":authority":
                    self.authority = value
            elif name == b"host":
                if self.authority is None:
                    self.authority = value
            else:
                kept.append(header)
        self._take_policy(policy)

    cdef _take_policy(self, policy):
        """What the HCM's policy (config.hcm.ProxyPolicy) means for the line: whether a
        request id is made for a request without one, and where the downstream address comes
        from: x-forwarded-for with use_remote_address off, or with trusted hops
        (`xff_num_trusted_hops` entries back, one fewer with use_remote_address)."""
        global _policy, _generate_id, _remote_from_xff, _xff_skip, _server_name
        if policy is not _policy:  # (policies are frozen: read once per policy seen last)
            hops = policy.xff_num_trusted_hops
            remote_address = policy.use_remote_address
            _generate_id = policy.generate_request_id
            _remote_from_xff = not remote_address or hops > 0
            _xff_skip = (hops - 1 if remote_address else hops) if hops else 0
            _server_name = policy.server_name
            _policy = policy
        self.generate_id = _generate_id
        self.remote_from_xff = _remote_from_xff
        self.xff_skip = _xff_skip
        self.server = _server_name

    def response_header(self, bytes name):
        """One response header (a local reply's are built only for the names it has)."""
        headers = self.response_headers
        if headers is None:
            if not self.answered_locally or name not in LOCAL_REPLY_HEADERS:
                return None
            headers = self.response_header_list()
        for header, value in headers:
            if header == name:
                return value
        return None

    def response_header_list(self):
        """The response headers as Envoy's header map has them."""
        headers = self.response_headers
        if headers is None and self.answered_locally:
            status, body_size, server = self._local_status, self._local_body_size, self._local_server
            headers = [(b":status", b"%d" % status)]
            if body_size:
                headers.append((b"content-length", b"%d" % body_size))
                headers.append((b"content-type", b"text/plain"))
            headers.append((b"date", HTTP_DATE.now()))
            if server:
                headers.append((b"server", server))
            self.response_headers = headers
        return headers


# -- request ids -------------------------------------------------------------------------------

# A version-4 UUID whose first 80 bits are random per process and whose last 48 count from a
# random start: unique in the process without drawing 122 random bits per request.
cdef char _ID_HEAD[24]
cdef unsigned long long _id_next
cdef const char* _HEX = b"0123456789abcdef"
cdef unsigned long long _ID_COUNT_MASK = (1ULL << 48) - 1

cdef Py_ssize_t _FLUSH_SIZE = writer.FLUSH_SIZE


def _start_ids():
    global _id_next
    bits = int.from_bytes(os.urandom(10), "big")
    bits = (bits & ~(0xF << 28 | 0x3 << 14)) | (0x4 << 28 | 0x2 << 14)
    digits = "%020x" % bits
    head = f"{digits[:8]}-{digits[8:12]}-{digits[12:16]}-{digits[16:20]}-".encode()
    memcpy(_ID_HEAD, PyBytes_AS_STRING(head), 24)
    _id_next = int.from_bytes(os.urandom(5), "big")


_start_ids()


cdef bytes _new_id():
    global _id_next
    cdef char out[36]
    cdef unsigned long long count = _id_next
    cdef int index
    _id_next = (count + 1) & _ID_COUNT_MASK
    memcpy(out, _ID_HEAD, 24)
    for index in range(35, 23, -1):
        out[index] = _HEX[count & 15]
        count >>= 4
    return PyBytes_FromStringAndSize(out, 36)


def request_id():
    """A version-4 UUID, unique in this process, for a request without `x-request-id`."""
    return _new_id()


# -- text lines ------------------------------------------------------------------------------

cdef enum Kind:
    LITERAL
    REQUEST
    NUMBER
    TEXT
    FLAGS
    DURATION
    START_TIME
    RESPONSE
    CALL

# Where a REQ name's value comes from.
cdef enum Source:
    NO_VALUE  # a pseudo-header the request has none of
    METHOD
    PATH
    AUTHORITY
    SCHEME
    HEADER  # the first request header of the name
    REQUEST_ID  # the header, else the record's id, else one made now (when the HCM makes ids)
    FORWARDED_PROTO  # the header, else the scheme

_PSEUDO = {b":method": METHOD, b":path": PATH, b":authority": AUTHORITY, b"host": AUTHORITY,
           b":scheme": SCHEME}

# Record fields by name, for NUMBER, TEXT, FLAGS and DURATION operations.
cdef enum Field:
    STATUS
    BYTES_RECEIVED
    BYTES_SENT
    ATTEMPT_COUNT
    PROTOCOL
    DETAILS
    UPSTREAM_HOST
    UPSTREAM_REMOTE
    UPSTREAM_CLUSTER
    UPSTREAM_LOCAL
    UPSTREAM_FAILURE
    TERMINATION
    ROUTE_NAME
    START
    END
    REQUEST_END
    FIRST_UPSTREAM_RX

_FIELDS = {
    "status": STATUS, "bytes_received": BYTES_RECEIVED, "bytes_sent": BYTES_SENT,
    "attempt_count": ATTEMPT_COUNT, "protocol": PROTOCOL, "details": DETAILS,
    "upstream_host": UPSTREAM_HOST, "upstream_remote": UPSTREAM_REMOTE,
    "upstream_cluster": UPSTREAM_CLUSTER, "upstream_local": UPSTREAM_LOCAL,
    "upstream_failure": UPSTREAM_FAILURE, "termination": TERMINATION, "route_name": ROUTE_NAME,
    "start": START, "end": END, "request_end": REQUEST_END,
    "first_upstream_rx": FIRST_UPSTREAM_RX,
}


cdef object _field(LogRecord record, int field):
    if field == STATUS:
        return record.status
    if field == BYTES_RECEIVED:
        return record.bytes_received
    if field == BYTES_SENT:
        return record.bytes_sent
    if field == ATTEMPT_COUNT:
        return record.attempt_count
    if field == PROTOCOL:
        return record.protocol
    if field == DETAILS:
        return record.details
    if field == UPSTREAM_HOST:
        return record.upstream_host
    if field == UPSTREAM_REMOTE:
        return record.upstream_remote
    if field == UPSTREAM_CLUSTER:
        return record.upstream_cluster
    if field == UPSTREAM_LOCAL:
        return record.upstream_local
    if field == UPSTREAM_FAILURE:
        return record.upstream_failure
    if field == TERMINATION:
        return record.termination
    if field == ROUTE_NAME:
        return record.route_name
    if field == START:
        return record.start
    if field == END:
        return record.end
    if field == REQUEST_END:
        return record.request_end
    return record.first_upstream_rx


@cython.final
cdef class _Step:
    """One piece of a line: a literal, or one operator."""

    cdef int kind
    cdef object value  # LITERAL: the bytes; RESPONSE, CALL, START_TIME: the function
    cdef const char* data  # LITERAL: the bytes' data and size
    cdef Py_ssize_t size
    cdef int source, header  # REQUEST: the name's source and header slot
    cdef int alternative_source, alternative_header  # REQUEST X?Y: Y's (source -1: none)
    cdef int field, end_field  # NUMBER, TEXT: the field; DURATION: from, to
    cdef bint local_header  # RESPONSE: a header a local reply has
    cdef long long scale  # START_TIME: 10^N for a text that is the same within 10^-N s
    cdef long long tick  # START_TIME: the tick of `text`
    cdef object text
    cdef Py_ssize_t limit  # max_length, or -1


@cython.final
cdef class TextLine:
    """A text format compiled: `line(record)` gives the line as bytes; `log(record)` appends
    it to the sink's buffer and runs the sink's trigger (writer.py).

    `program` is a list of (kind, argument, argument, max_length or None):
    ("literal", bytes), ("request", main name, alternative name or None) with lowercase
    header names as bytes, ("number"|"text", field), ("flags",), ("duration", from field, to
    field), ("time", wall seconds -> bytes, 10^N or 0), ("response", record -> bytes or None,
    whether a local reply has that header), ("call", record -> bytes)."""

    cdef list _steps
    cdef list _names  # the request header names read (one slot each)
    # Per slot, while a line is made: this request's first value of that name, or NULL
    # (borrowed from the record's request_headers, which nothing changes meanwhile).
    cdef PyObject** _found
    cdef bytes _empty
    cdef object _written  # the sink's `written`
    cdef bytearray _out  # the sink's buffer
    cdef char* _buffer
    cdef Py_ssize_t _size, _capacity

    def __cinit__(self, list program, bytes empty, sink=None):
        self._capacity = 512
        self._buffer = <char*>PyMem_Malloc(self._capacity)
        if self._buffer is NULL:
            raise MemoryError()
        self._steps = []
        self._names = []
        self._empty = empty
        if sink is not None:
            self._out = sink.buffer
            self._written = sink.written
        for kind, first, second, max_length in program:
            self._steps.append(self._step(kind, first, second, max_length))
        self._found = <PyObject**>PyMem_Malloc((len(self._names) + 1) * sizeof(PyObject*))
        if self._found is NULL:
            raise MemoryError()

    def __dealloc__(self):
        PyMem_Free(self._buffer)
        PyMem_Free(self._found)

    cdef _Step _step(self, str kind, first, second, max_length):
        cdef _Step step = _Step()
        step.limit = -1 if max_length is None else max_length
        step.alternative_source = -1
        if kind == "literal":
            step.kind = LITERAL
            step.value = first  # (keeps `data` alive)
            step.data = PyBytes_AS_STRING(first)
            step.size = PyBytes_GET_SIZE(first)
        elif kind == "request":
            step.kind = REQUEST
            step.source, step.header = self._source(first)
            if second is not None:
                step.alternative_source, step.alternative_header = self._source(second)
        elif kind in ("number", "text"):
            step.kind = NUMBER if kind == "number" else TEXT
            step.field = _FIELDS[first]
        elif kind == "flags":
            step.kind = FLAGS
        elif kind == "duration":
            step.kind = DURATION
            step.field = _FIELDS[first]
            step.end_field = _FIELDS[second]
        elif kind == "time":
            step.kind = START_TIME
            step.value = first
            step.scale = second
            step.tick = -1
        elif kind == "response":
            step.kind = RESPONSE
            step.value = first
            step.local_header = second
        elif kind == "call":
            step.kind = CALL
            step.value = first
        else:
            raise ValueError(f"unknown access-log step {kind!r}")
        return step

    cdef tuple _source(self, bytes name):
        if name in _PSEUDO:
            return _PSEUDO[name], -1
        if name[:1] == b":":
            return NO_VALUE, -1
        if name not in self._names:
            self._names.append(name)
        slot = self._names.index(name)
        if name == b"x-request-id":
            return REQUEST_ID, slot
        if name == b"x-forwarded-proto":
            return FORWARDED_PROTO, slot
        return HEADER, slot

    def line(self, LogRecord record):
        """The record's line."""
        self._render(record)
        return PyBytes_FromStringAndSize(self._buffer, self._size)

    def log(self, LogRecord record):
        """The record's line, into the sink's buffer; the sink's `written` runs when the
        line starts the buffer or fills it (writer.py)."""
        cdef Py_ssize_t before
        self._render(record)
        before = PyByteArray_GET_SIZE(self._out)
        PyByteArray_Resize(self._out, before + self._size)
        memcpy(PyByteArray_AS_STRING(self._out) + before, self._buffer, self._size)
        if before == 0 or before + self._size >= _FLUSH_SIZE:
            self._written()

    cdef int _render(self, LogRecord record) except -1:
        cdef _Step step
        self._size = 0
        if self._names:
            self._scan(record)
        for step in self._steps:
            if step.kind == LITERAL:
                self._put(step.data, step.size, -1)
            elif step.kind == REQUEST:
                value = self._request(record, step.source, step.header)
                if value is None and step.alternative_source >= 0:
                    value = self._request(record, step.alternative_source, step.alternative_header)
                if type(value) is bytes:
                    self._put(PyBytes_AS_STRING(value), PyBytes_GET_SIZE(value), step.limit)
                else:
                    self._value(value, step.limit)
            elif step.kind == NUMBER:
                self._value(_field(record, step.field), step.limit)
            elif step.kind == TEXT:
                value = _field(record, step.field)
                self._value(value if value else None, step.limit)
            elif step.kind == FLAGS:
                self._text(record.flags if record.flags else "-", step.limit)
            elif step.kind == DURATION:
                self._duration(record, step)
            elif step.kind == START_TIME:
                self._time(record, step)
            elif step.kind == RESPONSE:
                if not step.local_header and record.response_headers is None:
                    self._bytes(self._empty, step.limit)
                else:
                    self._value(step.value(record), step.limit)
            else:
                self._bytes(step.value(record), step.limit)
        return 0

    cdef int _scan(self, LogRecord record) except -1:
        """The first value of each header name the format reads, in one pass."""
        cdef PyObject** found = self._found
        cdef list names = self._names
        cdef Py_ssize_t slot, count = PyList_GET_SIZE(names)
        for slot in range(count):
            found[slot] = NULL
        headers = record.request_headers
        if not headers:
            return 0
        for header in headers:
            pair = _pair(header)
            name = <object>PyTuple_GET_ITEM(pair, 0)
            for slot in range(count):
                if found[slot] is NULL and name == names[slot]:
                    found[slot] = PyTuple_GET_ITEM(pair, 1)  # (held by the header too)
                    break
        return 0

    cdef object _request(self, LogRecord record, int source, int slot):
        if source == METHOD:
            return record.method
        if source == PATH:
            return record.path
        if source == AUTHORITY:
            return record.authority
        if source == SCHEME:
            return record.scheme
        if source == NO_VALUE:
            return None
        if self._found[slot] is not NULL:
            return <object>self._found[slot]
        if source == REQUEST_ID:
            if record.request_id is None and record.generate_id:
                record.request_id = _new_id()
            return record.request_id
        if source == FORWARDED_PROTO:
            return record.scheme
        return None

    cdef int _duration(self, LogRecord record, _Step step) except -1:
        cdef double start, end
        first = _field(record, step.field)
        last = _field(record, step.end_field)
        if first is None or last is None:
            return self._bytes(self._empty, step.limit)
        start = first
        end = last
        return self._number(<long long>((end - start) * 1000), step.limit)

    cdef int _time(self, LogRecord record, _Step step) except -1:
        cdef long long tick
        if step.scale:
            tick = <long long>(record.start_wall * step.scale)
            if tick != step.tick:
                step.text = step.value(record.start_wall)
                step.tick = tick
            return self._bytes(step.text, step.limit)
        return self._bytes(step.value(record.start_wall), step.limit)

    cdef inline int _value(self, value, Py_ssize_t limit) except -1:
        """A value as the line prints it: bytes as they are, text as UTF-8, a number in
        digits; None is the empty marker."""
        cdef int overflow
        cdef long long number
        if type(value) is bytes:
            return self._bytes(value, limit)
        if value is None:
            return self._bytes(self._empty, limit)
        if type(value) is str:
            return self._text(value, limit)
        if type(value) is int:
            number = PyLong_AsLongLongAndOverflow(value, &overflow)
            if not overflow:
                return self._number(number, limit)
        return self._text(str(value), limit)

    cdef inline int _bytes(self, bytes value, Py_ssize_t limit) except -1:
        return self._put(PyBytes_AS_STRING(value), PyBytes_GET_SIZE(value), limit)

    cdef inline int _text(self, str value, Py_ssize_t limit) except -1:
        cdef Py_ssize_t size
        cdef const char* data = PyUnicode_AsUTF8AndSize(value, &size)
        return self._put(data, size, limit)

    cdef int _number(self, long long number, Py_ssize_t limit) except -1:
        cdef char digits[24]
        cdef int at = 24
        cdef bint negative = number < 0
        cdef unsigned long long rest = <unsigned long long>number
        if negative:
            rest = 0ULL - rest  # (the magnitude, LLONG_MIN's included)
        while True:
            at -= 1
            digits[at] = 48 + <int>(rest % 10)
            rest //= 10
            if rest == 0:
                break
        if negative:
            at -= 1
            digits[at] = 45  # "-"
        return self._put(digits + at, 24 - at, limit)

    cdef inline int _put(self, const char* data, Py_ssize_t size, Py_ssize_t limit) except -1:
        if 0 <= limit < size:
            size = limit
        if self._size + size > self._capacity:
            self._grow(self._size + size)
        memcpy(self._buffer + self._size, data, size)
        self._size += size
        return 0

    cdef int _grow(self, Py_ssize_t needed) except -1:
        cdef Py_ssize_t capacity = self._capacity
        cdef char* grown
        while capacity < needed:
            capacity *= 2
        grown = <char*>PyMem_Realloc(self._buffer, capacity)
        if grown is NULL:
            raise MemoryError()
        self._buffer = grown
        self._capacity = capacity
        return 0
