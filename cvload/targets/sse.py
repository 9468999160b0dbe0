"""A minimal server-sent-events parser for Triton's ``generate_stream``: bytes in, ``data`` payloads out.

Triton writes one ``data: {json}`` event per response, each ended by a blank line; an event can be a megabyte
(a chunk of audio as a JSON array), far past aiohttp's line-length limit, so events are cut from raw reads here
instead of read line by line. An event's data comes out as the pieces of the reads it arrived in (``Parts``),
never joined: a megabyte join per event (a fresh buffer, a copy, its release later) was a quarter of the
measuring loop's busy time at 64 HTTP streams. Whoever needs the bytes in one piece joins them off that path.
"""

from __future__ import annotations

from typing import TypeAlias

Part: TypeAlias = "bytes | memoryview"
Parts: TypeAlias = "list[bytes | memoryview]"  # one event's data: views of the reads it arrived in, in order


class SseParser:
    """Feed it the bytes as they arrive; it returns each complete event's data as ``Parts`` (for an event of
    several lines, one part: its lines joined by newlines)."""

    def __init__(self) -> None:
        self._parts: Parts = []  # the reads of the event being received
        self._newline = False  # a newline inside them: several lines, parsed the slow way
        self._cr = False  # the last read ended in CR: its LF may be the first byte of the next read

    def feed(self, data: bytes) -> list[Parts]:
        if self._cr:
            data, self._cr = b"\r" + data, False
        if b"\r" in data:  # CRLF or CR line ends are allowed by the SSE spec
            if data.endswith(b"\r"):
                data, self._cr = data[:-1], True
            data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        events: list[Parts] = []
        start, view = 0, memoryview(data)
        if self._parts and self._parts[-1][-1:] == b"\n":
            if data[:1] == b"\n":  # the blank line spans two reads
                self._parts[-1] = memoryview(self._parts[-1])[:-1]
                self._take(events)
                start = 1
            else:  # the last read's final newline ended a line of the event
                self._newline = True
        while True:
            end, newline = _blank_line(data, start)
            if end < 0:
                break
            if end > start:
                self._parts.append(view[start:end])
                self._newline = self._newline or newline < end
            self._take(events)  # a fresh list in self._parts for the next event
            start = end + 2
        if start < len(data):
            self._parts.append(view[start:] if start else data)
            self._newline = self._newline or 0 <= newline < len(data) - 1  # a final one: see the next read
        return events

    def _take(self, events: list[Parts]) -> None:
        """The event in ``_parts`` is complete: append its data to ``events`` (no copy for a one-line event)."""
        parts, newline = self._parts, self._newline
        self._parts, self._newline = [], False
        if not parts:
            return
        first = parts[0]
        if not newline and len(first) > 5 and first[:5] == b"data:":
            # One data line (how Triton writes every event): the payload is the line after "data: ".
            parts[0] = memoryview(first)[6 if first[5] == 0x20 else 5:]
            events.append(parts)
            return
        payload = _data_of(b"".join(parts))
        if payload is not None:
            events.append([payload])

    def finish(self) -> list[Parts]:
        """The last event when the stream ended without its closing blank line."""
        rest, self._parts, self._newline, self._cr = b"".join(self._parts).strip(b"\n"), [], False, False
        payload = _data_of(rest) if rest else None
        return [[payload]] if payload is not None else []


def _blank_line(buffer: bytes, start: int) -> tuple[int, int]:
    """Where the next ``\\n\\n`` from ``start`` starts (-1: none) and where the first newline from ``start`` is
    (-1: none; the event's lines are found in the same scan). memchr for single newlines is ~50x faster than a
    two-byte search, and an event has few newlines however long it is."""
    find = buffer.find
    size = len(buffer)
    first = pos = find(b"\n", start)
    while True:
        if pos < 0 or pos + 1 >= size:
            return -1, first
        if buffer[pos + 1] == 0x0A:
            return pos, first
        pos = find(b"\n", pos + 1)


def _data_of(block: bytes) -> bytes | None:
    lines = []
    for line in block.split(b"\n"):
        if line.startswith(b"data:"):
            value = line[5:]
            lines.append(value[1:] if value.startswith(b" ") else value)
    return b"\n".join(lines) if lines else None


def size(parts: Parts) -> int:
    return sum(len(part) for part in parts)


def head(parts: Parts, count: int) -> bytes:
    """The first ``count`` bytes of ``parts`` (fewer where they hold fewer), copying only those."""
    out, held = [], 0
    for part in parts:
        if held >= count:
            break
        out.append(part[:count - held])
        held += len(out[-1])
    return out[0].tobytes() if len(out) == 1 and isinstance(out[0], memoryview) else b"".join(out)


def tail(parts: Parts, count: int) -> bytes:
    """The last ``count`` bytes of ``parts`` (fewer where they hold fewer)."""
    out: list[Part] = []
    held = 0
    for part in reversed(parts):
        if held >= count:
            break
        out.append(part[max(0, len(part) - (count - held)):])
        held += len(out[-1])
    return b"".join(reversed(out))


def views(parts: Parts, start: int, end: int) -> list[memoryview]:
    """Views of bytes ``start`` to ``end`` of ``parts`` taken as one buffer (no copy)."""
    out, offset = [], 0
    for part in parts:
        length = len(part)
        if offset + length > start and offset < end:
            out.append(memoryview(part)[max(0, start - offset):min(length, end - offset)])
        offset += length
        if offset >= end:
            break
    return out
