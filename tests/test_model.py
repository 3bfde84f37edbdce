"""The speedup model's arithmetic against cases computed by hand (docs/metrics.md has the formulas)."""

from __future__ import annotations

import math

import pytest

from orchestrator.analysis.model import (Acceptance, Measured, acceptance_of, fit, leviathan_speedup,
                                         leviathan_tokens, model_table, solve_alpha)

# 100 drafts; 80 had position 0 accepted, 50 positions 0-1, 20 all three: 150 accepted tokens.
# 450 output tokens, so 300 steps: 100 drafted (250 tokens), 200 without a draft (200 tokens).
ACC = Acceptance(drafts=100, accepted=150, output_tokens=450, per_pos=(80, 50, 20), draft_tokens=300)


def test_tokens_per_step_by_hand():
    f = fit("e", 1, {0: Measured(0, 100.0, 95, 105, 10), 3: Measured(3, 120.0, 110, 130, 10, ACC)})
    assert ACC.steps == 300 and ACC.undrafted == pytest.approx(200 / 450)
    assert ACC.shares() == [0.8, 0.5, 0.2]
    # AL(1) = 1.8: 200 draftless steps + 250 tokens / 1.8 per drafted step
    assert f.tokens_per_step(1)[0] == pytest.approx(450 / (200 + 250 / 1.8))
    assert f.tokens_per_step(2)[0] == pytest.approx(450 / (200 + 250 / 2.3))
    # at the depth measured, T is the measured output tokens per step, exactly
    assert f.tokens_per_step(3)[0] == pytest.approx(450 / 300)
    assert f.tokens_per_step(5) == (pytest.approx(1.5), "extrapolated from n_spec 3")


def test_step_cost_and_prediction_by_hand():
    f = fit("e", 1, {0: Measured(0, 100.0, 95, 105, 10), 3: Measured(3, 120.0, 110, 130, 10, ACC)})
    # a plain step: 1/100 s. Per output token at K=3: 1/120 = u a + (1 - u) / AL(3) * drafted step,
    # u = 200/450, AL(3) = 2.5, so a drafted step (3 draft tokens) takes 0.0175 s; one cell: c = a.
    assert f.a == pytest.approx(0.01) and f.c == pytest.approx(0.01) and f.b == pytest.approx(0.0025)
    u = 200 / 450
    assert f.predict(0) == pytest.approx(100.0)
    assert f.predict(3) == pytest.approx(120.0)
    assert f.predict(1) == pytest.approx(1 / (u * 0.01 + (1 - u) / 1.8 * 0.0125))  # 120.45
    assert f.predict(2) == pytest.approx(1 / (u * 0.01 + (1 - u) / 2.3 * 0.015))  # 123.95
    assert f.best([0, 1, 2, 3]) == 2


def test_two_speculative_cells_fit_the_drafted_step_line():
    # depth 1 of the same drafts: 80 accepted in 100 drafts of 1 token; 450 tokens in 370 steps
    one = Acceptance(drafts=100, accepted=80, output_tokens=450, per_pos=(80,), draft_tokens=100)
    u1 = (370 - 100) / 450

    def rate1(drafted_step):
        return 1 / (u1 * 0.01 + (1 - u1) / 1.8 * drafted_step)

    cells = {0: Measured(0, 100.0, 95, 105, 10), 3: Measured(3, 120.0, 110, 130, 10, ACC)}
    # on the line through the baseline (0, 0.01) and depth 3 (3, 0.0175): the fit is that line
    f = fit("e", 1, {**cells, 1: Measured(1, rate1(0.0125), 1, 2, 10, one)})
    assert f.b == pytest.approx(0.0025) and f.c == pytest.approx(0.01)
    assert f.predict(1) == pytest.approx(rate1(0.0125)) and f.predict(3) == pytest.approx(120.0)
    # off it, (1, 0.014): least squares through (0, 0.01), (1, 0.014), (3, 0.0175), by hand
    f = fit("e", 1, {**cells, 1: Measured(1, rate1(0.014), 1, 2, 10, one)})
    xs, ys = [0, 1, 3], [0.01, 0.014, 0.0175]
    mx, my = sum(xs) / 3, sum(ys) / 3
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs)
    assert f.b == pytest.approx(slope) and f.c == pytest.approx(my - slope * mx)


def test_a_short_draft_costs_its_length_not_the_depth():
    # at depth 64 the n-gram drafts averaged 3 tokens: depth 64 costs what 3 tokens cost
    deep = Acceptance(drafts=100, accepted=150, output_tokens=450, per_pos=(80, 50, 20) + (0,) * 61, draft_tokens=300)
    f = fit("e", 1, {0: Measured(0, 100.0, 95, 105, 10), 64: Measured(64, 120.0, 110, 130, 10, deep)})
    assert deep.draft_length_at(64) == 3 and deep.draft_length_at(2) == 2
    assert f.predict(64) == pytest.approx(120.0) and f.predict(3) == pytest.approx(120.0)


