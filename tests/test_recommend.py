"""What to run: the depth to deploy, on constructed records whose answer is known."""

import pandas as pd
import pytest
from click.testing import CliRunner

from orchestrator.analysis.pairs import pair_table
from orchestrator.analysis.recommend import format_advice, what_to_run
from orchestrator.analysis.summary import measured_frame, summarize
from orchestrator.cli import cli

from .support.runs import cells_of, make_run, requests_of, timed


def run_of(speedups: dict, prompts: int = 10, wobble: dict | None = None):
    """Each depth's pairs at its speedup; `wobble[n]` alternates that depth's pairs +- that share."""
    rows = []
    for i in range(prompts):
        tokens, base_s = 20 * (i + 1), 1.0 + i
        rows.append(timed("e-n0", 0, f"p{i}", tokens, base_s))
        for n, s in speedups.items():
            w = 1 + (wobble or {}).get(n, 0.0) * (1 if i % 2 else -1)
            rows.append(timed(f"e-n{n}", n, f"p{i}", tokens, base_s / (s * w)))
    cells = [{"cell_id": c, "engine": "e", "method": "ngram-mod" if n else "none", "n_spec": n, "status": "ok"}
             for c, n in {r["cell_id"]: r["n_spec"] for r in rows}.items()]
    return rows, cells


def advise(rows, cells, starts=None):
    reqs, cell_recs = requests_of(rows), cells_of(cells)
    starts = starts or {"e": len(cells)}
    return what_to_run(summarize(reqs, cell_recs), pair_table(measured_frame(reqs), cell_recs), starts)


def test_the_fastest_depth_when_it_is_told_apart_from_the_smaller_ones():
    (a,) = advise(*run_of({2: 1.2, 4: 1.5, 8: 1.8})).itertuples(index=False)
    assert (a.n_spec, a.basis, a.server_starts) == (8, "measured", 4)
    assert a.speedup == pytest.approx(1.8)
    assert a.why == ("the fastest depth shown faster; told apart from n_spec 2, 4 pair by pair (each comparison "
                     "at 98.3%: 3 depths judged together)")
    assert (a.best, a.indistinct) == (8, "8")


def test_a_smaller_depth_that_cannot_be_told_apart_from_the_fastest_wins():
    # n8 is 1.52x on average but +-5% from prompt to prompt: n4's steady 1.5x cannot be told from it.
    (a,) = advise(*run_of({2: 1.2, 4: 1.5, 8: 1.52}, wobble={8: 0.05})).itertuples(index=False)
    assert a.n_spec == 4
    assert a.why.startswith("the fastest, n_spec 8 at 1.52x [") and a.why.endswith(
        "cannot be told apart from n_spec 4 pair by pair; n_spec 4 is the smallest of those shown faster than n_spec 0, "
        "and drafts least; told apart from n_spec 2 pair by pair (each comparison at 98.3%: 3 depths judged together)")
    assert (a.best, a.indistinct) == (8, "4, 8")


def test_no_faster_depth_means_run_without_speculation():
    (a,) = advise(*run_of({4: 1.0, 8: 0.8})).itertuples(index=False)
    assert (a.n_spec, a.method) == (0, "none") and pd.isna(a.speedup)
    assert a.why == ("no depth was shown to be faster; the best, n_spec 4, was 1.00x [0.99-1.01] (no clear difference) "
                     "(each comparison at 97.5%: 2 depths judged together); more blocks or prompts narrow it")


def test_one_prompt_repeated_gives_no_verdict_and_says_what_to_raise():
    # Repeats of one prompt say nothing about prompts in general: no interval, not decided.
    rows, cells = run_of({4: 2.0}, prompts=1)
    rows += [dict(r, repeat=k, key=r["key"].replace("/r0/", f"/r{k}/")) for k in (1, 2, 3, 4, 5) for r in rows[:2]]
    (a,) = advise(rows, cells).itertuples(index=False)
    assert a.n_spec == 0 and a.why == ("not decided: the best, n_spec 4 at 2.00x, has no interval (fewer than 2 "
                                       "prompts paired); add prompts to the set")


