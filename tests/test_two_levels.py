"""Two-level intervals, blocks and the drift check, on simulated runs whose truth is known.

A simulated server (no process: a formula, so that hundreds of runs fit in seconds) decodes each
prompt at a rate that is the depth's true speedup times the prompt's own factor, times a factor
drawn anew at each server start, times noise per request, times a drift of the machine over the
run. The requests go through the real planner (plan_cells: which start runs when) and the real
analysis (pair_table, paired_speedups, drift); only the server is simulated.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from orchestrator.analysis import spread
from orchestrator.analysis.drift import drift, format_drift
from orchestrator.analysis.pairs import by_group, pair_table, paired_speedups
from orchestrator.analysis.summary import measured_frame, summarize
from orchestrator.types.records import CellRecord, RequestRecord
from orchestrator.sweep.runner import plan_cells
from orchestrator.types.scenario import Scenario

TRUTH = {0: 1.0, 4: 1.3, 8: 1.6, 16: 1.5}
START_S = 40.0  # seconds one start takes, for the drift's clock


def scenario(blocks: int, repeats: int = 1) -> Scenario:
    return Scenario.model_validate({
        "name": "sim", "workload": {"blocks": blocks, "repeats": repeats, "seed": 7},
        "engines": [{"name": "e", "kind": "llama-server", "model": "m",
                     "speculation": {"method": "ngram-mod", "n_spec": sorted(TRUTH)}}]})


def simulate(rng, sc: Scenario, prompts=8, start_sd=0.06, prompt_sd=0.10, noise=0.03, drift_share=0.0,
             truth=TRUTH, busy=None):
    """Records of one simulated run: (requests, cells). `busy` = {(n_spec, block): factor}: that
    start runs at `factor` of its speed, as on a host another job took a core from."""
    order = plan_cells(sc)
    effect = rng.normal(0, prompt_sd, prompts)  # how much each prompt gains from drafting, in logs
    requests, cells = [], []
    for i, cell in enumerate(order):
        t0 = 1_000_000.0 + i * START_S
        slow = 1 - drift_share * i / max(1, len(order) - 1)  # linear drift over the run
        start = rng.normal(0, start_sd) + math.log((busy or {}).get((cell.n_spec, cell.block), 1.0))
        cells.append(CellRecord(cell_id=cell.id, engine="e", method=cell.method, n_spec=cell.n_spec, status="ok",
                                block=cell.block if sc.workload.blocks > 1 else None, started_at=t0))
        for r in range(sc.workload.repeats):
            for p in range(prompts):
                gain = math.log(truth[cell.n_spec]) + (effect[p] if cell.n_spec else 0.0)
                rate = 40.0 * (1 + p / 4) * slow * math.exp(gain + start + rng.normal(0, noise))
                tokens = 128
                wall = t0 + 1 + (r * prompts + p) * 3
                key = (f"b{cell.block}/" if cell.block else "") + f"c1/r{r}/seeds/p{p}"
                requests.append(RequestRecord(
                    key=f"measured/{key}", phase="measured", concurrency=1, repeat=r, prompt_set="seeds",
                    prompt_id=f"p{p}", ok=True, t_start=wall, t_end=wall + tokens / rate, wall_start=wall,
                    completion_tokens=tokens, e2e_tok_s=rate, cell_id=cell.id, engine="e", method=cell.method,
                    n_spec=cell.n_spec, block=cell.block if sc.workload.blocks > 1 else None))
    return requests, cells


def speedups(requests, cells):
    pairs = pair_table(measured_frame(requests), cells)
    return pairs, paired_speedups(pairs)


def test_the_two_level_interval_holds_the_truth_at_least_90_percent_of_runs(capsys):
    rng = np.random.default_rng(20261207)
    sc = scenario(blocks=3)
    runs, held, held_requests_only, cells_seen = 120, 0, 0, 0
    for _ in range(runs):
        pairs, found = speedups(*simulate(rng, sc))
        groups = by_group(pairs)
        for key, sp in found.items():
            n = int(key[0].rsplit("n", 1)[1])
            truth = TRUTH[n]
            cells_seen += 1
            held += sp.speedup_ci_low <= truth <= sp.speedup_ci_high
            only = spread.interval(spread.spread_of(groups[key], spread.nanmedian, ["ratio"]),
                                   spread.StartVariance(0.0, 0))
            held_requests_only += only.low <= truth <= only.high
    both, only = held / cells_seen, held_requests_only / cells_seen
    with capsys.disabled():
        print(f"\ncoverage of the true speedup over {cells_seen} simulated cells (3 blocks, 8 prompts, start sd 6%): "
              f"two-level {both:.1%}, requests only {only:.1%}")
    assert both >= 0.90
    assert only < both  # the request-only interval misses the start-to-start spread


def test_one_busy_start_widens_its_own_cell_and_not_every_other_through_the_pool():
    """A start at half speed (another job took a core) is set apart by Cochran's test: that cell
    keeps its own start variance (a wide interval that still holds the truth) and the other cells'
    intervals stay about as wide as on the same run without it, where pooling it would have made
    them several times wider."""
    sc = scenario(blocks=2)
    quiet = speedups(*simulate(np.random.default_rng(5), sc))[1]
    busy = speedups(*simulate(np.random.default_rng(5), sc, busy={(8, 0): 0.5}))[1]
    width = lambda sp: math.log(sp.speedup_ci_high / sp.speedup_ci_low)  # noqa: E731
    for key, sp in busy.items():
        if key[0].endswith("n8"):
            assert sp.interval_covers == spread.UNSTEADY
            assert sp.speedup_ci_low <= TRUTH[8] <= sp.speedup_ci_high
        else:
            assert sp.interval_covers == spread.BOTH
            assert width(sp) <= 1.15 * width(quiet[key]), key


def test_blocks_cancel_a_drift_that_a_fixed_order_puts_on_the_deep_depths():
    # The machine slows 20% linearly over the run. In a fixed order n_spec 16 runs last; in blocks
    # every depth runs early and late alike, and each pair is with the baseline of its own block.
    rng = np.random.default_rng(5)
    errors = {"blocked": [], "fixed": []}
    for _ in range(20):
        for name, sc in (("blocked", scenario(blocks=4)), ("fixed", scenario(blocks=1, repeats=4))):
            _, found = speedups(*simulate(rng, sc, start_sd=0.0, prompt_sd=0.0, noise=0.01, drift_share=0.20))
            sp = found[("e-ngram-mod-n16", 1, "seeds")]
            errors[name].append(sp.speedup / TRUTH[16] - 1)
    blocked, fixed = abs(np.median(errors["blocked"])), abs(np.median(errors["fixed"]))
    assert blocked < 0.03 < fixed


def test_the_drift_check_reports_a_known_drift_and_the_verdicts_it_could_flip():
    rng = np.random.default_rng(11)
    sc = scenario(blocks=2)
    requests, cells = simulate(rng, sc, start_sd=0.0, prompt_sd=0.0, noise=0.01, drift_share=0.20,
                               truth={0: 1.0, 4: 1.02, 8: 3.0, 16: 3.0})
    summary = summarize(requests, cells)
    (d,) = drift(measured_frame(requests), cells, summary)
    assert d.found and abs(d.ratio - 0.80) < 0.02  # the baseline, last start over first: 20% slower
    assert (d.first_block, d.last_block) == (0, 1)
    # a verdict on 3x lies far beyond a 20% drift's reach: never named as one it could flip
    assert not any(f.n_spec in (8, 16) for f in d.flips)
    text = format_drift([d], 2)
    assert text.startswith("DRIFT: e at c=1: n_spec 0 at the end of the run (block 2) over its start (block 1)")


def test_no_drift_is_within_its_interval_and_one_block_says_drift_was_not_measured():
    rng = np.random.default_rng(3)
    requests, cells = simulate(rng, scenario(blocks=2), start_sd=0.0, noise=0.02)
    (d,) = drift(measured_frame(requests), cells, summarize(requests, cells))
    assert not d.found and d.low <= 1.0 <= d.high
    one = simulate(rng, scenario(blocks=1))
    assert drift(measured_frame(one[0]), one[1], summarize(*one)) == []


def test_each_block_starts_every_cell_once_in_a_seeded_order_with_the_baseline_first_and_last():
    order = [(c.n_spec, c.block) for c in plan_cells(scenario(blocks=3))]
    assert len(order) == 12 and order[0] == (0, 0) and order[-1] == (0, 2)
    for b in range(3):
        assert sorted(n for n, blk in order if blk == b) == sorted(TRUTH)
    middle = [n for n, blk in order if blk == 1]
    assert middle != sorted(TRUTH) or [n for n, blk in order if blk == 2] != sorted(TRUTH)  # shuffled
    assert order == [(c.n_spec, c.block) for c in plan_cells(scenario(blocks=3))]  # seeded: the same twice


def test_a_request_pairs_with_the_baseline_of_its_own_block():
    rng = np.random.default_rng(1)
    requests, cells = simulate(rng, scenario(blocks=2))
    pairs = pair_table(measured_frame(requests), cells)
    base = {r.key: r.block for r in requests if r.n_spec == 0}
    assert len(pairs) and (pairs["status"] == "paired").all()
    frame = measured_frame(requests)
    by_rate = dict(zip(frame.loc[frame["n_spec"] == 0, "e2e_tok_s"], frame.loc[frame["n_spec"] == 0, "block"], strict=True))
    assert all(by_rate[b] == blk for b, blk in zip(pairs["baseline_tok_s"], pairs["block"], strict=True))
    assert set(base.values()) == {0, 1}


def test_one_block_is_labelled_as_covering_requests_only():
    rng = np.random.default_rng(2)
    _, found = speedups(*simulate(rng, scenario(blocks=1, repeats=2)))
    assert {sp.interval_covers for sp in found.values()} == {spread.REQUESTS_ONLY}
    _, found = speedups(*simulate(rng, scenario(blocks=2)))
    assert {sp.interval_covers for sp in found.values()} == {spread.BOTH}


def test_a_frame_with_missing_requests_still_gives_an_interval():
    frame = pd.DataFrame({"block": [0, 0, 1, 1, 1], "prompt": ["a", "b", "a", "b", "c"],
                          "ratio": [1.2, 1.3, 1.25, 1.35, 1.1]})
    iv = spread.interval(spread.spread_of(frame, spread.nanmedian, ["ratio"]), spread.StartVariance(0.001, 10))
    assert iv.low < iv.estimate < iv.high and iv.covers == spread.BOTH


def _folder(tmp_path, name, requests):
    from .support.runs import make_run

    rows = [r.model_dump(mode="json", exclude_none=True) for r in requests]
    return make_run(tmp_path / name, rows, {"e": {"kind": "llama-server", "model": "m"}})


def test_retest_of_two_runs_of_one_truth_agrees_and_of_two_truths_exits_one(tmp_path):
    from click.testing import CliRunner

    from orchestrator.cli import cli

    rng = np.random.default_rng(8)
    sc = scenario(blocks=2)
    a = _folder(tmp_path, "a", simulate(rng, sc)[0])
    b = _folder(tmp_path, "b", simulate(rng, sc)[0])
    result = CliRunner().invoke(cli, ["retest", str(a), str(b)])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[-1] == "the two answers agree"
    assert "typical paired speedup per cell" in result.output and "A holds B" in result.output
    # B's machine gains nothing from drafting: "no speculation" against A's n_spec 8, told apart
    flat = _folder(tmp_path, "flat", simulate(rng, sc, truth={0: 1.0, 4: 0.4, 8: 0.4, 16: 0.4})[0])
    result = CliRunner().invoke(cli, ["retest", str(a), str(flat)])
    assert result.exit_code == 1, result.output
    assert "DISAGREE" in result.output and result.output.splitlines()[-1].endswith("exit code 1")


def test_bad_blocks_are_one_line_naming_the_key_and_exit_two(tmp_path):
    from click.testing import CliRunner

    from orchestrator.cli import cli

    base = ('name = "b"\n[workload]\nblocks = {}\n{}[[engines]]\nname = "e"\nkind = "llama-server"\nmodel = "m"\n'
            '[engines.speculation]\nmethod = "ngram-mod"\nn_spec = [0, 4]\n')
    for blocks, extra, words in (("0", "", "workload.blocks"), ("1000000000000", "", "workload.blocks"),
                                 ('"two"', "", "workload.blocks")):
        path = tmp_path / "s.toml"
        path.write_text(base.format(blocks, extra))
        result = CliRunner().invoke(cli, ["validate", str(path)])
        assert result.exit_code == 2, result.output
        assert len(result.output.strip().splitlines()) == 1 and words in result.output, result.output


def test_the_search_may_use_half_the_grids_starts_and_confirms_its_best_in_a_second_block():
    from orchestrator.analysis.search import climb_budget, confirm_depths, default_budget

    grid = [0, 2, 4, 8, 12, 16, 24, 32, 48, 64]
    assert default_budget(grid, 2) == 10 and default_budget(grid) == 5 and default_budget([0, 4, 8, 16], 2) == 4
    assert climb_budget(10, 2) == 5 and climb_budget(5, 1) == 5
    # the best's unmeasured neighbour (32) is started, not left to a model fitted on two cells
    assert confirm_depths([48, 64], 7, grid) == [0, 48, 32, 64]
    assert confirm_depths([48, 64], 2, grid) == [0, 48]
    assert confirm_depths([48], 1, grid) == [] and confirm_depths([], 5, grid) == []
