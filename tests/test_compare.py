from click.testing import CliRunner

from orchestrator.cli import cli

from .support.runs import make_run
from .support.runs import req


def test_compare_picks_the_best_setting_per_engine_across_runs(tmp_path):
    a = [req("e-n0", 0, v, key=f"p{i}") for i, v in enumerate((40, 41, 42, 43, 44, 45))]
    a += [req("e-n4", 4, v, key=f"p{i}") for i, v in enumerate((80, 81, 82, 83, 84, 85))]
    a += [req("e-n8", 8, v, key=f"p{i}") for i, v in enumerate((60, 61, 62, 63, 64, 65))]
    # Run b: pairs that go both ways (1.1x, 0.92x, 1.0x, 1.05x, 0.95x, 1.0x); each run's speedup is its own.
    b = [req("e-n0", 0, v, key=f"p{i}") for i, v in enumerate((40, 50, 45, 40, 60, 50))]
    b += [req("e-n4", 4, v, key=f"p{i}") for i, v in enumerate((44, 46, 45, 42, 57, 50))]
    run_a = make_run(tmp_path / "run-a", a, {"e": {"kind": "llama-server", "model": "m"}})
    run_b = make_run(tmp_path / "run-b", b, {"e": {"kind": "llama-server", "model": "m"}})
    result = CliRunner().invoke(cli, ["compare", str(run_a), str(run_b), "--out", str(tmp_path / "cmp")])
    assert result.exit_code == 0, result.output
    lines = [ln.split() for ln in result.output.splitlines()]
    assert lines[0] == ["run", "machine", "engine", "prompts", "conc", "baseline", "best", "speedup", "verdict"]
    assert "Test CPU (2 cores, no GPU)" in result.output  # runs labelled by their recorded machine
    row_a = next(ln for ln in result.output.splitlines() if ln.startswith("run-a"))
    row_b = next(ln for ln in result.output.splitlines() if ln.startswith("run-b"))
    assert "n4 ngram-mod 82.5" in row_a and "faster" in row_a
    assert "n4 ngram-mod 45.5" in row_b and "no clear difference" in row_b
    assert (tmp_path / "cmp" / "compare.png").is_file() and (tmp_path / "cmp" / "compare.svg").is_file()
