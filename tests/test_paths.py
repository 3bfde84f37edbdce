"""Names that become paths stay inside the run folder; --resume picks runs of exactly this
scenario; an OSError making a cell's folder fails that cell as a record, not the sweep."""

import io
import json
from pathlib import Path

from click.testing import CliRunner
from rich.console import Console

from orchestrator.cli import cli
from orchestrator.progress import SweepProgress
from orchestrator.types.records import RequestRecord
from orchestrator.results.rundir import RunDir
from orchestrator.sweep.runner import Sweep
from orchestrator.sweep.scenario_file import load_scenario

ENDPOINT = """name = "{name}"
[workload]
prompts = ["repeat"]
warmup = 0
[[engines]]
name = "ep"
kind = "endpoint"
launcher = "external"
url = "http://127.0.0.1:9"
model = "m"
ready_timeout_s = 1
"""


def scenario(tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(ENDPOINT.format(name=name))
    return path


def test_resume_takes_only_runs_of_exactly_this_scenario(tmp_path):
    out = tmp_path / "results"
    for folder in ("rs-big-20261123-101011", "rs-20261123-101010", "rs-20261123-101010-2", "rs-20261123-101010-10"):
        (out / folder).mkdir(parents=True)
        (out / folder / "scenario.toml").write_text("")
    assert RunDir.latest(out, "rs").path.name == "rs-20261123-101010-10"  # -10 after -2, not before
    assert RunDir.latest(out, "rs-big").path.name == "rs-big-20261123-101011"
    assert RunDir.latest(out, "r") is None


def test_resume_of_a_scenario_with_no_run_of_its_own_says_so(tmp_path):
    out = tmp_path / "results"
    (out / "rs-big-20261123-101011").mkdir(parents=True)
    (out / "rs-big-20261123-101011" / "scenario.toml").write_text("")
    result = CliRunner().invoke(cli, ["sweep", str(scenario(tmp_path, "rs")), "--resume", "--out", str(out)])
    assert result.exit_code == 1
    assert result.output == f"Error: --resume: no earlier run of 'rs' under {out}; drop --resume to start one\n"


def test_a_method_label_cannot_climb_out_of_the_run_folder(tmp_path):
    result = CliRunner().invoke(cli, ["bench", "--url", "http://127.0.0.1:9", "--model", "m", "--method", "../../x",
                                      "--n-spec", "1", "--out", str(tmp_path / "r")])
    assert result.exit_code == 2
    assert result.output == ("Error: orch bench: engines[0].speculation.method: use at most 64 letters, digits, '.', "
                             "'_' and '-', starting with a letter or digit (it names result folders)\n")
    assert not (tmp_path / "r").exists() and not list(tmp_path.parent.glob("x"))


def test_a_label_too_long_for_a_folder_name_is_named_as_the_label(tmp_path):
    result = CliRunner().invoke(cli, ["bench", "--url", "http://127.0.0.1:9", "--model", "m", "--label", "a" * 59])
    assert result.exit_code == 2
    assert result.output == "Error: orch bench: --label: at most 58 characters (got 59); shorten it\n"


def test_a_cell_folder_that_cannot_be_made_fails_that_cell_as_a_record(tmp_path):
    sc = load_scenario(scenario(tmp_path, "cf"))
    run = RunDir.create(tmp_path / "out", sc.name)
    (run.path / "cells").write_text("a file where the cells' folder should be")
    sweep = Sweep(sc, tmp_path, SweepProgress(Console(file=io.StringIO())))
    (rec,) = sweep.execute(run)
    assert rec.status == "failed"
    assert rec.error == f"cannot run the cell: {run.path / 'cells' / 'ep-n0'}: Not a directory"
    assert json.loads((run.path / "cells.jsonl").read_text())["error"] == rec.error


def test_a_write_error_in_a_bench_run_names_a_fix_that_exists(tmp_path):
    run = RunDir.create(tmp_path, "bench-x", carry_on="run orch bench again")
    (run.path / "requests.jsonl").mkdir()  # appending to it fails with EISDIR
    try:
        run.append_request(RequestRecord.model_construct(ok=True))
    except Exception as exc:  # noqa: BLE001
        message = str(exc)
    assert message == (f"cannot write {run.path / 'requests.jsonl'}: Is a directory; every line before this one "
                       "is kept; fix that, then run orch bench again")
    assert "--resume" not in message


def test_an_empty_label_is_refused_not_replaced(tmp_path):
    result = CliRunner().invoke(cli, ["bench", "--url", "http://127.0.0.1:9", "--model", "m", "--label", ""])
    assert result.exit_code == 2
    assert result.output == "Error: orch bench: --label: empty; name the server, or leave --label out\n"
