"""The speedup model against independent truth: small cases worked by hand from the formulas in
docs/metrics.md ("The speedup model"), and a simulated speculative decoder whose per-position
acceptance and step costs are known by construction."""

from __future__ import annotations

import math
import random

import pytest

from orchestrator.analysis.model import (Acceptance, DepthRate, acceptance_of, fit, leviathan_speedup,
                                         leviathan_tokens, model_table, solve_alpha)

# 100 drafts; 80 had position 0 accepted, 50 positions 0-1, 20 all three: 150 accepted tokens.
# 450 output tokens, so 300 steps: 100 drafted (250 tokens), 200 without a draft (200 tokens).
ACC = Acceptance(drafts=100, accepted=150, output_tokens=450, per_pos=(80, 50, 20), draft_tokens=300)


def test_tokens_per_step_by_hand():
    f = fit("e", 1, {0: DepthRate(0, 100.0, 95, 105, 10), 3: DepthRate(3, 120.0, 110, 130, 10, ACC)})
    assert ACC.steps == 300 and ACC.undrafted == pytest.approx(200 / 450)
    assert ACC.shares() == [0.8, 0.5, 0.2]
    # AL(1) = 1.8: 200 draftless steps + 250 tokens / 1.8 per drafted step
    assert f.tokens_per_step(1)[0] == pytest.approx(450 / (200 + 250 / 1.8))
    assert f.tokens_per_step(2)[0] == pytest.approx(450 / (200 + 250 / 2.3))
    # at the depth measured, T is the measured output tokens per step, exactly
    assert f.tokens_per_step(3)[0] == pytest.approx(450 / 300)
    assert f.tokens_per_step(5) == (pytest.approx(1.5), "extrapolated from n_spec 3")


def test_step_cost_and_prediction_by_hand():
    f = fit("e", 1, {0: DepthRate(0, 100.0, 95, 105, 10), 3: DepthRate(3, 120.0, 110, 130, 10, ACC)})
    # a plain step: 1/100 s. Per output token at K=3: 1/120 = u a + (1 - u) / AL(3) * drafted step,
    # u = 200/450, AL(3) = 2.5, so a drafted step (3 draft tokens) takes 0.0175 s; one cell: c = a.
    assert f.a == pytest.approx(0.01) and f.c == pytest.approx(0.01) and f.b == pytest.approx(0.0025)
    u = 200 / 450
    assert f.predict(0) == pytest.approx(100.0)
    assert f.predict(3) == pytest.approx(120.0)
    assert f.predict(1) == pytest.approx(1 / (u * 0.01 + (1 - u) / 1.8 * 0.0125))  # 120.45
    assert f.predict(2) == pytest.approx(1 / (u * 0.01 + (1 - u) / 2.3 * 0.015))  # 123.95
    assert f.best([0, 1, 2, 3]) == 2


# ---------------------------------------------------------------- a simulated decoder, truth by construction
#
# A speculative decoder simulated step by step: each request is a stretch of PLAIN tokens no
# draft covers (one token a step, PLAIN_S each) and a stretch of DRAFTED tokens where every step
# drafts k tokens; position i of a draft is accepted with probability RATES[i] given that every
# position before it was (a draft at depth k is the first k tokens of a deeper one, as the model
# assumes), and a drafted step costs STEP_S + TOKEN_S * k. The counters and tok/s below are what
# the simulation counted and timed, never the model's formulas.

RATES = (0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2)
PLAIN_S, TOKEN_S = 0.010, 0.002
PLAIN, DRAFTED, REQUESTS = 200, 800, 60


def simulate(k: int, seed: int, step_s: float = PLAIN_S) -> DepthRate:
    rng = random.Random(f"{k}/{seed}")
    out = drafts = accepted = 0
    per_pos, seconds = [0] * k, 0.0
    for _ in range(REQUESTS):
        out, seconds = out + PLAIN, seconds + PLAIN * PLAIN_S
        made = 0
        while made < DRAFTED:  # the last step may run past the stretch: those tokens are output too
            n = 0
            while n < k and rng.random() < RATES[n]:
                per_pos[n] += 1
                n += 1
            if k:
                drafts, accepted, seconds = drafts + 1, accepted + n, seconds + step_s + TOKEN_S * k
            else:
                seconds += PLAIN_S
            made += 1 + n
        out += made
    acc = Acceptance(drafts, accepted, out, tuple(per_pos), drafts * k) if k else None
    return DepthRate(k, out / seconds, None, None, REQUESTS, acc)


def survival(i: int) -> float:
    """P(a draft's first i+1 tokens are all accepted): the true p_i."""
    return math.prod(RATES[:i + 1])


def accepted_variance(k: int) -> float:
    """Variance of one depth-k draft's accepted count X = sum_i 1[first i+1 accepted]:
    E[1_i 1_j] = p_max(i,j), so E[X^2] = sum_i p_i + 2 sum_{i<j} p_j."""
    p = [survival(i) for i in range(k)]
    return sum(p) + 2 * sum(j * p[j] for j in range(k)) - sum(p) ** 2


def test_simulated_counters_give_the_true_per_position_acceptance():
    acc = simulate(8, seed=1).acceptance
    assert acc.drafts > 10_000 and acc.undrafted == pytest.approx(PLAIN / (PLAIN + DRAFTED), rel=0.01)
    for i, got in enumerate(acc.shares()):
        p = survival(i)
        assert abs(got - p) < 4 * math.sqrt(p * (1 - p) / acc.drafts), (i, got, p)  # 4 binomial SEs