def test_what_to_run_opens_the_report(tmp_path):
    rows, _ = run_of({2: 1.2, 4: 1.5, 8: 1.8})
    run = make_run(tmp_path / "run", rows, {"e": {"kind": "llama-server", "model": "m"}})
    result = CliRunner().invoke(cli, ["report", str(run)])
    assert result.exit_code == 0, result.output
    line = ("e at c=1 on seeds: ngram-mod n_spec 8, 1.80x [1.77-1.83] (measured, 4 server starts): the fastest "
            "depth shown faster; told apart from n_spec 2, 4 pair by pair (each comparison at 98.3%: 3 depths judged "
            "together)")
    assert result.output.splitlines()[result.output.splitlines().index("what to run (typical paired speedup):") + 1] == line
    md = (run / "report" / "summary.md").read_text().splitlines()
    assert md[4] == "### What to run" and line in md
    zero, cells = run_of({4: 1.0}, prompts=6)
    zero = [timed("e-n4", 4, r["prompt_id"], 0, 1.0) if r["n_spec"] else r for r in zero]  # n4: 0 tokens each
    assert format_advice(advise(zero, cells, {"e": 2})).splitlines()[1] == (
        "e at c=1 on seeds: no speculation (measured, 2 server starts): no speculative request paired with its "
        "n_spec 0 twin")
    page = (run / "report" / "index.html").read_text()
    assert page.index('id="what-to-run"') < page.index("How it was measured")
    assert format_advice(advise(*run_of({}))) == ""  # a baseline alone: nothing to advise


def test_depths_with_no_request_in_common_are_not_called_equal():
    # n2 answered p0-p5 only, n8 p6-p11 only: both faster, nothing to compare them on.
    rows, cells = run_of({2: 1.1, 8: 3.0}, prompts=12)
    rows = [r for r in rows if not (r["n_spec"] == 2 and r["prompt_id"] in {f"p{i}" for i in range(6, 12)})
            and not (r["n_spec"] == 8 and r["prompt_id"] in {f"p{i}" for i in range(6)})]
    (a,) = advise(rows, cells).itertuples(index=False)
    assert a.n_spec == 8 and a.why == ("the fastest depth shown faster; too few requests in common with n_spec 2 to "
                                       "compare (each comparison at 97.5%: 2 depths judged together)")


def test_a_depth_whose_cell_failed_is_left_out_and_named():
    rows, cells = run_of({4: 1.5, 8: 1.8})
    rows = [dict(r, ok=False, e2e_tok_s=None) if r["n_spec"] == 8 and r["prompt_id"] in ("p6", "p7") else r
            for r in rows]
    cells = [dict(c, status="partial") if c["n_spec"] == 8 else c for c in cells]
    (a,) = advise(rows, cells).itertuples(index=False)
    assert a.n_spec == 4
    assert a.why == ("the only depth shown faster (each comparison at 97.5%: 2 depths judged together); left out, "
                     "though faster: n_spec 8 (partial, 2 failed)")


def test_merged_records_that_repeat_a_request_do_not_break_the_comparison():
    rows, cells = run_of({2: 1.2, 8: 1.8})
    rows.append({**next(r for r in rows if r["n_spec"] == 2 and r["prompt_id"] == "p0"), "key": "dup"})
    (a,) = advise(rows, cells).itertuples(index=False)
    assert a.n_spec == 8


def test_server_starts_count_every_line_of_a_resumed_cell(tmp_path):
    import json

    rows, _ = run_of({4: 1.5})
    run = make_run(tmp_path / "run", rows, {"e": {"kind": "llama-server", "model": "m"}})
    lines = (run / "cells.jsonl").read_text().splitlines()
    interrupted = json.dumps({**json.loads(lines[-1]), "status": "interrupted"})
    (run / "cells.jsonl").write_text("\n".join([lines[0], interrupted, lines[-1]]) + "\n")
    result = CliRunner().invoke(cli, ["report", str(run)])
    assert "(measured, 3 server starts)" in result.output
