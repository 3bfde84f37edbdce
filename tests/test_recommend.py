"""What to run: the depth to deploy, on constructed records whose answer is known."""

import pytest
from click.testing import CliRunner

from orchestrator.analysis.pairs import pair_table
from orchestrator.analysis.recommend import format_advice, what_to_run
from orchestrator.analysis.summary import measured_frame, summarize
from orchestrator.cli import cli

from .support.runs import cells_of, make_run, requests_of
from .test_pairs import timed


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


def advise(rows, cells):
    reqs, cell_recs = requests_of(rows), cells_of(cells)
    return what_to_run(summarize(reqs, cell_recs), pair_table(measured_frame(reqs), cell_recs), cell_recs)


def test_the_fastest_depth_when_it_is_told_apart_from_the_smaller_ones():
    (a,) = advise(*run_of({2: 1.2, 4: 1.5, 8: 1.8})).itertuples(index=False)
    assert (a.n_spec, a.basis, a.server_starts) == (8, "measured", 4)
    assert a.speedup == pytest.approx(1.8)
    assert a.why == "the fastest depth, told apart from each smaller depth that was faster"


def test_a_smaller_depth_that_cannot_be_told_apart_from_the_fastest_wins():
    # n8 is 1.52x on average but +-5% from prompt to prompt: n4's steady 1.5x cannot be told from it.
    (a,) = advise(*run_of({2: 1.2, 4: 1.5, 8: 1.52}, wobble={8: 0.05})).itertuples(index=False)
    assert a.n_spec == 4
    assert a.why.startswith("the fastest, n_spec 8 at 1.52x [") and a.why.endswith("cannot be told apart from "
                                                                                    "this smaller depth")


def test_no_faster_depth_means_run_without_speculation():
    (a,) = advise(*run_of({4: 1.0, 8: 0.8})).itertuples(index=False)
    assert (a.n_spec, a.method, a.speedup) == (0, "none", 1.0)
    assert a.why == "no depth was shown to be faster; the best, n_spec 4, was 1.00x [1.00-1.00] (no clear difference)"


def test_too_few_pairs_for_a_verdict_recommend_nothing_faster():
    (a,) = advise(*run_of({4: 2.0}, prompts=3)).itertuples(index=False)
    assert a.n_spec == 0 and a.why == "no depth was shown to be faster; the best, n_spec 4, was 2.00x (no verdict: fewer than 6 pairs)"


def test_what_to_run_opens_the_report(tmp_path):
    rows, _ = run_of({2: 1.2, 4: 1.5, 8: 1.8})
    run = make_run(tmp_path / "run", rows, {"e": {"kind": "llama-server", "model": "m"}})
    result = CliRunner().invoke(cli, ["report", str(run)])
    assert result.exit_code == 0, result.output
    line = ("e at c=1 on seeds: ngram-mod n_spec 8, 1.80x [1.80-1.80] (measured, 4 server starts): the fastest "
            "depth, told apart from each smaller depth that was faster")
    assert result.output.splitlines()[result.output.splitlines().index("what to run (typical paired speedup):") + 1] == line
    md = (run / "report" / "summary.md").read_text().splitlines()
    assert md[4] == "### What to run" and line in md
    page = (run / "report" / "index.html").read_text()
    assert page.index('id="what-to-run"') < page.index("How it was measured")
    assert format_advice(advise(*run_of({}))) == ""  # a baseline alone: nothing to advise
