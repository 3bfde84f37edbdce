"""An engine from another package, through the entry point group `orch.engines`, with no change
to orch: tests/fixtures/plugin_engine (orch-echo-engine, a server that streams its prompt back)
installed by pip into a folder of its own, and orch run with that folder on its path: it lists
the kind, dry-runs a scenario that names it, and sweeps it. A package whose entry point is broken
costs one warning line, never orch's start."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

FIXTURE = Path(__file__).parent / "fixtures" / "plugin_engine"
SCENARIO = '''name = "echo"
[workload]
prompts = ["seeds"]
max_tokens = 8
warmup = 0
repeats = 1
[telemetry]
enabled = false
[[engines]]
name = "echo"
kind = "echo-server"
model = "any-label"
api = "completions"
ready_timeout_s = 30
[engines.speculation]
method = "echo-draft"
n_spec = [0, 4]
'''


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The fixture package installed the way a user installs one: pip, from its folder, offline."""
    target = tmp_path_factory.mktemp("site")
    # Built from a copy: setuptools leaves build/ and egg-info beside the sources it builds.
    source = shutil.copytree(FIXTURE, tmp_path_factory.mktemp("src") / FIXTURE.name,
                             ignore=shutil.ignore_patterns("build", "*.egg-info"))
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
                    "--no-build-isolation", "--target", str(target), str(source)], check=True,
                   capture_output=True, timeout=300)
    assert list(target.glob("orch_echo_engine-0.1.0.dist-info/entry_points.txt"))
    return target


def orch(site: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), *filter(None, [os.environ.get("PYTHONPATH")])])}
    return subprocess.run([sys.executable, "-c", "from orchestrator.cli import main; main()", *args], env=env,
                          capture_output=True, text=True, timeout=300, cwd=cwd)


def test_an_installed_plugin_engine_is_listed_with_its_package(site):
    result = orch(site, "engines", "list")
    assert result.returncode == 0, result.stderr
    kinds = result.stdout.splitlines()[0]
    assert kinds.startswith("engine kinds: llama-server, ") and kinds.endswith(", echo-server (orch-echo-engine 0.1.0)")
    assert result.stderr == ""


def test_a_scenario_naming_the_plugin_dry_runs_and_sweeps(site, tmp_path):
    path = tmp_path / "echo.toml"
    path.write_text(SCENARIO)
    dry = orch(site, "sweep", str(path), "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "cell 2/2 echo-echo-draft-n4 [process, completions]" in dry.stdout
    assert f"{sys.executable} -m orch_echo_engine.server --host 127.0.0.1 --port " in dry.stdout
    config = "<run folder>/cells/echo-echo-draft-n4/config/echo.json"
    command, writes = dry.stdout.rstrip().splitlines()[-2:]
    assert command.endswith(f" --config '{config}'")  # quoted: the folder's name has a space
    assert writes == f"  writes {config} (12 bytes) before it starts"  # {"draft": 4}
    ran = orch(site, "sweep", str(path), "--out", str(tmp_path / "runs"))
    assert ran.returncode == 0, ran.stdout + ran.stderr
    (run,) = [p for p in (tmp_path / "runs").iterdir() if p.is_dir()]
    rows = [json.loads(ln) for ln in (run / "requests.jsonl").read_text().splitlines()]
    assert len(rows) == 2 * 8 and all(r["ok"] and r["engine"] == "echo" for r in rows)
    assert "echo-server (a plugin): token counts from usage" in (run / "report" / "summary.md").read_text()
    # The engine's config file: written where its argument says, kept in the run, read by the server.
    cell = run / "cells" / "echo-echo-draft-n4"
    assert json.loads((cell / "config" / "echo.json").read_text()) == {"draft": 4}
    logs = "".join(p.read_text() for p in cell.glob("*.log"))
    assert f"echo server: draft 4 from {cell / 'config' / 'echo.json'}" in logs


def test_without_the_plugin_the_kind_is_refused_in_one_line(tmp_path):
    path = tmp_path / "echo.toml"
    path.write_text(SCENARIO)
    result = orch(tmp_path, "validate", str(path))
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "echo-server" in result.stderr


def test_a_broken_entry_point_is_one_warning_and_orch_still_runs(tmp_path):
    dist = tmp_path / "broken_engine-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-engine\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[orch.engines]\nbroken = no_such_module:Engine\nnot_one = json:loads\n")
    result = orch(tmp_path, "engines", "list")
    assert result.returncode == 0
    assert result.stderr.splitlines() == [
        "warning: engine plugin broken = no_such_module:Engine (broken-engine 0.1) cannot be loaded "
        "(ModuleNotFoundError: No module named 'no_such_module')",
        "warning: engine plugin not_one = json:loads (broken-engine 0.1) is not a subclass of engines.Engine with a kind"]
    assert "broken" not in result.stdout
