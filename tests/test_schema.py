"""run.json: every run folder says which records schema it holds; a folder from before run.json
still loads, and one this orch cannot read is refused in one line, before anything is appended."""

import json

import pytest
from click.testing import CliRunner

from orchestrator.cli import cli
from orchestrator.types.records import SCHEMA_VERSION
from orchestrator.results.rundir import RunDir

from .support.runs import make_run, req

ENGINES = {"e": {"kind": "llama-server", "model": "m"}}


def report(run):
    return CliRunner().invoke(cli, ["report", str(run)])


def a_run(tmp_path):
    rows = [req("e-n0", 0, v, key=f"a{v}") for v in (40, 42)] + [req("e-n4", 4, v, key=f"b{v}") for v in (80, 84)]
    return make_run(tmp_path / "run", rows, ENGINES)


def test_a_new_run_folder_records_the_schema_version(tmp_path):
    run = RunDir.create(tmp_path, "s")
    assert json.loads((run.path / "run.json").read_text())["schema_version"] == SCHEMA_VERSION == 1
    assert run.schema_version() == 1


def test_a_folder_from_before_run_json_loads_as_version_0(tmp_path):
    run = a_run(tmp_path)  # make_run writes no run.json, as orch did before schema 1
    assert RunDir(run).schema_version() == 0
    result = report(run)
    assert result.exit_code == 0, result.output
    assert "e-n4" in (run / "summary.csv").read_text()


@pytest.mark.parametrize("content, says", [
    ('{"schema_version": 2}', "schema_version 2 is newer than this orch reads (1); upgrade orch"),
    ('{"schema_version": "1"}', "no readable schema_version"),
    ('{"schema_version": true}', "no readable schema_version"),
    ('{"schema_version": -1}', "no readable schema_version"),
    ("[1]", "no readable schema_version"),
    ("not json", "no readable schema_version"),
    ('{"schema_version": 1e999}', "no readable schema_version"),
])
def test_a_run_json_this_orch_cannot_read_is_one_line_and_exit_1(tmp_path, content, says):
    run = a_run(tmp_path)
    (run / "run.json").write_text(content)
    result = report(run)
    assert result.exit_code == 1
    assert result.output.count("\n") == 1 and result.output.startswith(f"Error: {run / 'run.json'}: ")
    assert says in result.output
    assert not (run / "summary.csv").exists()


def test_resume_refuses_a_newer_schema_before_appending_anything(tmp_path):
    (tmp_path / "s.toml").write_text(
        'name = "s"\n[[engines]]\nname = "ep"\nkind = "endpoint"\nlauncher = "external"\n'
        'url = "http://127.0.0.1:9"\nmodel = "m"\nready_timeout_s = 1\n[engines.speculation]\nn_spec = [0]\n')
    first = CliRunner().invoke(cli, ["sweep", str(tmp_path / "s.toml"), "--out", str(tmp_path / "r")])
    (run,) = (tmp_path / "r").iterdir()
    assert json.loads((run / "run.json").read_text())["schema_version"] == 1, first.output
    (run / "run.json").write_text('{"schema_version": 9}')
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    result = CliRunner().invoke(cli, ["sweep", str(tmp_path / "s.toml"), "--out", str(tmp_path / "r"), "--resume"])
    assert result.exit_code == 1
    assert result.output.splitlines()[-1] == (f"Error: {run / 'run.json'}: schema_version 9 is newer than this orch "
                                              "reads (1); upgrade orch (pip install -U) to read this run")
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before
