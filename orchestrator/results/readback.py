"""A run folder's records read back (their types: orchestrator/types/records.py), as hostile input.

requests.jsonl and cells.jsonl are read line by line into typed records. A line that is not
JSON, not an object, or lacks (or mistypes) a field the analysis needs is skipped. A request
whose identity is fine but whose measurements are not (a negative token count, a rate that is
a string or NaN) is kept as a failed request, so that it is still counted. Each file's skips
end in one warning that names the file and the line numbers, and says how many rows were kept.

environment.json that is not a JSON object is read as empty (a warning, no machine details);
its fields that the report reads and that have the wrong type are dropped with a warning.

Files are read a line at a time, never whole: a line longer than MAX_LINE is skipped (read
through in blocks, never held), as are the lines of binary junk (not UTF-8), each counted in the
same warning; memory stays within a few MAX_LINE whatever the file holds.

Nothing here raises on bad content; only an unreadable file is a ResultsError.
"""

from __future__ import annotations

import errno
import json
from pathlib import Path
from typing import Any, Iterator, TypeVar

from pydantic import ValidationError
from pydantic_core import ErrorDetails

from orchestrator.common.errors import ResultsError
from orchestrator.types.records import Environment, Record

DETAILS = 5  # problems described in a warning; the rest are counted, with their line numbers
LINES = 20  # line numbers listed for the rest
# Bytes of one line read back. orch's longest: a request whose text is at most 512 Ki characters
# (measure/driver.py's MAX_TEXT_CHARS), under 4 MiB as JSON even if every character is escaped.
MAX_LINE = 8 << 20
MAX_FILE = 16 << 20  # environment.json, scenario.toml: read whole, so bounded


R = TypeVar("R", bound=Record)


def read_records(path: Path, model: type[R]) -> tuple[list[R], list[str]]:
    """Every valid (or salvaged) record of a .jsonl file, in order, and the warnings."""
    path = Path(path)
    if not path.is_file():
        return [], []
    records: list[R] = []
    skipped, salvaged = _Tally(), _Tally()
    truncated: tuple[int, str] | None = None  # the last line that did not parse, and why
    total = 0
    for n, raw in lines_of(path):
        if truncated is not None:  # the line that did not parse was not the last: it is corrupt
            skipped.append(truncated)
            truncated = None
        total += 1
        if raw is None:
            skipped.append((n, f"longer than {MAX_LINE >> 20} MiB, not a line orch writes"))
            continue
        obj, problem = _parse(raw)
        if problem is not None:
            truncated = (n, problem)  # what a kill mid-write leaves, if it is the last line
            continue
        rec, problems, skip = validate(model, obj)
        if rec is not None:
            records.append(rec)
            if problems:
                salvaged.append((n, "; ".join(problems)))
        if skip:
            skipped.append((n, "; ".join(problems)))
    truncated_line: int | None = None
    if truncated is not None:
        truncated_line, total = truncated[0], total - 1  # not counted with the corrupt lines
    return records, _read_notes(path, model, len(records), total, skipped, salvaged, truncated_line)


def _read_notes(path: Path, model: type[Record], kept: int, total: int, skipped: "_Tally", salvaged: "_Tally",
                truncated: int | None) -> list[str]:
    """read_records' warnings: the lines skipped, the rows salvaged, a truncated last line."""
    notes = []
    if skipped:
        note = f"{path}: skipped {len(skipped)} of {total} lines ({_listing(skipped)}); kept {kept} rows"
        if salvaged:
            note += f", {len(salvaged)} of them {model.KEPT} ({_listing(salvaged)})"
        notes.append(note)
    elif salvaged:
        notes.append(f"{path}: kept {len(salvaged)} of {kept} rows {model.KEPT} ({_listing(salvaged)})")
    if truncated is not None:
        notes.append(f"{path}:{truncated}: ignoring a truncated last line; kept {kept} rows")
    return notes


def validate(model: type[R], obj: Any, when: str = "read back") -> tuple[R | None, list[str], bool]:
    """(record or None, problems, skipped). A record with invalid optional fields is kept
    without them and salvaged; one with an invalid required field is skipped."""
    if not isinstance(obj, dict):
        return None, [f"not a JSON object ({type(obj).__name__})"], True
    data, problems, required = dict(obj), [], model.required()
    for _ in range(len(model.model_fields) + 1):
        try:
            rec = model.model_validate(data)
        except ValidationError as exc:
            bad = _problems(exc, data)
            missing = [f for f, what in bad.items() if what == "missing"]
            problems += [f"missing {', '.join(missing)}"] if missing else []
            problems += [what for what in bad.values() if what != "missing"]
            if any(field not in model.model_fields or field in required for field in bad):
                return None, problems, True
            for field in bad:
                data.pop(field, None)
            continue
        if problems:
            rec.salvage(problems, when)
        return rec, problems, False
    return None, problems, True


