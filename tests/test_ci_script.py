"""CI proves what it claims: without a Docker engine, .ci/run fails instead of letting the Docker tests skip."""

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def stub(folder: Path, name: str, script: str) -> None:
    path = folder / name
    path.write_text("#!/bin/sh\n" + script + "\n")
    path.chmod(0o755)


def test_ci_fails_when_dockerd_does_not_come_up(tmp_path):
    # Stand-ins on PATH: a docker client that never reaches an engine, a dockerd that dies at once,
    # and chromium present, so the only thing missing is the Docker engine.
    stub(tmp_path, "docker", "exit 1")
    stub(tmp_path, "dockerd", "echo 'failed to start daemon: injected' >&2; exit 1")
    stub(tmp_path, "chromium", "exit 0")
    stub(tmp_path, "apt-get", "echo 'apt-get must not run here' >&2; exit 1")
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}", "ORCH_CI_DOCKER_WAIT_S": "2",
           "ORCH_CI_DOCKERD_LOG": str(tmp_path / "dockerd.log")}
    proc = subprocess.run(["bash", str(ROOT / ".ci" / "run")], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "dockerd did not come up within 2 s; the Docker tests would not run" in proc.stderr
    assert "failed to start daemon: injected" in proc.stderr  # and shows why
    assert "pytest" not in proc.stdout  # it stopped before the tests, not after skipping some
