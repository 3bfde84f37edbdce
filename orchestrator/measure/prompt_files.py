"""Prompt files as users bring them: orch's own JSONL, MT-Bench's question.jsonl, SPEED-Bench's
parquet splits and HumanEval's JSONL (plain or gzipped), each read as hostile input.

A file's format is the scenario's `format`, or else recognised from its columns (the first
line's keys in JSONL):

    turns + sub_category  -> speed-bench  (question_id, category, sub_category, turns)
    turns                 -> mt-bench     (question_id, category, turns)
    task_id + prompt      -> humaneval    (task_id, prompt)
    prompt                -> jsonl        (id, prompt; category and sub_category optional)

Anything wrong in a file is one PromptFileError naming the file, the line or row, the column
and the fix; nothing here returns a partial set.
"""

from __future__ import annotations

import gzip
import io
import json
import stat
import zlib
from dataclasses import dataclass
from pathlib import Path

MAX_ID_CHARS = 200  # ids are never paths, but they fill every request row and table
SUFFIXES = (".jsonl.gz", ".jsonl", ".parquet")  # the files orch reads, longest first
MAX_TEXT_BYTES = 512 << 20  # a file (after gunzip) larger than this is refused, not read into memory


class PromptFileError(ValueError):
    pass


@dataclass(frozen=True)
class Item:
    """One prompt as a file holds it, before it joins a named set."""
    id: str
    text: str
    category: str | None = None
    sub_category: str | None = None


@dataclass(frozen=True)
class Format:
    name: str
    id: str  # the column that names a prompt ("" for none: the line or row number)
    text: str  # the prompt's own column, or "turns" for a list of user turns
    category: str | None  # the category column; None: `fixed_category` for every row
    required: tuple[str, ...]
    fix: str  # what one valid row looks like, for the messages
    fixed_category: str | None = None
    id_required: bool = True


FORMATS = {
    "jsonl": Format("jsonl", "id", "prompt", "category", ("prompt",),
                    'write each line as {"id": "q1", "prompt": "..."}',
                    id_required=False),
    "mt-bench": Format("mt-bench", "question_id", "turns", "category", ("question_id", "category", "turns"),
                       'MT-Bench lines are {"question_id": 81, "category": "writing", "turns": ["..."]}'),
    "speed-bench": Format("speed-bench", "question_id", "turns", "category",
                          ("question_id", "category", "sub_category", "turns"),
                          "SPEED-Bench rows have question_id, category, sub_category (strings) and turns "
                          "(a list of strings)"),
    # HumanEval's tasks are code to complete, a category of their own.
    "humaneval": Format("humaneval", "task_id", "prompt", None, ("task_id", "prompt"),
                        'HumanEval lines are {"task_id": "HumanEval/0", "prompt": "def f(...):\\n"}',
                        fixed_category="code-completion"),
}


def recognise(columns) -> Format:
    """The format whose columns these are; orch's own JSONL when none matches (its message then
    names the missing "prompt")."""
    cols = set(columns)
    if "turns" in cols:
        return FORMATS["speed-bench" if "sub_category" in cols else "mt-bench"]
    if {"task_id", "prompt"} <= cols:
        return FORMATS["humaneval"]
    return FORMATS["jsonl"]


def read_file(path: Path, fmt: str | None, turns: str) -> list[Item]:
    """Every item of a .jsonl, .jsonl.gz or .parquet file, checked; `turns`: "first" or "all"."""
    suffixes = "".join(path.suffixes[-2:]) if path.suffix == ".gz" else path.suffix
    if suffixes == ".parquet":
        return _parquet(path, fmt, turns)
    if suffixes in (".jsonl", ".jsonl.gz"):
        return _jsonl(path, fmt, turns)
    raise PromptFileError(f"{shown(path)}: orch reads .jsonl, .jsonl.gz and .parquet prompt files; "
                          "convert it or rename it if it is one of them")


# ---------------------------------------------------------------- bytes


