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
import json
import stat
import zlib
from dataclasses import dataclass
from pathlib import Path

from orchestrator.types.scenario import MAX_ID_CHARS  # one bound for ids and set names

SUFFIXES = (".jsonl.gz", ".jsonl", ".parquet")  # the files orch reads, longest first
# What one prompt file may hold (README, "Limits"), each checked before or as it is read, so that
# no file, however small on disk, holds more than these in memory:
MAX_FILE_BYTES = 1 << 30  # the file on disk, and a .gz's text after gunzip (parquet: its columns uncompressed)
MAX_TEXT_BYTES = 512 << 20  # the text of its prompts, decoded (UTF-8 bytes)
MAX_PROMPT_BYTES = 16 << 20  # one prompt: a JSONL line, or the text of one parquet row
MAX_PROMPTS = 100_000  # prompts (lines or rows) in one file


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
    """A regular file of at most MAX_FILE_BYTES: a device or a FIFO (st_size 0) would be read
    without end, and a folder named like a prompt file cannot be read at all."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise PromptFileError(f"prompt file {shown(path)} does not exist; relative paths start at the "
                              "scenario file's folder") from None
    except OSError as exc:  # no permission on a folder above it, a symlink loop, a file as a folder
        raise PromptFileError(f"{shown(path)}: cannot read it ({exc.strerror}); pass a readable .jsonl or .parquet file") from exc
    except ValueError as exc:  # a NUL character in the name
        raise PromptFileError(f"{shown(path)}: cannot read it ({exc}); fix the file name") from exc
    if stat.S_ISDIR(st.st_mode):
        raise PromptFileError(f"{shown(path)}: cannot read it (Is a directory); pass a readable .jsonl or .parquet file")
    if not stat.S_ISREG(st.st_mode):
        raise PromptFileError(f"{shown(path)}: not a regular file (a device, pipe or socket); pass a .jsonl or "
                              ".parquet file")
    if st.st_size > MAX_FILE_BYTES:
        raise PromptFileError(f"{shown(path)}: {st.st_size >> 20} MiB, more than the {MAX_FILE_BYTES >> 20} MiB "
                              "orch reads; sample the prompts you need into a smaller file")


def _lines(path: Path):
    """(line number, offset, bytes) of each line, read a line at a time: no line longer than
    MAX_PROMPT_BYTES and no more than MAX_FILE_BYTES in all (a .gz counted after gunzip, since a
    small gzip can expand to gigabytes) is ever held."""
    _check_file(path)
    gz = path.suffix == ".gz"
    try:
        f = gzip.open(path, "rb") if gz else path.open("rb")
    except OSError as exc:  # no permission
        raise PromptFileError(f"{shown(path)}: cannot read it ({exc.strerror}); pass a readable .jsonl or .parquet file") from exc
    # gzip's own reader: every member of a multi-member file, a truncated stream or trailing
    # bytes refused.
    with f:
        try:
            n = offset = 0
            while line := f.readline(MAX_PROMPT_BYTES + 1):
                n += 1
                if offset + len(line) > MAX_FILE_BYTES:  # a .gz, or a file that grew after the check
                    raise PromptFileError(f"{shown(path)}: expands past {MAX_FILE_BYTES >> 20} MiB; sample the "
                                          "prompts you need into a smaller file")
                if len(line) > MAX_PROMPT_BYTES:
                    raise PromptFileError(f"{shown(path)}:{n}: a line longer than {MAX_PROMPT_BYTES >> 20} MiB, more "
                                          "than one prompt may hold; shorten it or remove the line")
                if not line.endswith(b"\n"):
                    f.read(1)  # the last line: a truncated gzip or trailing bytes show here, before it is parsed
                yield n, offset, line
                offset += len(line)
        except EOFError:
            raise PromptFileError(f"{shown(path)}: the gzip stream ends early (a truncated file); download it again") from None
        except (OSError, zlib.error) as exc:  # BadGzipFile is an OSError
            if not gz and isinstance(exc, OSError):  # zlib.error comes from gunzip alone
                raise PromptFileError(f"{shown(path)}: cannot read it ({exc.strerror}); pass a readable .jsonl or "
                                      ".parquet file") from exc
            raise PromptFileError(f"{shown(path)}: not a gzip file ({exc}); gunzip it yourself or rename it") from exc


def _decode(path: Path, line: bytes, offset: int) -> str:
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PromptFileError(f"{shown(path)}: not UTF-8 text (byte 0x{line[exc.start]:02x} at offset "
                              f"{offset + exc.start}); save it as UTF-8") from exc


def utf8_bytes(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def _too_much(path: Path, unit: str, n: int) -> PromptFileError:
    return PromptFileError(f"{shown(path)}: its prompts pass {MAX_TEXT_BYTES >> 20} MiB of text by {unit} {n}; "
                           "sample the prompts you need into a smaller file")


def _too_many(path: Path, count: str) -> PromptFileError:
    return PromptFileError(f"{shown(path)}: {count}, more than the {MAX_PROMPTS:,} prompts orch reads from one "
                           "file; sample the prompts you need into a smaller file")


# ---------------------------------------------------------------- JSONL


def _jsonl(path: Path, fmt: str | None, turns: str) -> list[Item]:
    items: list[Item] = []
    first_line: dict[str, int] = {}
    form = FORMATS[fmt] if fmt else None
    text_bytes = 0
    # JSONL lines end at \n only: str.splitlines would also split at U+2028 inside a prompt.
    for n, offset, raw in _lines(path):
        line = _decode(path, raw, offset)
        if n == 1:
            line = line.removeprefix("\ufeff")  # a byte-order mark is still UTF-8
        if not line.strip():
            continue
        if len(items) == MAX_PROMPTS:
            raise _too_many(path, f"{MAX_PROMPTS + 1:,} prompts by line {n}")
        where = f"{shown(path)}:{n}"
        obj = _json_object(line, where, form)
        form = form or recognise(obj)
        items.append(parse_row(obj, form, where, n, turns))
        _first(first_line, items[-1].id, n, where, "line")
        text_bytes += utf8_bytes(items[-1].text)
        if text_bytes > MAX_TEXT_BYTES:
            raise _too_much(path, "line", n)
    if not items:
        raise PromptFileError(f"{shown(path)} holds no prompts; {(form or FORMATS['jsonl']).fix}")
    return items


def _json_object(line: str, where: str, form: Format | None) -> dict:
    fix = (form or FORMATS["jsonl"]).fix
    try:
        obj = json.loads(line)
    except RecursionError:
        raise PromptFileError(f"{where}: JSON nested too deeply; {fix}") from None
    except ValueError as exc:  # JSONDecodeError, and integers past Python's digit limit
        raise PromptFileError(f"{where}: not valid JSON ({str(exc).splitlines()[0]}); {fix}") from exc
    if not isinstance(obj, dict):
        raise PromptFileError(f"{where}: got {got(obj)}, not a JSON object; {fix}")
    return obj


# ---------------------------------------------------------------- parquet


def _parquet(path: Path, fmt: str | None, turns: str) -> list[Item]:
    pf, schema = _parquet_file(path)
    form = FORMATS[fmt] if fmt else recognise(schema.names)
    keep = _parquet_columns(path, pf, schema, form)
    _check_unpacked(path, pf, keep)
    _check_text_sizes(path, pf, keep)
    items: list[Item] = []
    first_row: dict[str, int] = {}
    n = 0
    for batch in _batches(path, pf, keep):
        for row in batch.to_pylist():  # Arrow's own values: lists, str, int, None; never numpy
            n += 1
            where = f"{shown(path)} row {n}"
            items.append(parse_row(row, form, where, n, turns, "row"))
            _first(first_row, items[-1].id, n, where, "row")
    return items


def _parquet_columns(path: Path, pf, schema, form: Format) -> list[str]:
    """The columns of `form` that the file has, once it has rows, not too many, and every
    column `form` needs, each of a type that _row_bytes can size."""
    names = schema.names
    missing = [c for c in form.required if c not in names]
    if missing:
        raise PromptFileError(f"{shown(path)}: no column {', '.join(missing)} ({form.name} format); {form.fix}")
    meta = pf.metadata
    if meta.num_rows == 0:
        raise PromptFileError(f"{shown(path)}: {form.name} columns but no rows (an empty split); point at a "
                              "split file that holds prompts")
    if meta.num_rows > MAX_PROMPTS:
        raise _too_many(path, f"{meta.num_rows:,} rows")
    keep = [c for c in (form.id, form.text, form.category, "sub_category") if c and c in names]
    for col in keep:
        _readable_type(schema.field(col).type, col, path)
    return keep


def _check_unpacked(path: Path, pf, keep: list[str]) -> None:
    """The footer's sizes first: what Arrow would decompress of the columns read."""
    meta = pf.metadata
    leaves = [pf.schema.column(i) for i in range(len(pf.schema))]
    mine = [i for i, leaf in enumerate(leaves) if leaf.path.split(".")[0] in keep]
    packed = sum(meta.row_group(g).column(i).total_uncompressed_size
                 for g in range(meta.num_row_groups) for i in mine)
    if packed > MAX_FILE_BYTES:
        raise PromptFileError(f"{shown(path)}: its columns {', '.join(keep)} take {packed >> 20} MiB uncompressed, "
                              f"more than the {MAX_FILE_BYTES >> 20} MiB orch reads; sample the prompts you need into "
                              "a smaller file")


