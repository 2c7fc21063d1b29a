"""Generated `x-request-id`s are random version 4 UUIDs, as Envoy's: the right version and
variant, all distinct, every variant digit and every hex digit in use."""

from __future__ import annotations

import uuid

from xds_proxy.upstream.forward import _request_id


def test_random_version_4_uuids() -> None:
    ids = [_request_id() for _ in range(2000)]  # several 4 KiB draws
    assert len(set(ids)) == len(ids)
    for made in ids:
        parsed = uuid.UUID(made.decode())
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122
        assert str(parsed).encode() == made  # lower-case, dashed as Envoy writes it
    assert {made[19:20] for made in ids} == {b"8", b"9", b"a", b"b"}
    assert set(b"".join(ids).replace(b"-", b"")) == set(b"0123456789abcdef")
