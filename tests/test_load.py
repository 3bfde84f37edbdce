"""Where speculation stops paying under load, on constructed records whose answer is known."""

import pandas as pd
from click.testing import CliRunner

from orchestrator.analysis.load import crossover
from orchestrator.analysis.summary import summarize
from orchestrator.cli import cli

from .support.runs import cells_of, make_run, requests_of, timed

SPEEDUPS = {4: {1: 2.0, 4: 1.5, 8: 1.0}, 8: {1: 2.2, 4: 0.9, 8: 0.8}, 2: {1: 1.3, 4: 1.2, 8: 1.1}}


def loaded(speedups=SPEEDUPS, prompts=8):
    """Every pair at exactly its depth's speedup for that level; answers 10x apart in length."""
    rows = []
    for c in (1, 4, 8):
        for i in range(prompts):
            tokens, base_s = 30 * (i + 1), 1.0 + i
            rows.append(timed("e-n0", 0, f"p{i}", tokens, base_s, concurrency=c))
            rows += [timed(f"e-n{n}", n, f"p{i}", tokens, base_s / s[c], concurrency=c) for n, s in speedups.items()]
    return rows


def summary_of(rows):
    cells = {r["cell_id"]: {k: r[k] for k in ("cell_id", "engine", "method", "n_spec")} for r in rows}
    return summarize(requests_of(rows), cells_of([{**c, "status": "ok"} for c in cells.values()]))


def test_the_lowest_level_whose_interval_reaches_one_is_where_a_depth_stops_paying():
    found = crossover(summary_of(loaded())).set_index("n_spec")
    assert found.loc[4, "stops_paying_at"] == 8  # 1.0 exactly: no clear difference
    assert found.loc[8, "stops_paying_at"] == 4  # below 1.0 at 4 already
    assert found.loc[8, "finding"] == "faster at c=1, stops paying at c=4: 0.90x [0.89-0.91], slower"
    assert found.loc[2, "finding"] == "faster at every judged level, c=1,4,8"
    assert pd.isna(found.loc[2, "stops_paying_at"]) and found.loc[4, "levels"] == "1,4,8"
    s = summary_of(loaded())
    assert list(s.loc[s["n_spec"] == 8, "stops_paying_at"]) == [4, 4, 4]  # every level's row says it
    assert set(s.loc[s["n_spec"] == 8, "load_finding"]) == {found.loc[8, "finding"]}


def test_a_level_without_a_verdict_is_named_and_a_level_that_pays_again_is_said():
    # Depth 8 at c=8 keeps one of its eight prompts: no verdict there.
    rows = [r for r in loaded({4: {1: 1.5, 4: 1.0, 8: 1.5}, 8: {1: 0.9, 4: 1.2, 8: 1.2}})
            if not (r["concurrency"] == 8 and r["n_spec"] == 8 and r["prompt_id"] != "p7")]
    found = crossover(summary_of(rows)).set_index("n_spec")
    assert found.loc[4, "finding"] == ("faster at c=1, stops paying at c=4: 1.00x [0.99-1.01], no clear difference; "
                                       "faster again at c=8")
    assert found.loc[8, "finding"] == ("not faster at c=1, the lowest judged level: 0.90x [0.89-0.91], slower; "
                                       "faster at c=4; no verdict at c=8 (fewer than 2 prompts paired)")
    assert found.loc[8, "stops_paying_at"] == 1


def test_levels_without_a_verdict_give_no_crossover():
    found = crossover(summary_of(loaded(prompts=1)))
    assert set(found["finding"]) == {"no verdict at any level (fewer than 2 prompts paired per level)"}
    assert found["stops_paying_at"].isna().all()


def test_the_report_says_it_and_draws_speedup_against_concurrency(tmp_path):
    run = make_run(tmp_path / "run", loaded(), {"e": {"kind": "llama-server", "model": "m"}})
    result = CliRunner().invoke(cli, ["report", str(run)])
    assert result.exit_code == 0, result.output
    block = result.output[result.output.index("under load"):].splitlines()[:4]
    assert block == ["under load (typical paired speedup by concurrency):",
                     "e ngram-mod n_spec 2 (seeds, c=1,4,8): faster at every judged level, c=1,4,8",
                     "e ngram-mod n_spec 4 (seeds, c=1,4,8): faster at c=1,4, stops paying at c=8: 1.00x [0.99-1.01], "
                     "no clear difference",
                     "e ngram-mod n_spec 8 (seeds, c=1,4,8): faster at c=1, stops paying at c=4: 0.90x [0.89-0.91], "
                     "slower"]
    assert (run / "speedup_vs_concurrency.png").stat().st_size > 10_000
    assert "stops paying at c=4" in (run / "report" / "summary.md").read_text()


def test_one_level_draws_no_load_chart(tmp_path):
    rows = [r for r in loaded() if r["concurrency"] == 1]
    run = make_run(tmp_path / "run", rows, {"e": {"kind": "llama-server", "model": "m"}})
    result = CliRunner().invoke(cli, ["report", str(run)])
    assert result.exit_code == 0 and "under load" not in result.output
    assert not (run / "speedup_vs_concurrency.png").exists()


def test_acceptance_by_position_reads_only_sound_positions_from_cells(tmp_path):
    import json

    from plots.charts import _per_position
    from orchestrator.types.records import WindowMetrics

    hostile = {"0": 1.0, "1": 0.5, "2": "0.4", "3": -0.1, "4": 1.5, "²": 0.3, "5": True, "6": float("nan"),
               "9" * 5000: 0.5}
    assert _per_position(WindowMetrics.model_validate({"per_pos_acceptance": hostile})) == [(0, 1.0), (1, 0.5)]
    assert _per_position(WindowMetrics.model_validate({"per_pos_acceptance": [0.9]})) == []
    assert _per_position(None) == []
    run = make_run(tmp_path / "run", loaded(), {"e": {"kind": "llama-server", "model": "m"}})
    cells = [json.loads(ln) for ln in (run / "cells.jsonl").read_text().splitlines()]
    for c in cells:
        c["server_metrics"] = {"1": {"per_pos_acceptance": hostile}, "4": None}
    cells.append({**cells[-1], "server_metrics": {"9" * 5000: {"per_pos_acceptance": {"0": 1.0}}}})
    (run / "cells.jsonl").write_text("".join(json.dumps(c) + "\n" for c in cells))
    result = CliRunner().invoke(cli, ["report", str(run)])
    assert result.exit_code == 0, result.output
    assert (run / "acceptance_by_position.png").stat().st_size > 10_000
    assert "is not a concurrency level" in result.output  # the last cell line, salvaged without it


def test_no_per_position_counters_draw_no_position_chart(tmp_path):
    run = make_run(tmp_path / "run", loaded(), {"e": {"kind": "llama-server", "model": "m"}})
    assert CliRunner().invoke(cli, ["report", str(run)]).exit_code == 0
    assert not (run / "acceptance_by_position.png").exists()
