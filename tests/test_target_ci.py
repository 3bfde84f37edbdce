"""workload.target_ci: a cell measured until its median's interval is narrow enough, or the cap.
Against a loopback server whose pace is set by the test (fault injection: no real server varies
on command)."""

from __future__ import annotations

import json

from click.testing import CliRunner

from orchestrator.cli import cli

from .support.fake_server import FakeServer


def bench(server, tmp_path, *sets):
    args = ["bench", "--url", server.url, "--model", "m", "--out", str(tmp_path / "r"),
            "--set", 'workload.prompts=["repeat"]', "--set", "workload.warmup=0"]
    for s in sets:
        args += ["--set", s]
    result = CliRunner().invoke(cli, args)
    (run,) = (tmp_path / "r").iterdir()
    cells = [json.loads(ln) for ln in (run / "cells.jsonl").read_text().splitlines()]
    requests = [json.loads(ln) for ln in (run / "requests.jsonl").read_text().splitlines()]
    return result, cells[-1], [r for r in requests if r["phase"] == "measured"]


def test_a_server_that_varies_gets_repeats_up_to_the_cap(tmp_path):
    # 3 prompts per repeat; the pace alternates 4x between requests: no median of these is within 2%.
    with FakeServer(total_tokens=8, tokens_per_chunk=2, gaps=[0.005, 0.02]) as server:
        result, cell, measured = bench(server, tmp_path, "workload.target_ci=0.02", "workload.max_repeats=4")
    assert result.exit_code == 0, result.output
    assert cell["repeats"] == {"1": 4}
    assert len(measured) == 3 * 4 and sorted({r["repeat"] for r in measured}) == [0, 1, 2, 3]
    assert cell["requests_ok"] == 12 and cell["requests_not_sent"] == 0


def test_a_steady_server_stops_at_the_scenarios_repeats(tmp_path):
    with FakeServer(total_tokens=8, tokens_per_chunk=2, gap_s=0.02) as server:
        result, cell, measured = bench(server, tmp_path, "workload.repeats=2", "workload.target_ci=0.5")
    assert result.exit_code == 0, result.output
    assert cell["repeats"] == {"1": 2} and len(measured) == 6


def test_without_a_target_the_repeats_are_fixed(tmp_path):
    with FakeServer(total_tokens=8, tokens_per_chunk=2, gaps=[0.005, 0.02]) as server:
        result, cell, measured = bench(server, tmp_path, "workload.repeats=1")
    assert result.exit_code == 0, result.output
    assert "repeats" not in cell and len(measured) == 3


def test_a_cap_below_the_repeats_is_refused(tmp_path):
    (tmp_path / "s.toml").write_text('name = "s"\n[workload]\nrepeats = 3\ntarget_ci = 0.03\nmax_repeats = 2\n'
                                     '[[engines]]\nname = "e"\nkind = "endpoint"\nlauncher = "external"\n'
                                     'url = "http://127.0.0.1:9"\nmodel = "m"\n')
    result = CliRunner().invoke(cli, ["validate", str(tmp_path / "s.toml")])
    assert result.exit_code == 2
    assert result.output == f"Error: {tmp_path / 's.toml'}: workload: max_repeats (2) is below repeats (3); raise it\n"
