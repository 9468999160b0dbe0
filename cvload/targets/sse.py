"""A minimal server-sent-events parser for Triton's ``generate_stream``: bytes in, ``data`` payloads out.

Triton writes one ``data: {json}`` event per response, each ended by a blank line; an event can be several
hundred kilobytes (a chunk of audio as a JSON array), far past aiohttp's line-length limit, so events are cut
from raw reads here instead of read line by line. Each event's bytes are copied once, straight from the read
buffer to its payload, so cutting a megabyte-sized event costs a memory copy, not a parse.
"""

from __future__ import annotations


class SseParser:
    """Feed it the bytes as they arrive; it returns each complete event's data (lines joined by newlines)."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._cr = False  # the last read ended in CR: its LF may be the first byte of the next read

    def feed(self, data: bytes) -> list[bytes]:
        if self._cr:
            data, self._cr = b"\r" + data, False
        if b"\r" in data:  # CRLF or CR line ends are allowed by the SSE spec
            if data.endswith(b"\r"):
                data, self._cr = data[:-1], True
            data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        buffer = self._buffer
        search_from = max(0, len(buffer) - 1)
        buffer += data
        events: list[bytes] = []
        start = 0
        while True:
            end = _blank_line(buffer, search_from)
            if end < 0:
                break
            if buffer.startswith(b"data:", start) and buffer.find(b"\n", start, end) < 0:
                # One data line (how Triton writes every event): the payload is the line after "data: ".
                skip = 6 if end > start + 5 and buffer[start + 5] == 0x20 else 5
                with memoryview(buffer) as view:
                    events.append(bytes(view[start + skip:end]))
            else:
                payload = _data_of(bytes(buffer[start:end]))
                if payload is not None:
                    events.append(payload)
            start = search_from = end + 2
        if start:
            del buffer[:start]
        return events

    def finish(self) -> list[bytes]:
        """The last event when the stream ended without its closing blank line."""
        rest, self._buffer, self._cr = bytes(self._buffer).strip(b"\n"), bytearray(), False
        payload = _data_of(rest) if rest else None
        return [payload] if payload is not None else []


def _blank_line(buffer: bytearray, start: int) -> int:
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
