"""A minimal server-sent-events parser for Triton's ``generate_stream``: bytes in, ``data`` payloads out.

Triton writes one ``data: {json}`` event per response, each ended by a blank line; an event can be several
hundred kilobytes (a chunk of audio as a JSON array), far past aiohttp's line-length limit, so events are cut
from raw reads here instead of read line by line. Each event's bytes are copied once, straight from the reads
to its payload, so cutting a megabyte-sized event costs a memory copy, not a parse.
"""

from __future__ import annotations


class SseParser:
    """Feed it the bytes as they arrive; it returns each complete event's data (lines joined by newlines).

    The reads of an event are kept as they came and joined once when its blank line arrives: appending them to
    one growing buffer instead re-copied the buffer on every read (~1 ms for a megabyte-sized event).
    """

    def __init__(self) -> None:
        self._parts: list[bytes | memoryview] = []  # the reads of the event being received
        self._newline = False  # a newline inside them: several lines, parsed the slow way
        self._cr = False  # the last read ended in CR: its LF may be the first byte of the next read

    def feed(self, data: bytes) -> list[bytes]:
        if self._cr:
            data, self._cr = b"\r" + data, False
        if b"\r" in data:  # CRLF or CR line ends are allowed by the SSE spec
            if data.endswith(b"\r"):
                data, self._cr = data[:-1], True
            data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        events: list[bytes] = []
        parts, start = self._parts, 0
        if parts and data[:1] == b"\n" and parts[-1][-1:] == b"\n":  # the blank line spans two reads
            parts[-1] = memoryview(parts[-1])[:-1]
            self._take(events)
            start = 1
        while (end := _blank_line(data, start)) >= 0:
            if end > start:
                parts.append(memoryview(data)[start:end])
                self._newline = self._newline or data.find(b"\n", start, end) >= 0
            self._take(events)
            start = end + 2
        if start < len(data):
            rest = data[start:] if start else data
            parts.append(rest)
            self._newline = self._newline or b"\n" in rest
        return events

    def _take(self, events: list[bytes]) -> None:
        """The event in ``_parts`` is complete: append its data to ``events`` (one copy of its bytes)."""
        parts, newline = self._parts[:], self._newline
        self._parts.clear()
        self._newline = False
        if not parts:
            return
        first = parts[0]
        if not newline and len(first) > 5 and first[:5] == b"data:":
            # One data line (how Triton writes every event): the payload is the line after "data: ".
            parts[0] = memoryview(first)[6 if first[5] == 0x20 else 5:]
            events.append(b"".join(parts))
            return
        payload = _data_of(b"".join(parts))
        if payload is not None:
            events.append(payload)

    def finish(self) -> list[bytes]:
        """The last event when the stream ended without its closing blank line."""
        rest, self._parts, self._newline, self._cr = b"".join(self._parts).strip(b"\n"), [], False, False
        payload = _data_of(rest) if rest else None
        return [payload] if payload is not None else []


def _blank_line(buffer: bytes, start: int) -> int:
    """Where the next ``\\n\\n`` starts, or -1: memchr for single newlines is ~50x faster than a two-byte
    search, and an event has few newlines however long it is."""
    find = buffer.find
    size = len(buffer)
    while True:
        pos = find(b"\n", start)
        if pos < 0 or pos + 1 >= size:
            return -1
        if buffer[pos + 1] == 0x0A:
            return pos
        start = pos + 1


def _data_of(block: bytes) -> bytes | None:
    lines = []
    for line in block.split(b"\n"):
        if line.startswith(b"data:"):
            value = line[5:]
            lines.append(value[1:] if value.startswith(b" ") else value)
    return b"\n".join(lines) if lines else None
