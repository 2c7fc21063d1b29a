"""What Envoy's connection manager does to a request's path before routing, when the HCM asks
for it (`normalize_path`, `merge_slashes`, `path_with_escaped_slashes_action`), in Envoy's
order (`ConnectionManagerUtility::maybeNormalizePath`):

1. escaped slashes (`%2F`, `%5C`, either case) in the path part are unescaped unless the
   action is KEEP_UNCHANGED; finding one makes REJECT_REQUEST a 400 and
   UNESCAPE_AND_REDIRECT a 307 to the resulting path (both with the details
   `path_normalization_failed`);
2. `normalize_path`: RFC 3986 normalisation of the path part as Envoy's snapshot of
   Chromium's `CanonicalizePath` does it (`canonical_path`); a path it cannot
   canonicalise (an escaped NUL) is a 400;
3. `merge_slashes`: runs of `/` in the path part become one (`merge_slashes`).

The query string is never touched. Pure functions on bytes; `PathRules.apply` is the one
entry point the codecs call, only for an HCM that sets one of the fields.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from xds_proxy.codec.responses import redirect_bytes
from xds_proxy.config.hcm import EscapedSlashes, PathSettings

PATH_NORMALIZATION_FAILED = "path_normalization_failed"
# '#' as a byte value: Envoy 1.40 refuses a path with a fragment, whatever the config. Tested
# as `FRAGMENT_MARK in path`: CPython 3.11's `b"#" in path` first tries the needle as an
# integer and builds (then drops) a TypeError, ~10x the cost of the search itself.
FRAGMENT_MARK = ord("#")

# Character classes of the path canonicaliser (Envoy's `kPathCharLookup`).
_PASS, _UNESCAPE, _ESCAPE, _SPECIAL, _INVALID = 0, 1, 2, 3, 4


def _char_classes() -> bytes:
    classes = bytearray([_ESCAPE] * 256)
    classes[0] = _INVALID
    for char in b"!$&'()*+,/:;=@[]":
        classes[char] = _PASS
    for char in b"-_~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz":
        classes[char] = _UNESCAPE
    for char in b".\\%":
        classes[char] = _SPECIAL
    return bytes(classes)


_CLASSES = _char_classes()
_HEX = frozenset(b"0123456789abcdefABCDEF")
_SLASHES = (ord("/"), ord("\\"))


def _dot_length(path: bytes, index: int) -> int:
    """1 for `.`, 3 for `%2e` / `%2E`, 0 for anything else at `index`."""
    if path[index] == 0x2E:
        return 1
    if path[index] == 0x25 and path[index + 1 : index + 3] in (b"2e", b"2E"):
        return 3
    return 0


def _escaped(path: bytes, index: int) -> int | None:
    """The byte `%XX` at `index` stands for, or None if it is not a valid escape."""
    pair = path[index + 1 : index + 3]
    if len(pair) == 2 and pair[0] in _HEX and pair[1] in _HEX:
        return int(pair, 16)
    return None


def _back_up_to_previous_slash(out: bytearray) -> None:
    """`out` ends with `/`: drop the last segment, never the first slash."""
    last = len(out) - 1
    if last == 0:
        return
    index = last - 1
    while out[index] != 0x2F and index > 0:
        index -= 1
    del out[index + 1 :]


def _fix_nested_escape(path: bytes, next_index: int, percent_at: int, out: bytearray) -> None:
    """A value was just unescaped within two characters of an earlier `%` that began no
    valid escape: if the output now reads as an escape, that `%` becomes `%25` (so that a
    second canonicalisation cannot decode something the first did not)."""
    length = len(out)
    last = out[-1]
    append_next = percent_at == length - 2
    if append_next:
        if next_index == len(path) or path[next_index] >= 0x80:
            return
        out.append(path[next_index])
    if _escaped(bytes(out), percent_at) is not None:
        if not append_next:
            out.append(out[percent_at + 1])
        out[percent_at + 1] = ord("2")
        out[percent_at + 2] = ord("5")
        out.append(last)
    elif append_next:
        del out[length:]


def canonical_path(path: bytes) -> bytes | None:
    """The path part of a URL (no query) canonicalised as Envoy's `PathUtil::canonicalPath`:
    `.` and `..` segments (also `%2e`) resolved without going above the root, `\\` turned
    into `/`, escapes of unreserved characters decoded, characters that must be escaped
    escaped (upper-case hex), other escapes kept as they were. None: it cannot be (`%00`)."""
    out = bytearray()
    if not path or path[0] not in _SLASHES:
        out.append(0x2F)
    if not path:
        return bytes(out)
    ok = True
    invalid_percent_at = -10
    end = len(path)
    index = 0
    while index < end:
        char = path[index]
        kind = _CLASSES[char]
        if kind <= _UNESCAPE:  # copied as they are
            out.append(char)
        elif kind == _ESCAPE:
            out += b"%%%02X" % char
        elif kind == _INVALID:
            out += b"%%%02X" % char
            ok = False
        else:
            dot = _dot_length(path, index)
            if dot:
                index = _after_dot(path, index, dot, out)
                continue
            if char == 0x5C:  # backslash
                out.append(0x2F)
            else:  # '%'
                value = _escaped(path, index)
                if value is None:
                    invalid_percent_at = len(out)
                    out.append(0x25)
                else:
                    value_kind = _CLASSES[value]
                    if value_kind == _UNESCAPE:
                        out.append(value)
                        if invalid_percent_at >= len(out) - 3:
                            _fix_nested_escape(path, index + 3, invalid_percent_at, out)
                    else:
                        out += path[index : index + 3]
                        if value_kind == _INVALID:
                            ok = False
                    index += 2
        index += 1
    return bytes(out) if ok else None


def _after_dot(path: bytes, index: int, dot: int, out: bytearray) -> int:
    """A dot (`.` or `%2e`) at `index`: a `.` or `..` segment when it follows a slash.
    Returns where the input continues."""
    after = index + dot
    if not out or out[-1] != 0x2F:
        out.append(0x2E)
        return after
    end = len(path)
    if after == end:
        return after  # "/." at the end
    if path[after] in _SLASHES:
        return after + 1  # "/./"
    second = _dot_length(path, after)
    if second:
        after_second = after + second
        if after_second == end:
            _back_up_to_previous_slash(out)
            return after_second
        if path[after_second] in _SLASHES:
            _back_up_to_previous_slash(out)
            return after_second + 1
    out.append(0x2E)
    return after


def unescape_slashes(path: bytes) -> bytes:
    """`%2F` / `%2f` -> `/` and `%5C` / `%5c` -> `\\` (Envoy's `PathUtil::unescapeSlashes`)."""
    if b"%" not in path:
        return path
    return (
        path.replace(b"%2F", b"/")
        .replace(b"%2f", b"/")
        .replace(b"%5C", b"\\")
        .replace(b"%5c", b"\\")
    )


def merge_slashes(path: bytes) -> bytes:
    """Runs of `/` become one, keeping a leading and a trailing slash (Envoy's
    `PathUtil::mergeSlashes`: `//` stays `//`)."""
    if b"//" not in path:
        return path
    prefix = b"/" if path.startswith(b"/") else b""
    suffix = b"/" if path.endswith(b"/") else b""
    return prefix + b"/".join(part for part in path.split(b"/") if part) + suffix


class PathOutcome(enum.Enum):
    CONTINUE = 0
    REJECT = 1  # 400
    REDIRECT = 2  # 307 to the new path


@dataclass(frozen=True, slots=True)
class PathRules:
    """An HCM's path settings, applied to one request's `:path` (path and query)."""

    settings: PathSettings

    def apply(self, url: bytes) -> tuple[PathOutcome, bytes]:
        settings = self.settings
        query_at = url.find(b"?")
        path, query = (url, b"") if query_at < 0 else (url[:query_at], url[query_at:])
        outcome = PathOutcome.CONTINUE
        action = settings.escaped_slashes
        if action is not EscapedSlashes.KEEP_UNCHANGED:
            unescaped = unescape_slashes(path)
            if unescaped != path:
                path = unescaped
                if action is EscapedSlashes.REJECT_REQUEST:
                    return PathOutcome.REJECT, path + query
                if action is EscapedSlashes.UNESCAPE_AND_REDIRECT:
                    outcome = PathOutcome.REDIRECT
        if settings.normalize_path:
            canonical = canonical_path(path)
            if canonical is None:
                return PathOutcome.REJECT, path + query
            path = canonical
        if settings.merge_slashes:
            path = merge_slashes(path)
        return outcome, path + query


class PathRedirect:
    """UNESCAPE_AND_REDIRECT's answer: a 307 to the unescaped (and normalised) path, which
    Envoy's connection manager sends before routing (details `path_normalization_failed`)."""

    __slots__ = ("path", "server")

    status = 307
    route_name = ""

    def __init__(self, path: bytes, server: str) -> None:
        self.path = path
        self.server = server

    def render(self, request: object, date: bytes, close: bool) -> tuple[int, bytes]:
        location = self.path.decode("latin-1")
        return self.status, redirect_bytes(self.status, location, date, close, self.server)
