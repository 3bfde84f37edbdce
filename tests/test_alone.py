"""Every command works alone: a dry run of each shipped scenario on a machine where nothing is set
up (HOME and orch's cache empty) prints every cell and its command line and names what `orch
setup` would make, and starts or installs nothing."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.sweep.runner import plan_cells
from orchestrator.sweep.scenario_file import load_scenario

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "scenarios").glob("*.toml"))


def empty_home(tmp_path: Path) -> dict:
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("ORCH_CACHE", "XDG_CACHE_HOME")}
    return {**env, "HOME": str(home), "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"}


@pytest.mark.parametrize("scenario", SHIPPED, ids=lambda p: p.stem)
def test_a_dry_run_before_setup_prints_every_cell_and_what_setup_would_make(scenario, tmp_path):
    env = empty_home(tmp_path)
    done = subprocess.run([sys.executable, "-c", "from orchestrator.cli import main; main()", "sweep", str(scenario), "--dry-run"],
                          capture_output=True, text=True, env=env, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    cells = plan_cells(load_scenario(scenario))
    said = re.findall(r"^cell (\d+)/(\d+) (\S+)", done.stdout, re.M)
    assert [c for _, _, c in said] == [c.id for c in cells] and said[-1][:2] == (str(len(cells)), str(len(cells)))
    local = [e for e in load_scenario(scenario).engines if e.launcher == "process"]
    for engine in local:  # nothing is installed in an empty cache: each local engine says so, and how
        assert re.search(rf"^engine {re.escape(engine.name)}: not set up yet: .*\(`orch setup {re.escape(str(scenario))}` "
                         r"does it\)$", done.stdout, re.M), done.stdout
    assert not (Path(env["HOME"]) / ".cache" / "orch").exists()  # nothing installed, converted or fetched
