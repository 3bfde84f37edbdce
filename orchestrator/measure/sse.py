"""Server-sent events framing, as the WHATWG spec defines it, for bytes from any server.

Lines end in CRLF, LF or a lone CR; a `data` field may span several lines (joined with "\\n");
a blank line ends an event; comments (`: ping`), `event:`, `id:` and `retry:` lines carry no
data; a UTF-8 byte-order mark at the very start is dropped. Two leniencies, because real
servers need them: a stream that closes without the final blank line still delivers its last
event (`data: [DONE]\\n` then close is common), and an event whose data lines are each a whole
JSON document (a server that forgot the blank lines) is split back into those documents.

Hand-written rather than a library because the driver times each event when its bytes are
read (docs/performance.md); the decoder is fed exactly what the socket delivered.
"""

from __future__ import annotations

import json

BOM = b"\xef\xbb\xbf"


class EventTooLarge(ValueError):
    pass


class SseDecoder:
    """Feed it bytes as they arrive; it returns the data of each event completed so far."""

    def __init__(self, max_event_bytes: int):
        self.max_event_bytes = max_event_bytes
        self._tail: list[bytes] = []  # bytes of an unfinished line, joined only once it ends
        self._tail_size = 0
        self._data: list[bytes] = []
        self._size = 0
        self._started = False

    def feed(self, chunk: bytes) -> list[bytes]:
        if self._started and b"\n" not in chunk and b"\r" not in chunk:
            self._hold(chunk)  # no line ends: keep it without re-reading what came before
            return []
        buf = b"".join(self._tail) + chunk
        self._tail, self._tail_size = [], 0
        if not self._started:
            if len(buf) < len(BOM) and BOM.startswith(buf):
                self._hold(buf)  # too few bytes yet to tell a byte-order mark from text
                return []
            self._started = True
            buf = buf.removeprefix(BOM)
        hold = b""
        if buf.endswith(b"\r"):  # maybe the first half of a CRLF split across two reads
            buf, hold = buf[:-1], b"\r"
        if b"\r" in buf:
            buf = buf.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        lines = buf.split(b"\n")
        self._hold(lines.pop() + hold)
        events = []
        for line in lines:
            event = self._line(line)
            if event is not None:
                events.append(event)
        return events

    def _hold(self, part: bytes) -> None:
        if part:
            self._tail.append(part)
            self._tail_size += len(part)
        if self._tail_size > self.max_event_bytes:
            raise EventTooLarge(f"an SSE line passed {self.max_event_bytes >> 10} KiB without a line end")

    def close(self) -> list[bytes]:
        """End of stream: whatever is pending, as if the server had sent the final blank line."""
        self._started = True
        events = self.feed(b"\n") if self._tail_size else []
        event = self._line(b"")
        return events + ([event] if event is not None else [])

    def _line(self, line: bytes) -> bytes | None:
        if not line:
            return self._dispatch()
        if line.startswith(b":"):
            return None  # a comment: keep-alive pings
        field, _, value = line.partition(b":")
        if field == b"data":
            value = value[1:] if value.startswith(b" ") else value
            self._size += len(value)
            if self._size > self.max_event_bytes:
                raise EventTooLarge(f"one SSE event passed {self.max_event_bytes >> 10} KiB")
            self._data.append(value)
        return None  # event, id, retry and unknown fields carry nothing orch reads

    def _dispatch(self) -> bytes | None:
        data, self._data, self._size = self._data, [], 0
        joined = data[0] if len(data) == 1 else b"\n".join(data)
        return joined or None  # no data, or `data:` alone: the spec dispatches nothing


def split_documents(data: bytes) -> list[bytes] | None:
    """An event of several data lines that is not one JSON document: each line, if each line
    is one (a server that sent no blank lines between events); else None."""
    lines = data.split(b"\n")
    if len(lines) < 2:
        return None
    for line in lines:
        if line.strip() == b"[DONE]":
            continue
        try:
            json.loads(line)
        except ValueError:
            return None
    return lines
