"""XXH64 against published vectors and the values Envoy 1.40 showed for `lds.version`."""

from __future__ import annotations

import pytest

from xds_proxy.xxhash64 import xxhash64


@pytest.mark.parametrize(
    ("data", "seed", "digest"),
    [
        (b"", 0, 0xEF46DB3751D8E999),
        (b"a", 0, 0xD24EC4F1A98C6E5B),
        (b"abc", 0, 0x44BC2CF5AD770999),
        (b"", 1, 0xD5AFBA1336A3BE4B),
        (b"Nobody inspects the spammish repetition", 0, 0xFBCEA83C8A378BF1),
        # seen on Envoy 1.40: listener_manager.lds.version for version_info "v1"
        ("v1", 0, 9194640092791331756),
    ],
)
def test_known_digests(data: bytes | str, seed: int, digest: int) -> None:
    assert xxhash64(data, seed) == digest


def test_every_length_path_gives_a_64_bit_value() -> None:
    # lengths 0..70 cover the 32-byte stripes, the 8-, 4- and 1-byte tails
    digests = {xxhash64(bytes(range(n))) for n in range(71)}
    assert len(digests) == 71
    assert all(0 <= d < 2**64 for d in digests)
    assert xxhash64("é") == xxhash64("é".encode())
