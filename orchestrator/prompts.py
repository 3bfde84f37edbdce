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


def load_prompt_set(ref: str, base_dir: Path | None = None) -> list[Prompt]:
    """Resolve a set name or a JSONL path (relative to the scenario file) into prompts."""
    if ref in BUILTIN:
        return [Prompt(ref, pid, text) for pid, text in BUILTIN[ref]]
    path = Path(ref)
    if base_dir is not None and not path.is_absolute():
        path = base_dir / path
    if path.suffix != ".jsonl":
        raise PromptFileError(f"unknown prompt set {ref!r}; use one of {sorted(BUILTIN)} or a .jsonl file")
    if not path.is_file():
        raise PromptFileError(f"prompt file {path} does not exist")
    return _read_jsonl(path)


def _read_jsonl(path: Path) -> list[Prompt]:
    prompts = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            text = obj["prompt"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise PromptFileError(f"{path}:{n}: each line must be a JSON object with a \"prompt\" string")
        prompts.append(Prompt(path.stem, str(obj.get("id", n)), text))
    if not prompts:
        raise PromptFileError(f"{path} holds no prompts")
    return prompts
