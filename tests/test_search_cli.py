"""`orch sweep --search` at the command line: the plan, the step it takes next on a run's records
(--dry-run --resume), refusals, and the report of a search read back from hostile records."""

from __future__ import annotations

import json
import re

import pytest
from click.testing import CliRunner

from orchestrator.cli import cli

from .support.depth_curve import GRID, cell

SCENARIO = """name = "t"
[workload]
prompts = ["s"]
[[engines]]
name = "llamacpp"
kind = "llama-server"
model = "{model}"
binary = "/opt/bin/llama-server"
[engines.speculation]
method = "ngram-mod"
n_spec = {grid}
"""


def scenario(tmp_path, grid=GRID):
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    (tmp_path / "s.jsonl").write_text(json.dumps({"id": "p0", "prompt": "hello"}) + "\n")
    path = tmp_path / "t.toml"
    path.write_text(SCENARIO.format(model=model, grid=grid).replace('["s"]', f'["{tmp_path / "s.jsonl"}"]'))
    return path


def run_folder(tmp_path, depths, search_lines=None):
    folder = tmp_path / "r" / "t-20261201-000000"
    folder.mkdir(parents=True)
    rows, cells = [], []
    for k in depths:
        r, c = cell(k, engine="llamacpp")
        rows += r
        cells.append(c)
    (folder / "requests.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "cells.jsonl").write_text("".join(json.dumps(c) + "\n" for c in cells))
    (folder / "scenario.toml").write_text('name = "t"\n')
    if search_lines is not None:
        (folder / "search.jsonl").write_text("".join(line + "\n" for line in search_lines))
    return folder


def invoke(*args):
    return CliRunner().invoke(cli, ["sweep", *map(str, args)])


def test_the_plan_names_the_opening_and_the_budget(tmp_path, no_processes):
    result = invoke(scenario(tmp_path), "--search", "--dry-run", "--out", tmp_path / "r")
    assert result.exit_code == 0, result.output
    out = re.sub(r"--port \d+", "--port PORT", result.output).splitlines()
    assert out[0] == ("llamacpp: depth search over n_spec 0, 2, 4, 8, 12, 16, 24, 32, 48, 64: at most 5 of 10 server "
                      "starts; it opens with n_spec 0, 64, fits the speedup model, then starts the predicted best and "
                      "the best measured depth's neighbours one at a time, refitting after each")
    assert out[1] == "  next: llamacpp-n0 [process, chat]"
    assert out[3] == "  next: llamacpp-ngram-mod-n64 [process, chat]"
    assert "--spec-ngram-mod-n-max 64" in out[4]
    assert not (tmp_path / "r").exists()


def test_dry_run_on_a_runs_records_shows_the_step_it_adapts_to(tmp_path, no_processes):
    path = scenario(tmp_path)
    run_folder(tmp_path, [0, 64])
    result = invoke(path, "--search", "--dry-run", "--resume", "--out", tmp_path / "r")
    assert result.exit_code == 0, result.output
    assert "llamacpp: depth search over n_spec 0, 2, 4, 8, 12, 16, 24, 32, 48, 64: 2 server starts " \
           "(allowed 5; the full grid takes 10); measured n_spec 0, 64" in result.output
    assert "  next: llamacpp-ngram-mod-n12 [process, chat]" in result.output  # the model's best, from 2 cells
    assert "skipped n_spec 2: predicted" in result.output


def test_dry_run_after_the_search_ended_says_so(tmp_path, no_processes):
    path = scenario(tmp_path)
    run_folder(tmp_path, [0, 64, 12, 8, 16])
    result = invoke(path, "--search", "--dry-run", "--resume", "--out", tmp_path / "r")
    assert result.exit_code == 0, result.output
    assert "  stopped: the best measured depth stands beside measured or ruled-out neighbours" in result.output
    assert re.search(r"c=1: run n_spec 12, [\d.]+x \[[\d.]+-[\d.]+\] over n_spec 0 request by request \(measured; "
                     r"best measured n_spec 12", result.output)
    assert "llamacpp: nothing left to start" in result.output


def test_a_grid_without_a_baseline_is_refused_in_one_line(tmp_path):
    result = invoke(scenario(tmp_path, grid=[4, 8, 16]), "--search", "--dry-run")
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        f"Error: {tmp_path / 't.toml'}: engines.llamacpp.speculation.n_spec: the depth search needs 0 (the baseline) "
        "and at least two other depths (got [4, 8, 16]); list them, or drop --search"]