def _check_text_sizes(path: Path, pf, keep: list[str]) -> None:
    """Strings stay dictionary-encoded as Arrow reads them: a few KB of parquet can repeat one long
    string into gigabytes. Every row's decoded size is counted from the dictionary before any
    row becomes Python text, and the whole file's before the first one does."""
    n = text_bytes = 0
    for batch in _batches(path, pf, keep):
        sizes = sum(_row_bytes(batch.column(col), col, path) for col in keep)
        over = (sizes > MAX_PROMPT_BYTES).nonzero()[0]
        if len(over):
            row = n + int(over[0]) + 1
            raise PromptFileError(f"{shown(path)} row {row}: {int(sizes[over[0]]) >> 20} MiB of text, more than one "
                                  f"prompt may hold ({MAX_PROMPT_BYTES >> 20} MiB); shorten it or remove the row")
        total = text_bytes + sizes.cumsum()
        past = (total > MAX_TEXT_BYTES).nonzero()[0]
        if len(past):
            raise _too_much(path, "row", n + int(past[0]) + 1)
        n, text_bytes = n + batch.num_rows, int(total[-1]) if len(total) else text_bytes


def _batches(path: Path, pf, columns: list[str]):
    import pyarrow as pa

    try:
        yield from pf.iter_batches(batch_size=1024, columns=columns, use_threads=False)
    except (pa.ArrowException, OSError) as exc:
        raise _unreadable(path, exc) from exc