def test_the_fit_recovers_the_simulated_step_costs():
    """The cost of a drafted step the model solves for from each cell's tok/s and counters is the
    simulated one exactly (the counters are the simulation's own): a plain step PLAIN_S, a
    drafted one STEP_S + TOKEN_S k. One cell: c = a is assumed, here true."""
    f = fit("e", 1, {0: simulate(0, 1), 8: simulate(8, 1)})
    assert f.a == pytest.approx(PLAIN_S, rel=1e-9)
    assert (f.c, f.b) == (pytest.approx(PLAIN_S, rel=1e-9), pytest.approx(TOKEN_S, rel=1e-9))
    # A drafted step dearer than a plain one (STEP_S = 0.013 s): the least-squares line through the
    # true points (0, 0.010), (2, 0.017), (8, 0.029), worked by hand: mean x 10/3, mean y 0.056/3,
    # Sxy = 0.266 - 3 (10/3)(0.056/3) = 0.238/3, Sxx = 68 - 100/3 = 104/3: slope 0.238/104 s per
    # draft token (2.29 ms), intercept 0.056/3 - slope 10/3 (11.04 ms).
    f = fit("e", 1, {0: simulate(0, 1), 2: simulate(2, 1, step_s=0.013), 8: simulate(8, 1, step_s=0.013)})
    slope = 0.238 / 104
    assert f.b == pytest.approx(slope, rel=1e-6) and f.c == pytest.approx(0.056 / 3 - slope * 10 / 3, rel=1e-6)
    # one cell alone: its drafted step (0.013 + 8 TOKEN_S = 0.029 s) on the line from (0, a)
    f = fit("e", 1, {0: simulate(0, 1), 8: simulate(8, 1, step_s=0.013)})
    assert f.c == pytest.approx(PLAIN_S, rel=1e-9) and f.b == pytest.approx((0.029 - PLAIN_S) / 8, rel=1e-9)


def test_predictions_from_the_deepest_cell_match_simulated_cells_at_every_depth():
    """Fitted on n_spec 0 and 8, the model predicts depths 1-7 from the depth-8 counters; each is
    set against a simulated cell of that depth (its own draws). Tolerance: 4 standard errors of
    the two estimates of tokens per drafted step (depth-8 counters, the depth-k cell), plus what
    the drafted stretches' overrun can move u by (under 8 tokens of PLAIN + DRAFTED a request)."""
    deep = simulate(8, seed=1)
    f = fit("e", 1, {0: simulate(0, 1), 8: deep})
    for k in range(1, 8):
        truth = simulate(k, seed=2)
        al = 1 + sum(survival(i) for i in range(k))
        se = math.sqrt(accepted_variance(k) * (1 / deep.acceptance.drafts + 1 / truth.acceptance.drafts)) / al
        # seconds per output token: u a + (1 - u) d, d the drafted stretch's per token; u shifts by du at most
        u, d = PLAIN / (PLAIN + DRAFTED), (PLAIN_S + TOKEN_S * k) / al
        du = u * 8 / (PLAIN + DRAFTED)
        tol = 4 * se + du * abs(PLAIN_S - d) / (u * PLAIN_S + (1 - u) * d)
        assert f.predict(k) == pytest.approx(truth.tok_s, rel=tol), (k, f.predict(k), truth.tok_s, tol)
        assert f.tokens_per_step(k)[1] == "from n_spec 8"
    assert f.predict(8) == pytest.approx(deep.tok_s, rel=1e-9)  # at the depth measured: exact


def test_a_short_draft_costs_its_length_not_the_depth():
    # at depth 64 the n-gram drafts averaged 3 tokens: depth 64 costs what 3 tokens cost
    deep = Acceptance(drafts=100, accepted=150, output_tokens=450, per_pos=(80, 50, 20) + (0,) * 61, draft_tokens=300)
    f = fit("e", 1, {0: DepthRate(0, 100.0, 95, 105, 10), 64: DepthRate(64, 120.0, 110, 130, 10, deep)})
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
    f = fit("e", 1, {0: DepthRate(0, 100.0, 95, 105, 10), 3: DepthRate(3, 120.0, 110, 130, 10, ACC)})
    # per drafted step 1 + 150/100 = 2.5 tokens; c' = b / a = 0.25; at k = 3: 100 * 2.5 / (3 * 0.25 + 1)
    assert f.reference(3) == pytest.approx(100 * 2.5 / 1.75)


def test_a_fit_needs_a_baseline_and_counters():
    assert fit("e", 1, {3: DepthRate(3, 120.0, 110, 130, 10, ACC)}).problem.startswith("no n_spec 0")
    assert "counters" in fit("e", 1, {0: DepthRate(0, 100.0, 95, 105, 10), 3: DepthRate(3, 120.0, 1, 2, 10)}).problem


def test_model_table_errors():
    f = fit("e", 1, {0: DepthRate(0, 100.0, 95, 105, 10), 3: DepthRate(3, 120.0, 110, 130, 10, ACC)})
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
    from orchestrator.analysis.summary import with_draft_counts
    from tests.support.runs import cells_of

    def row(k, d, a, ok=True):
        return {"engine": "e", "cell_id": "e-n4", "concurrency": 1, "n_spec": 4, "ok": ok,
                "timings_draft_n": d, "timings_draft_n_accepted": a}

    # As summary.measured_frame gives it: llama.cpp's fields read into the neutral columns by its adapter.
    df = with_draft_counts(pd.DataFrame([row(0, 10, 7), row(1, 6, 2), row(2, None, None, ok=False)]))

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
