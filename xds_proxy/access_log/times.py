"""START_TIME: Envoy's default `%Y-%m-%dT%H:%M:%E3SZ` (UTC), or a strftime pattern with
Envoy's additions: `%s` (epoch seconds), `%f` (nanoseconds), `%1f`..`%9f`, `%E1S`..`%E9S`
(seconds with that many decimals). The strftime text is made once per second; a pattern of
the common shape (text, N fraction digits, text: the default among them) keeps its whole text
per tick (10^-N s), so most requests pay one comparison.
"""

from __future__ import annotations

import time
from collections.abc import Callable

TimeText = Callable[[float], str]  # wall-clock seconds -> the text of the pattern


def time_parts(pattern: str) -> list[str | int]:
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


def tick_digits(pattern: str) -> int:
    """N when the pattern has the common shape (its text is the same within 10^-N s), else 0."""
    parts = time_parts(pattern)
    if len(parts) == 3 and type(parts[1]) is int and parts[1] > 0:
        return parts[1]
    return 0


def time_text(pattern: str) -> TimeText:
    """The text of `pattern` at a wall-clock time."""
    parts = time_parts(pattern)
    digits = tick_digits(pattern)
    if digits:
        return _one_fraction_text(parts[0], digits, parts[2])  # type: ignore[arg-type]
    cache: list = [None, ()]  # second -> rendered strftime parts

    def text(wall: float) -> str:
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

    return text


def _one_fraction_text(before: str, digits: int, after: str) -> TimeText:
    """The common shape: text, N fraction digits, text; the strftime text is rendered once per
    second, the whole text once per tick."""
    scale = 10**digits
    shape = f"%s%0{digits}d%s"
    cached_second = cached_tick = -1
    head = tail = text = ""

    def text_at(wall: float) -> str:
        nonlocal cached_second, cached_tick, head, tail, text
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

    return text_at


def time_bytes(pattern: str) -> tuple[Callable[[float], bytes], int]:
    """START_TIME as bytes, for a compiled text format: the text at a wall-clock time, and
    10^N when the text is the same within a tick of 10^-N s (0: it may differ per request)."""
    text = time_text(pattern)
    digits = tick_digits(pattern)
    return (lambda wall: text(wall).encode()), (10**digits if digits else 0)
