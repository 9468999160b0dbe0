"""A minimal server-sent-events parser for Triton's ``generate_stream``: bytes in, ``data`` payloads out.

Triton writes one ``data: {json}`` event per response, each ended by a blank line; an event can be several
hundred kilobytes (a chunk of audio as a JSON array), far past aiohttp's line-length limit, so events are cut
from raw reads here instead of read line by line.
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
            end = buffer.find(b"\n\n", search_from)
            if end < 0:
                break
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


def _data_of(block: bytes) -> bytes | None:
    lines = []
    for line in block.split(b"\n"):
        if line.startswith(b"data:"):
            value = line[5:]
            lines.append(value[1:] if value.startswith(b" ") else value)
    return b"\n".join(lines) if lines else None