def _check_file(path: Path) -> None:
    """A regular file of at most MAX_TEXT_BYTES: a device or a FIFO (st_size 0) would be read
    without end, and a folder named like a prompt file cannot be read at all."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise PromptFileError(f"prompt file {shown(path)} does not exist; relative paths start at the "
                              "scenario file's folder")
    except OSError as exc:  # no permission on a folder above it, a symlink loop, a file as a folder
        raise PromptFileError(f"{shown(path)}: cannot read it ({exc.strerror}); pass a readable .jsonl or .parquet file")
    except ValueError as exc:  # a NUL character in the name
        raise PromptFileError(f"{shown(path)}: cannot read it ({exc}); fix the file name")
    if stat.S_ISDIR(st.st_mode):
        raise PromptFileError(f"{shown(path)}: cannot read it (Is a directory); pass a readable .jsonl or .parquet file")
    if not stat.S_ISREG(st.st_mode):
        raise PromptFileError(f"{shown(path)}: not a regular file (a device, pipe or socket); pass a .jsonl or "
                              ".parquet file")
    if st.st_size > MAX_TEXT_BYTES:
        raise PromptFileError(f"{shown(path)}: {st.st_size >> 20} MiB, more than the {MAX_TEXT_BYTES >> 20} MiB "
                              "orch reads; sample the prompts you need into a smaller file")


def _read_bytes(path: Path) -> bytes:
    _check_file(path)
    try:
        with path.open("rb") as f:
            data = f.read(MAX_TEXT_BYTES + 1)  # bounded, should the file grow after the check
    except OSError as exc:  # no permission
        raise PromptFileError(f"{shown(path)}: cannot read it ({exc.strerror}); pass a readable .jsonl or .parquet file")
    if path.suffix != ".gz":
        return data
    # gzip's own reader: every member of a multi-member file, a truncated stream or trailing
    # bytes refused; read with a bound, since a small gzip can expand to gigabytes.
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(data)) as f:
            out = f.read(MAX_TEXT_BYTES + 1)
    except EOFError:
        raise PromptFileError(f"{shown(path)}: the gzip stream ends early (a truncated file); download it again")
    except (OSError, zlib.error) as exc:  # BadGzipFile is an OSError
        raise PromptFileError(f"{shown(path)}: not a gzip file ({exc}); gunzip it yourself or rename it")
    if len(out) > MAX_TEXT_BYTES:
        raise PromptFileError(f"{shown(path)}: expands past {MAX_TEXT_BYTES >> 20} MiB; sample the prompts "
                              "you need into a smaller file")
    return out


def read_text(path: Path) -> str:
    data = _read_bytes(path)
    try:
        return data.decode("utf-8").removeprefix("\ufeff")  # a byte-order mark is still UTF-8
    except UnicodeDecodeError as exc:
        raise PromptFileError(f"{shown(path)}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset "
                              f"{exc.start}); save it as UTF-8")


# ---------------------------------------------------------------- JSONL


def _jsonl(path: Path, fmt: str | None, turns: str) -> list[Item]:
    items: list[Item] = []
    first_line: dict[str, int] = {}
    form = FORMATS[fmt] if fmt else None
    # JSONL lines end at \n only: str.splitlines would also split at U+2028 inside a prompt.
    for n, line in enumerate(read_text(path).split("\n"), 1):
        if not line.strip():
            continue
        where = f"{shown(path)}:{n}"
        obj = _json_object(line, where, form)
        form = form or recognise(obj)
        items.append(parse_row(obj, form, where, n, turns))
        _first(first_line, items[-1].id, n, where, "line")
    if not items:
        raise PromptFileError(f"{shown(path)} holds no prompts; {(form or FORMATS['jsonl']).fix}")
    return items


def _json_object(line: str, where: str, form: Format | None) -> dict:
    fix = (form or FORMATS["jsonl"]).fix
    try:
        obj = json.loads(line)
    except RecursionError:
        raise PromptFileError(f"{where}: JSON nested too deeply; {fix}")
    except ValueError as exc:  # JSONDecodeError, and integers past Python's digit limit
        raise PromptFileError(f"{where}: not valid JSON ({str(exc).splitlines()[0]}); {fix}")
    if not isinstance(obj, dict):
        raise PromptFileError(f"{where}: got {got(obj)}, not a JSON object; {fix}")
    return obj


# ---------------------------------------------------------------- parquet


def _parquet(path: Path, fmt: str | None, turns: str) -> list[Item]:
    table = _parquet_table(path)
    form = FORMATS[fmt] if fmt else recognise(table.column_names)
    missing = [c for c in form.required if c not in table.column_names]
    if missing:
        raise PromptFileError(f"{shown(path)}: no column {', '.join(missing)} ({form.name} format); {form.fix}")
    if table.num_rows == 0:
        raise PromptFileError(f"{shown(path)}: {form.name} columns but no rows (an empty split); point at a "
                              "split file that holds prompts")
    keep = [c for c in (form.id, form.text, form.category, "sub_category") if c and c in table.column_names]
    items: list[Item] = []
    first_row: dict[str, int] = {}
    text_bytes, n = 0, 0
    # A batch at a time, the text counted as it is decoded: a few MB of dictionary-encoded
    # parquet can hold gigabytes of strings.
    for batch in table.select(keep).to_batches(max_chunksize=1024):
        for row in batch.to_pylist():  # Arrow's own values: lists, str, int, None; never numpy
            n += 1
            where = f"{shown(path)} row {n}"
            items.append(parse_row(row, form, where, n, turns, "row"))
            _first(first_row, items[-1].id, n, where, "row")
            text_bytes += len(items[-1].text)
            if text_bytes > MAX_TEXT_BYTES:
                raise PromptFileError(f"{shown(path)}: its prompts pass {MAX_TEXT_BYTES >> 20} MiB of text by row {n}; "
                                      "sample the prompts you need into a smaller file")
    return items


def _first(seen: dict[str, int], pid: str, n: int, where: str, unit: str) -> None:
    """Results tell prompts apart by (set, id): an id used twice is refused where it repeats."""
    if pid in seen:
        raise PromptFileError(f"{where}: id {pid!r} already used on {unit} {seen[pid]}; give each prompt its own id")
    seen[pid] = n


def _parquet_table(path: Path):
    import pyarrow as pa  # pandas' parquet engine; imported here so JSONL runs never load it
    import pyarrow.parquet as pq

    _check_file(path)  # the same size, existence and file-type checks, before Arrow opens it
    try:
        return pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise PromptFileError(f"{shown(path)}: not a readable parquet file ({first[:200]}); download the split again")


# ---------------------------------------------------------------- one row


def parse_row(obj: dict, form: Format, where: str, n: int, turns: str, unit: str = "line") -> Item:
    for col in form.required:
        if col not in obj:
            raise PromptFileError(f'{where}: no "{col}" key; {form.fix}')
    pid = _item_id(obj.get(form.id, None if form.id_required else n), form, where)
    text = _turns(obj[form.text], where, turns, unit) if form.text == "turns" else \
        _text(obj[form.text], form.text, where, unit)
    category = form.fixed_category if form.category is None else _label(obj.get(form.category), form.category, where)
    return Item(pid, text, category, _label(obj.get("sub_category"), "sub_category", where))


def _text(text, col: str, where: str, unit: str) -> str:
    if not isinstance(text, str):
        raise PromptFileError(f'{where}: "{col}" must be a string (got {got(text)}); put the text in quotes')
    if not text.strip():
        raise PromptFileError(f'{where}: "{col}" is empty; give it some text or remove the {unit}')
    return encodable(text, col, where)


def _turns(value, where: str, turns: str, unit: str) -> str:
    """The first user turn, or with turns = "all" every turn, joined by a blank line into one
    message: orch sends one request per item and never feeds the model's answer back."""
    if not isinstance(value, list):
        raise PromptFileError(f'{where}: "turns" must be a list of strings (got {got(value)}); '
                              'write it as ["first turn", "second turn"]')
    if not value:
        raise PromptFileError(f'{where}: "turns" is empty; give the item at least one turn or remove the {unit}')
    texts = [_text(t, f"turns[{i}]", where, unit) for i, t in enumerate(value)]
    return texts[0] if turns == "first" else "\n\n".join(texts)