def _readable_type(t, col: str, path: Path) -> None:
    """Types whose rows _row_bytes can size from Arrow's buffers; any other is refused unread."""
    import pyarrow as pa

    inner = t.value_type if pa.types.is_dictionary(t) else t.value_type if (
        pa.types.is_list(t) or pa.types.is_large_list(t)) else None
    if inner is not None:
        return _readable_type(inner, col, path)
    if pa.types.is_null(t) or pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t) \
            or pa.types.is_large_binary(t) or _width(t):
        return
    raise PromptFileError(f'{shown(path)}: column "{col}" holds {t}, which no prompt file has; write it as '
                          "strings (or a list of strings for turns)")


def _width(t) -> int:
    """A fixed-width type's bits (ints, floats, bools, timestamps, decimals); 0 for any other."""
    try:
        return t.bit_width
    except (AttributeError, ValueError):  # "Non-fixed width type"
        return 0


def _row_bytes(arr, col: str, path: Path):
    """Each row's decoded size in bytes (a numpy array), from Arrow's buffers alone: strings by
    their lengths (a dictionary's values once, then by index), lists by their elements',
    fixed-width values by their width."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    t = arr.type
    if pa.types.is_dictionary(t):
        per_value = np.append(_row_bytes(arr.dictionary, col, path), 0)  # a null index: the 0 at the end
        return per_value[pc.fill_null(arr.indices, len(arr.dictionary)).to_numpy(zero_copy_only=False)]
    if pa.types.is_null(t):
        return np.zeros(len(arr), np.int64)
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return pc.fill_null(pc.binary_length(arr), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        sums = np.concatenate([[0], np.cumsum(_row_bytes(arr.values, col, path))])
        offsets = arr.offsets.to_numpy(zero_copy_only=False)
        return sums[offsets[1:]] - sums[offsets[:-1]]
    if _width(t):
        return np.full(len(arr), max(1, _width(t) // 8), np.int64)
    raise PromptFileError(f'{shown(path)}: column "{col}" holds {t}, which no prompt file has; write it as '
                          "strings (or a list of strings for turns)")


def _first(seen: dict[str, int], pid: str, n: int, where: str, unit: str) -> None:
    """Results tell prompts apart by (set, id): an id used twice is refused where it repeats."""
    if pid in seen:
        raise PromptFileError(f"{where}: id {pid!r} already used on {unit} {seen[pid]}; give each prompt its own id")
    seen[pid] = n


def _unreadable(path: Path, exc: Exception) -> PromptFileError:
    first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return PromptFileError(f"{shown(path)}: not a readable parquet file ({first[:200]}); download the split again")


def _parquet_file(path: Path):
    import pyarrow as pa  # pandas' parquet engine; imported here so JSONL runs never load it
    import pyarrow.parquet as pq

    _check_file(path)  # the same size, existence and file-type checks, before Arrow opens it
    try:
        pf = pq.ParquetFile(path)
        leaves = [pf.schema.column(i) for i in range(len(pf.schema))]
        strings = [leaf.path for leaf in leaves if leaf.physical_type == "BYTE_ARRAY"]
        # Opened again with every string column read as a dictionary (see _check_text_sizes).
        return (pq.ParquetFile(path, read_dictionary=strings) if strings else pf), pf.schema_arrow
    except (pa.ArrowException, OSError) as exc:
        raise _unreadable(path, exc) from exc


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
                              "remove it or complete its \\uD8xx\\uDCxx pair") from exc
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
