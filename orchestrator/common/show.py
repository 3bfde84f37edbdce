"""What a server or a file says is shown, never obeyed.

An error body, a model name, a /metrics label, a prompt file or a log may hold terminal escape
sequences (ESC ] 0;title BEL retitles a terminal, ESC [2J clears it, CSI as one byte U+009B) or
line breaks that forge lines of orch's own. Every place that prints such text, or writes it into
the report, passes it through `printable` first: control characters become visible escapes
(`\\x1b`, `\\x9b`, `\\r`), and so does a line break wherever one line is expected. Run records keep
the raw text, escaped as JSON and TOML escape it (`escape_raw_controls` for the characters
those formats let stand raw).
"""

from __future__ import annotations

import re

# C0 but tab and newline, DEL, C1; the Unicode line and paragraph separators; the bidirectional
# overrides and isolates, which reorder what a terminal shows; lone surrogates (a file name read
# with surrogateescape), which no terminal can encode.
_CONTROLS = "\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff"
_IN_LINES = re.compile(f"[{_CONTROLS}]")
_IN_ONE_LINE = re.compile(f"[\n{_CONTROLS}]")
_NAMED = {"\n": "\\n", "\r": "\\r"}
# What json.dumps(ensure_ascii=False) and tomli_w leave raw inside a string: DEL, C1, U+2028/9
# and the bidirectional controls.
_RAW_IN_STRINGS = re.compile("[\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def _escape(m: re.Match[str]) -> str:
    c = m.group()
    return _NAMED.get(c) or (f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}")


def printable(text: object, lines: bool = False) -> str:
    """`text` (any object, as str()) safe to print or write into a report: control characters as
    visible escapes; newlines too, unless `lines` (a block of several lines of orch's own, whose
    parts were each made one line). Tabs stay."""
    text = text if isinstance(text, str) else str(text)
    return (_IN_LINES if lines else _IN_ONE_LINE).sub(_escape, text)


def escape_raw_controls(text: str) -> str:
    """JSON (written with ensure_ascii=False) or TOML (tomli_w's basic strings), with the control
    characters both formats let stand raw inside a string written as \\uXXXX: the same values
    read back, but `cat` or `tail` of the file obeys nothing."""
    return _RAW_IN_STRINGS.sub(lambda m: f"\\u{ord(m.group()):04x}", text)