def _label(value, col: str, where: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise PromptFileError(f'{where}: "{col}" must be a string (got {got(value)}); put it in quotes or '
                              f'leave "{col}" out')
    if not value.strip() or len(value) > MAX_ID_CHARS:
        raise PromptFileError(f'{where}: "{col}" has {len(value.strip())} characters; use 1 to {MAX_ID_CHARS}')
    return printable(encodable(value, col, where), col, where)


def _item_id(pid, form: Format, where: str) -> str:
    # bool is an int subclass, and 1.0 would read as a different id than 1: refuse both.
    if isinstance(pid, bool) or not isinstance(pid, (str, int)):
        lead = f'"{form.id}" must be a string or an integer (got {got(pid)})'
        fix = 'use e.g. "id": "q1", or leave it out to use the line number' if not form.id_required \
            else f"give every row its {form.id}"
        raise PromptFileError(f"{where}: {lead}; {fix}")
    pid = str(pid)
    if not 0 < len(pid.strip()) <= MAX_ID_CHARS:
        raise PromptFileError(f'{where}: "{form.id}" has {len(pid.strip())} characters; use an id of 1 to {MAX_ID_CHARS}')
    return printable(encodable(pid, form.id, where), form.id, where)


# ---------------------------------------------------------------- message helpers


def shown(path: Path) -> str:
    # A name with a newline or a control character would break the one-line message.
    text = str(path)
    return text if text.isprintable() else ascii(text)


def encodable(text: str, key: str, where: str) -> str:
    # JSON's \ud800 escapes give lone surrogates, which no request or results file can encode.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise PromptFileError(f'{where}: "{key}" holds an unpaired surrogate ({ascii(exc.object[exc.start])}); '
                              "remove it or complete its \\uD8xx\\uDCxx pair")
    return text


def printable(text: str, key: str, where: str) -> str:
    """Labels and ids fill tables, terminals and Markdown: no line break or control character."""
    bad = next((c for c in text if not c.isprintable()), None)
    if bad is not None:
        raise PromptFileError(f'{where}: "{key}" holds {ascii(bad)}, a line break or control character; '
                              "use printable text")
    return text


def got(value) -> str:
    """A JSON value as a message shows it: scalars verbatim, containers by kind."""
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bytes):
        return "bytes"
    try:
        return json.dumps(value)[:40]
    except (TypeError, ValueError):
        return type(value).__name__
