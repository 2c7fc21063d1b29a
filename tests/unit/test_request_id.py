"""`x-request-id` values: version 4 UUIDs from buffered OS randomness, distinct per request
and per process after a fork."""

from __future__ import annotations

import os
import re
import uuid

from xds_proxy.upstream.forward import _request_id

_UUID4 = re.compile(rb"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


def test_request_ids_are_version_4_uuids_and_distinct_across_buffer_refills() -> None:
    ids = [_request_id() for _ in range(1000)]  # about four 4 KiB buffers
    assert all(_UUID4.match(value) for value in ids)
    assert len(set(ids)) == len(ids)


def test_a_forked_child_draws_ids_of_its_own() -> None:
    _request_id()  # the parent's buffer is filled
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next ids, to the parent
        os.close(read_end)
        os.write(write_end, b"".join(_request_id() for _ in range(4)))
        os._exit(0)
    os.close(write_end)
    child = b""
    while chunk := os.read(read_end, 4096):
        child += chunk
    os.close(read_end)
    os.waitpid(pid, 0)
    parent = b"".join(_request_id() for _ in range(4))
    assert len(child) == len(parent) == 4 * 36
    assert child != parent


def test_version_and_variant_as_uuid_reads_them_and_every_digit_random() -> None:
    ids = [_request_id() for _ in range(2000)]
    for made in ids:
        parsed = uuid.UUID(made.decode())
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122
        assert str(parsed).encode() == made  # lower-case, dashed as Envoy writes it
    assert {made[19:20] for made in ids} == {b"8", b"9", b"a", b"b"}  # the variant's low bits
    assert set(b"".join(ids).replace(b"-", b"")) == set(b"0123456789abcdef")
