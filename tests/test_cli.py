import re
from pathlib import Path

from click.testing import CliRunner

from orchestrator.cli import cli

SCENARIO = """
name = "t"
[workload]
prompts = ["repeat"]
concurrency = [1, 4]
[[engines]]
name = "llamacpp"
kind = "llama-server"
model = "{model}"
binary = "/opt/bin/llama-server"
args = ["-c", "2048", "--alias", "a b;$(rm -rf /)"]
[engines.speculation]
method = "ngram-mod"
n_spec = [0, 4]
"""


def scenario(tmp_path) -> Path:
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    path = tmp_path / "t.toml"
    path.write_text(SCENARIO.format(model=model))
    return path


def test_validate_prints_one_ok_line(tmp_path):
    path = scenario(tmp_path)
    result = CliRunner().invoke(cli, ["validate", str(path)])
    assert result.exit_code == 0
    assert result.output == f"{path}: ok (1 engine(s), 2 cells)\n"


def test_dry_run_prints_every_cell_and_command_and_starts_nothing(tmp_path, no_processes):
    path = scenario(tmp_path)
    result = CliRunner().invoke(cli, ["sweep", str(path), "--dry-run", "--out", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    out = re.sub(r"--port \d+", "--port PORT", result.output).splitlines()
    m = tmp_path / "m.gguf"
    assert out == [
        "sweep t: 2 cells; per cell 1 warm-up and 3 prompts x 1 repeats x concurrency [1, 4] measured requests",
        "(ports are picked free when each cell starts)",
        "cell 1/2 llamacpp-n0 [process, chat]",
        f"  /opt/bin/llama-server --host 127.0.0.1 --port PORT --parallel 4 --metrics -m {m} -c 2048 "
        "--alias 'a b;$(rm -rf /)'",
        "cell 2/2 llamacpp-ngram-mod-n4 [process, chat]",
        f"  /opt/bin/llama-server --host 127.0.0.1 --port PORT --parallel 4 --metrics -m {m} "
        "--spec-type ngram-mod --spec-ngram-mod-n-max 4 -c 2048 --alias 'a b;$(rm -rf /)'",
    ]
    assert not (tmp_path / "r").exists()


def test_missing_binary_stops_before_any_run_folder(tmp_path, no_processes, monkeypatch):
    path = scenario(tmp_path)
    path.write_text(path.read_text().replace('binary = "/opt/bin/llama-server"\n', ""))
    monkeypatch.setenv("ORCH_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("PATH", "/nonexistent")
    result = CliRunner().invoke(cli, ["sweep", str(path), "--out", str(tmp_path / "r")])
    assert result.exit_code == 1
    assert result.output == ("Error: engine 'llamacpp': llama-server not found on PATH or in orch's cache; "
                             "run `orch engines install llama-server` or set binary = \"/path/to/llama-server\"\n")
    assert not (tmp_path / "r").exists()


def test_report_refuses_a_folder_that_is_not_a_run(tmp_path):
    result = CliRunner().invoke(cli, ["report", str(tmp_path)])
    assert result.exit_code == 1
    assert result.output == (f"Error: {tmp_path} holds no requests.jsonl or cells.jsonl; "
                             "pass a run folder made by orch sweep\n")


def test_binary_that_does_not_exist(tmp_path, no_processes):
    path = scenario(tmp_path)
    result = CliRunner().invoke(cli, ["sweep", str(path), "--out", str(tmp_path / "r")])
    assert result.exit_code == 1
    assert result.output == ("Error: engine 'llamacpp': binary /opt/bin/llama-server does not exist or is not "
                             "executable; fix engines.binary or run `orch engines install llama-server`\n")
    assert not (tmp_path / "r").exists()


def test_resume_without_an_earlier_run(tmp_path, no_processes):
    path = scenario(tmp_path)
    fake = tmp_path / "llama-server"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    path.write_text(path.read_text().replace("/opt/bin/llama-server", str(fake)))
    result = CliRunner().invoke(cli, ["sweep", str(path), "--resume", "--out", str(tmp_path / "r")])
    assert result.exit_code == 1
    assert "--resume: no earlier run of 't'" in result.output


def test_every_command_has_help_with_an_example():
    for args in (["sweep"], ["report"], ["validate"], ["engines", "install"]):
        result = CliRunner().invoke(cli, [*args, "--help"])
        assert result.exit_code == 0 and "Example: orch " in result.output


DOCKER_SCENARIO = """
name = "dk"
[[engines]]
name = "llamacpp"
kind = "llama-server"
launcher = "docker"
model = "{model}"
[engines.docker]
image = "orch-test/llama-server:cpu"
"""


def test_unreachable_docker_is_one_line_naming_docker_host(tmp_path, monkeypatch, no_processes):
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    path = tmp_path / "dk.toml"
    path.write_text(DOCKER_SCENARIO.format(model=model))
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-docker.sock")
    result = CliRunner().invoke(cli, ["sweep", str(path), "--out", str(tmp_path / "r")])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"Error: Docker engine not reachable at unix://{tmp_path}/no-docker.sock (")
    assert lines[0].endswith("start it (dockerd, or systemctl start docker) or point DOCKER_HOST at a running one")
    assert not (tmp_path / "r").exists()


def test_doctor_names_the_fix_for_each_missing_piece(tmp_path, monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-docker.sock")
    monkeypatch.setenv("PATH", "/nonexistent")
    result = CliRunner().invoke(cli, ["doctor"])
    assert result.exit_code == 0
    out = result.output.splitlines()
    assert out[0].startswith(f"MISSING docker: Docker engine not reachable at unix://{tmp_path}/no-docker.sock")
    assert out[1] == "        fix: start dockerd (sudo systemctl start docker), or set DOCKER_HOST=ssh://user@gpu-host"
    assert "MISSING GPUs: nvidia-smi not found on this host" in out