def test_search_starts_needs_search(tmp_path):
    result = invoke(scenario(tmp_path), "--search-starts", "4", "--dry-run")
    assert result.exit_code == 2 and "--search-starts goes with --search" in result.output


def test_the_report_recomputes_the_search_and_skips_hostile_lines(tmp_path):
    good = json.dumps({"engine": "llamacpp", "grid": GRID, "budget": 5})
    folder = run_folder(tmp_path, [0, 64, 12, 8, 16], [
        "not json", json.dumps({"engine": "llamacpp", "grid": ["0"], "budget": 5}),
        json.dumps({"engine": "llamacpp", "grid": GRID, "budget": True}), json.dumps([1]),
        json.dumps({"engine": "llamacpp", "grid": [1, 2], "budget": 5}), good])
    result = CliRunner().invoke(cli, ["report", str(folder)])
    assert result.exit_code == 0, result.output
    assert "skipped 5 lines without an engine, its depths (0 among them) and its budget (lines 1, 2, 3, 4, 5)" in result.output
    assert "llamacpp: depth search over n_spec 0, 2, 4, 8, 12, 16, 24, 32, 48, 64: 5 server starts (allowed 5; " \
           "the full grid takes 10)" in result.output
    md = (folder / "report" / "summary.md").read_text()
    top = md.split("### What to run")[1]
    assert top.index("depth search") < top.index("speedup model")  # both open the report
    assert (folder / "model.csv").is_file() and (folder / "model_vs_measured.png").is_file()


def test_a_blocked_search_says_its_starts_against_the_whole_searchs_and_the_blocked_grids(tmp_path):
    line = {"engine": "llamacpp", "grid": GRID, "budget": 5, "allowed": 10, "blocks": 2}
    folder = run_folder(tmp_path, [0, 64, 12, 8, 16], [json.dumps(line)])
    result = CliRunner().invoke(cli, ["report", str(folder)])
    assert result.exit_code == 0, result.output
    assert ("llamacpp: depth search over n_spec 0, 2, 4, 8, 12, 16, 24, 32, 48, 64: 5 server starts in 2 blocks "
            "(allowed 10, the climb's 5 in block 1 and the rest confirming in block 2; the full grid takes 20); "
            "measured n_spec") in result.output


@pytest.mark.parametrize("allowed, blocks", [(True, 2), (-1, 2), ("10", 2), (10, 0), (10, "2"), (10, 10**9)])
def test_an_odd_allowed_or_blocks_is_said_as_a_one_block_search(tmp_path, allowed, blocks):
    line = {"engine": "llamacpp", "grid": GRID, "budget": 5, "allowed": allowed, "blocks": blocks}
    folder = run_folder(tmp_path, [0, 64, 12, 8, 16], [json.dumps(line)])
    result = CliRunner().invoke(cli, ["report", str(folder)])
    assert result.exit_code == 0, result.output
    assert "5 server starts (allowed 5; the full grid takes 10)" in result.output


def test_engine_picks_one_engine_and_an_unknown_name_is_refused(tmp_path, no_processes):
    path = scenario(tmp_path)
    result = invoke(path, "--engine", "llamacpp", "--dry-run")
    assert result.exit_code == 0 and "cell 10/10 llamacpp-ngram-mod-n64" in result.output
    result = invoke(path, "--engine", "vllm", "--dry-run")
    assert result.exit_code == 2
    assert result.output == f"Error: {path}: --engine: no engine named 'vllm'; this scenario has llamacpp\n"
