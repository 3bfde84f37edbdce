from orchestrator.analysis import lossless
from orchestrator.analysis.lossless import per_cell

from .support.runs import requests_of


def check_texts(rows):
    return lossless.check_texts(requests_of(rows))


def rec(n_spec, text, prompt="p1", repeat=0, chunks=None):
    chars = chunks or [len(text)]
    cum, total = [], 0
    for _ in chars:
        total += 1
        cum.append(total)
    return {"cell_id": f"e-n{n_spec}", "engine": "e", "method": "ngram-mod" if n_spec else "none", "n_spec": n_spec, "phase": "measured", "ok": True,
            "key": f"{prompt}/{repeat}", "concurrency": 1, "prompt_set": "s", "prompt_id": prompt, "repeat": repeat,
            "text": text, "chunk_chars": chars, "chunk_tokens": cum, "chunks": len(chars),
            "completion_tokens": len(chars)}


def test_identical_and_divergent_outputs():
    rows = [rec(0, "def fib(n): return n", "p1"), rec(4, "def fib(n): return n", "p1"),
            rec(0, "abcdefgh", "p2", chunks=[2, 2, 2, 2]), rec(4, "abcdXfgh", "p2", chunks=[2, 2, 2, 2])]
    c = check_texts(rows).set_index("prompt")
    assert bool(c.loc["s/p1", "identical"]) is True
    assert bool(c.loc["s/p2", "identical"]) is False
    assert c.loc["s/p2", "first_diff_char"] == 4 and c.loc["s/p2", "first_diff_token"] == 2
    assert c.loc["s/p2", "baseline_snippet"] == "abcdefgh" and c.loc["s/p2", "speculative_snippet"] == "abcdXfgh"
    cells = per_cell(check_texts(rows))
    assert cells.to_dict("records") == [{"cell_id": "e-n4", "engine": "e", "n_spec": 4, "checked": 2,
                                         "identical": 1, "share_identical": 0.5}]


def test_a_shorter_output_differs_where_it_ends():
    c = check_texts([rec(0, "abcdef"), rec(4, "abc")])
    assert c.loc[0, "first_diff_char"] == 3 and not c.loc[0, "identical"]


def test_only_same_prompt_and_repeat_are_checked():
    c = check_texts([rec(0, "aaa", repeat=0), rec(4, "bbb", repeat=1)])
    assert c.empty


def test_token_position_is_unknown_without_chunk_records():
    a, b = rec(0, "abcdef"), rec(4, "abXdef")
    for r in (a, b):
        r.pop("chunk_chars"), r.pop("chunk_tokens")
    assert check_texts([a, b])["first_diff_token"].isna().all()