def test_leviathan_closed_form():
    assert leviathan_tokens(0.5, 3) == pytest.approx(1 + 0.5 + 0.25 + 0.125)
    assert leviathan_tokens(1.0, 4) == 5
    assert leviathan_speedup(0.5, 3, 0.1) == pytest.approx(1.875 / 1.3)
    a = solve_alpha(2.5, 3)
    assert 1 + a + a * a + a ** 3 == pytest.approx(2.5, abs=1e-9)
    assert solve_alpha(5.0, 3) is None  # more tokens per step than k + 1: no constant rate gives it


def test_reference_curve_uses_fitted_cost():
    f = fit("e", 1, {0: Measured(0, 100.0, 95, 105, 10), 3: Measured(3, 120.0, 110, 130, 10, ACC)})
    # per drafted step 1 + 150/100 = 2.5 tokens; c' = b / a = 0.25; at k = 3: 100 * 2.5 / (3 * 0.25 + 1)
    assert f.reference(3) == pytest.approx(100 * 2.5 / 1.75)


def test_a_fit_needs_a_baseline_and_counters():
    assert fit("e", 1, {3: Measured(3, 120.0, 110, 130, 10, ACC)}).problem.startswith("no n_spec 0")
    assert "counters" in fit("e", 1, {0: Measured(0, 100.0, 95, 105, 10), 3: Measured(3, 120.0, 1, 2, 10)}).problem


def test_model_table_errors():
    f = fit("e", 1, {0: Measured(0, 100.0, 95, 105, 10), 3: Measured(3, 120.0, 110, 130, 10, ACC)})
    t = model_table([f])
    assert list(t["n_spec"]) == [0, 1, 2, 3]
    assert t.loc[t["n_spec"] == 3, "error"].item() == pytest.approx(0.0)
    assert math.isnan(t.loc[t["n_spec"] == 1, "measured_tok_s"].item())


@pytest.mark.parametrize("window", [
    {"drafts": 10, "accepted_tokens": 5, "per_pos": {"0": 4, "2": 1}},  # a gap
    {"drafts": 10, "accepted_tokens": 5, "per_pos": {"0": 11}},  # more than the drafts
    {"drafts": 10, "accepted_tokens": 5, "per_pos": {"-1": 4}},
    {"drafts": 10, "accepted_tokens": 5, "per_pos": {"0": float("nan")}},
    {"drafts": 10, "accepted_tokens": 5, "per_pos": {"0": True}},
    {"drafts": "10", "accepted_tokens": 5, "per_pos": {"0": 4}},
    {"drafts": 0, "accepted_tokens": 0, "per_pos": {}},
    {"drafts": 10, "accepted_tokens": 5, "per_pos": ["4"]},
])
def test_hostile_windows_give_no_acceptance(window):
    assert acceptance_of(window, 100) is None


def test_window_read_back():
    got = acceptance_of({"drafts": 10, "accepted_tokens": 7, "per_pos": {"1": 3, "0": 4}}, 100)
    assert got.per_pos == (4.0, 3.0) and got.steps == 93


def test_window_check_sums_requests_against_metrics():
    import pandas as pd

    from orchestrator.analysis.model import format_check, window_check
    from tests.support.runs import cells_of

    def row(k, d, a, ok=True):
        return {"engine": "e", "cell_id": "e-n4", "concurrency": 1, "n_spec": 4, "ok": ok,
                "timings_draft_n": d, "timings_draft_n_accepted": a}

    df = pd.DataFrame([row(0, 10, 7), row(1, 6, 2), row(2, None, None, ok=False)])
    def cells(accepted):
        return cells_of([{"cell_id": "e-n4", "engine": "e", "method": "m", "n_spec": 4, "status": "ok",
                          "server_metrics": {"1": {"drafts": 5, "draft_tokens": 16, "accepted_tokens": accepted}}}])

    check = window_check(df, cells(9))
    assert check[["counted", "draft_tokens_requests", "accepted_requests", "equal"]].values.tolist() == [[2, 16, 9, True]]
    check = window_check(df, cells(10))  # the server counted one more
    assert not check["equal"].item()
    assert format_check(check).splitlines()[1] == ("e-n4 c=1: 2 of 3 requests counted; draft tokens 16 vs 16, "
                                                   "accepted 9 vs 10: NOT equal")


def test_drafts_accepted_past_max_tokens_count_as_generated():
    # 42 drafted steps accepted 604 drafts, but only 576 tokens were kept (max_tokens cut the last steps)
    got = acceptance_of({"drafts": 42, "accepted_tokens": 604, "per_pos": {"0": 42}}, 576)
    assert got.output_tokens == 646 and got.steps == 42 and got.undrafted == 0
