"""Prompt sets: the built-in `seeds` and `repeat` sets, or a JSONL file of {"id", "prompt"} lines."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Prompt:
    set: str
    id: str
    text: str


_PASSAGE = (
    "The scheduler keeps a queue of waiting requests. Each step it admits as many requests as "
    "the key-value cache can hold, runs one forward pass over the batch, and appends one token "
    "to every running sequence. A request leaves the batch when it emits an end-of-sequence "
    "token or reaches its length limit, and its cache blocks return to the free pool."
)

_CODE = '''def summarize(orders):
    total = 0
    count = 0
    for order in orders:
        if order["status"] == "paid":
            total += order["amount"]
            count += 1
    average = total / count if count else 0.0
    return {"total": total, "count": count, "average": average}
'''

SEEDS = [
    ("hello", "hello"),
    ("fizzbuzz-ts", "write fizzbuzz in typescript"),
    ("fibonacci", "Write a Python program to find the nth Fibonacci number using recursion. "
                  "Explain briefly and include code."),
    ("tcp-udp-quic", "Compare TCP, UDP and QUIC: connection set-up, reliability, ordering, "
                     "congestion control, and when you would choose each."),
    ("average-speed", "A car drives 60 km at 30 km/h and then another 60 km at 60 km/h. "
                      "What is its average speed over the whole trip? Show your reasoning."),
    ("counterexample", "Is it true that every number divisible by both 4 and 6 is divisible by 24? "
                       "Answer with a counterexample if it is false."),
    ("tamil-formal", "Correct the grammar of this sentence, then translate it into formal Tamil: "
                     "'Me and him goes to the market every sundays.'"),
    ("ten-word-sentences", "Write a paragraph about the ocean in which every sentence has "
                           "exactly ten words."),
]

# Outputs that copy spans of the prompt: where n-gram lookup drafts well.
REPEAT = [
    ("repeat-passage", f"Text:\n{_PASSAGE}\n\nThe same text, repeated word for word:\n"),
    ("rename-variable", f"Original code:\n```python\n{_CODE}```\n\nThe same code with the variable "
                        "`total` renamed to `running_sum`, everything else unchanged:\n```python\n"),
    ("edit-passage", f"Passage:\n{_PASSAGE}\n\nThe same passage with 'requests' replaced by "
                     "'jobs', all other words unchanged:\n"),
]

BUILTIN = {"seeds": SEEDS, "repeat": REPEAT}


class PromptFileError(ValueError):
    pass


MAX_ID_CHARS = 200  # ids are never paths, but they fill every request row and table
_FIX_LINE = 'write each line as {"id": "q1", "prompt": "..."}'


def load_prompt_set(ref: str, base_dir: Path | None = None) -> list[Prompt]:
    """Resolve a set name or a JSONL path (relative to the scenario file) into prompts."""
    if ref in BUILTIN:
        return [Prompt(ref, pid, text) for pid, text in BUILTIN[ref]]
    path = Path(ref)
    if base_dir is not None and not path.is_absolute():
        path = base_dir / path
    if path.suffix != ".jsonl":
        raise PromptFileError(f"unknown prompt set {ref!r}; use one of {sorted(BUILTIN)} or a .jsonl file")
    return _read_jsonl(path)


def _shown(path: Path) -> str:
    # A name with a newline or a control character would break the one-line message.
    text = str(path)
    return text if text.isprintable() else ascii(text)


def _read_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise PromptFileError(f"prompt file {_shown(path)} does not exist; relative paths start at the "
                              "scenario file's folder")
    except OSError as exc:  # a folder, no permission, a file where a folder should be
        raise PromptFileError(f"{_shown(path)}: cannot read it ({exc.strerror}); pass a readable .jsonl file")
    except ValueError as exc:  # a NUL character in the name
        raise PromptFileError(f"{_shown(path)}: cannot read it ({exc}); fix the file name")
    try:
        return data.decode("utf-8").removeprefix("\ufeff")  # a byte-order mark is still UTF-8
    except UnicodeDecodeError as exc:
        raise PromptFileError(f"{_shown(path)}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset "
                              f"{exc.start}); save it as UTF-8")


def _read_jsonl(path: Path) -> list[Prompt]:
    prompts: list[Prompt] = []
    first_line: dict[str, int] = {}
    # JSONL lines end at \n only: str.splitlines would also split at U+2028 inside a prompt.
    for n, line in enumerate(_read_text(path).split("\n"), 1):
        if not line.strip():
            continue
        where = f"{_shown(path)}:{n}"
        pid, text = _parse_line(line, where, n)
        if pid in first_line:
            raise PromptFileError(f"{where}: id {pid!r} already used on line {first_line[pid]}; "
                                  "give each prompt its own id")
        first_line[pid] = n
        prompts.append(Prompt(path.stem, pid, text))
    if not prompts:
        raise PromptFileError(f"{_shown(path)} holds no prompts; {_FIX_LINE}")
    return prompts


def _parse_line(line: str, where: str, n: int) -> tuple[str, str]:
    """One line's (id, prompt); the id defaults to the line number."""
    try:
        obj = json.loads(line)
    except RecursionError:
        raise PromptFileError(f"{where}: JSON nested too deeply; {_FIX_LINE}")
    except ValueError as exc:  # JSONDecodeError, and integers past Python's digit limit
        raise PromptFileError(f"{where}: not valid JSON ({str(exc).splitlines()[0]}); {_FIX_LINE}")
    if not isinstance(obj, dict):
        raise PromptFileError(f"{where}: got {_got(obj)}, not a JSON object; {_FIX_LINE}")
    if "prompt" not in obj:
        raise PromptFileError(f'{where}: no "prompt" key; {_FIX_LINE}')
    return _prompt_id(obj.get("id", n), where), _prompt_text(obj["prompt"], where)


def _prompt_text(text, where: str) -> str:
    if not isinstance(text, str):
        raise PromptFileError(f'{where}: "prompt" must be a string (got {_got(text)}); put the text in quotes')
    if not text.strip():
        raise PromptFileError(f'{where}: "prompt" is empty; give it some text or remove the line')
    return _encodable(text, "prompt", where)


def _prompt_id(pid, where: str) -> str:
    # bool is an int subclass, and 1.0 would read as a different id than 1: refuse both.
    if isinstance(pid, bool) or not isinstance(pid, (str, int)):
        raise PromptFileError(f'{where}: "id" must be a string or an integer (got {_got(pid)}); '
                              'use e.g. "id": "q1", or leave it out to use the line number')
    pid = str(pid)
    if not 0 < len(pid) <= MAX_ID_CHARS:
        raise PromptFileError(f'{where}: "id" has {len(pid)} characters; use an id of 1 to {MAX_ID_CHARS}')
    return _encodable(pid, "id", where)


def _encodable(text: str, key: str, where: str) -> str:
    # JSON's \ud800 escapes give lone surrogates, which no request or results file can encode.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise PromptFileError(f'{where}: "{key}" holds an unpaired surrogate ({ascii(exc.object[exc.start])}); '
                              "remove it or complete its \\uD8xx\\uDCxx pair")
    return text


def _got(value) -> str:
    """A JSON value as a message shows it: scalars verbatim, containers by kind."""
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    return json.dumps(value)[:40]