def read_environment(path: Path) -> tuple[dict[str, Any], list[str]]:
    """environment.json as a dict, without any field the report could not read; and the warnings."""
    path = Path(path)
    if not path.is_file():
        return {}, []
    try:
        env = json.loads(read_bounded(path).decode("utf-8"))
    except (OSError, ValueError, RecursionError) as exc:
        why = getattr(exc, "strerror", None) or f"not valid JSON ({_json_error(exc)})"
        return {}, [f"{path}: {why}; the report goes on without machine details"]
    if not isinstance(env, dict):
        return {}, [f"{path}: not a JSON object ({type(env).__name__}); the report goes on without machine details"]
    problems = []
    for _ in range(64):
        try:
            Environment.model_validate(env)
            break
        except ValidationError as exc:
            for err in exc.errors():
                problems.append(_describe(err, env))
                _drop(env, err["loc"])
    else:
        return {}, [f"{path}: {'; '.join(problems[:DETAILS])}; the report goes on without machine details"]
    if problems:
        return env, [f"{path}: ignored invalid fields ({'; '.join(problems[:DETAILS])}"
                     + (f"; and {len(problems) - DETAILS} more" if len(problems) > DETAILS else "")
                     + "); the report goes on without them"]
    return env, []


class _Tally:
    """A file's problem lines, as many as a warning shows (the first DETAILS described, LINES
    more numbered), and how many there were: a junk file of a billion lines holds no more."""

    def __init__(self) -> None:
        self.items: list[tuple[int, str]] = []
        self.count = 0

    def append(self, item: tuple[int, str]) -> None:
        self.count += 1
        if len(self.items) < DETAILS + LINES:
            self.items.append(item)

    def __len__(self) -> int:
        return self.count


def lines_of(path: Path) -> Iterator[tuple[int, bytes | None]]:
    """A file's non-blank lines and their numbers (from 1), read one at a time; a line longer
    than MAX_LINE comes as None, read through in blocks and never held."""
    try:
        f = open(path, "rb")
    except OSError as exc:
        raise ResultsError(f"cannot read {path}: {exc.strerror}") from exc
    with f:
        n = 0
        while True:
            try:
                raw = f.readline(MAX_LINE + 1)
                n += 1
                if len(raw) > MAX_LINE and not raw.endswith(b"\n"):
                    while raw and not raw.endswith(b"\n"):
                        raw = f.readline(1 << 20)
                    yield n, None
                    continue
            except OSError as exc:
                raise ResultsError(f"cannot read {path}: {exc.strerror}") from exc
            if not raw:
                return
            if raw.strip():
                yield n, raw


def read_bounded(path: Path, limit: int = MAX_FILE) -> bytes:
    """A small file read whole; OSError (EFBIG) if it is larger than `limit`, which no file orch
    writes is."""
    with open(path, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise OSError(errno.EFBIG, f"larger than {limit >> 20 or 1} MiB, not a file orch writes", str(path))
    return data


def _parse(raw: bytes) -> tuple[Any, str | None]:
    try:
        return json.loads(raw.decode("utf-8")), None
    except UnicodeDecodeError:
        return None, "not UTF-8 text"
    except (ValueError, RecursionError) as exc:
        return None, f"not JSON ({_json_error(exc)})"


def _json_error(exc: BaseException) -> str:
    if isinstance(exc, json.JSONDecodeError):
        return f"{exc.msg} at column {exc.colno}" if exc.lineno == 1 else f"{exc.msg} at line {exc.lineno}"
    if isinstance(exc, UnicodeDecodeError):
        return "not UTF-8 text"
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    return str(exc)


def _problems(exc: ValidationError, data: dict[str, Any]) -> dict[str, str]:
    """The first problem of each top-level field."""
    out: dict[str, str] = {}
    for err in exc.errors():
        field = str(err["loc"][0]) if err["loc"] else "(record)"
        out.setdefault(field, _describe(err, data))
    return out


def _describe(err: ErrorDetails, data: dict[str, Any]) -> str:
    loc = err["loc"]
    name = ".".join(str(p) for p in loc) or "(record)"
    if err["type"] == "missing":
        return "missing" if len(loc) == 1 else f"missing {name}"
    value: Any = data
    for part in loc:
        try:
            value = value[part]
        except (KeyError, IndexError, TypeError):
            value = err.get("input")
            break
    msg = err["msg"].removeprefix("Value error, ")
    return f"{name} {_short(value)}: {msg[:1].lower() + msg[1:]}"


def _short(value: Any) -> str:
    text = json.dumps(value, allow_nan=True, ensure_ascii=False, default=str)
    return text if len(text) <= 40 else text[:37] + "..."


def _drop(obj: Any, loc: tuple[int | str, ...]) -> None:
    """Remove the deepest dict key on an error's path (a list's bad element takes the list)."""
    parent, key = None, None
    for part in loc:
        if not isinstance(obj, dict) or part not in obj:
            break
        parent, key, obj = obj, part, obj[part]
    if parent is not None:
        parent.pop(key)


def _listing(tally: _Tally) -> str:
    items = tally.items
    shown = "; ".join(f"line {n}: {what}" for n, what in items[:DETAILS])
    rest, more = [n for n, _ in items[DETAILS:]], tally.count - DETAILS
    if more <= 0:
        return shown
    lines = ", ".join(map(str, rest[:LINES])) + (f" and {more - LINES} more" if more > LINES else "")
    return f"{shown}; and {more} more at lines {lines}"
