"""Sweep-level faults on the real llama-server and model."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

from orchestrator.cli import cli

from .support.runs import jsonl_rows as rows, workload_scenario as scenario, llama_server_binary

pytestmark = pytest.mark.integration
ORCH = [sys.executable, "-c", "from orchestrator.cli import main; main()"]


def engine(name, model="gemma-3-270m", args=(), n_spec="[0]"):
    extra = "".join(f', "{a}"' for a in args)
    return (f'[[engines]]\nname = "{name}"\nkind = "llama-server"\nmodel = "{model}"\napi = "completions"\n'
            f'binary = "{llama_server_binary()}"\nargs = ["-c", "2048", "-t", "2"{extra}]\nready_timeout_s = 60\n'
            f'[engines.speculation]\nmethod = "ngram-mod"\nn_spec = {n_spec}\n')


def test_servers_that_fail_to_start_are_recorded_and_the_sweep_goes_on(tmp_path):
    corrupt = tmp_path / "corrupt.gguf"
    corrupt.write_bytes(b"GGUF" + os.urandom(4096))
    path = scenario(tmp_path, "startfail", engine("badflag", args=["--no-such-flag"]) +
                    engine("badmodel", model=str(corrupt)) + engine("good"))
    result = CliRunner().invoke(cli, ["sweep", str(path), "--out", str(tmp_path / "r")])
    assert result.exit_code == 1, result.output  # some cells failed
    (run,) = (tmp_path / "r").iterdir()
    bad_flag, bad_model, good = rows(run / "cells.jsonl")
    assert bad_flag["status"] == "failed" and "exited with code" in bad_flag["error"]
    assert "no-such-flag" in bad_flag["log_tail"]
    assert bad_model["status"] == "failed" and "model" in bad_model["log_tail"].lower()
    assert good["status"] == "ok" and good["requests_ok"] == 3


def test_port_already_in_use_fails_the_cell_with_the_servers_reason(tmp_path, monkeypatch):
    import orchestrator.sweep.runner as runner

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    monkeypatch.setattr(runner, "free_port", lambda: taken.getsockname()[1])  # fault: a port someone holds
    path = scenario(tmp_path, "porttaken", engine("llamacpp"))
    result = CliRunner().invoke(cli, ["sweep", str(path), "--out", str(tmp_path / "r")])
    taken.close()
    assert result.exit_code == 1
    (run,) = (tmp_path / "r").iterdir()
    (cell,) = rows(run / "cells.jsonl")
    assert cell["status"] == "failed" and "bind" in cell["log_tail"].lower()


def test_server_killed_mid_stream_gives_error_rows_fast_and_the_next_cell_runs(tmp_path, spawn_orch):
    path = scenario(tmp_path, "srvkill", engine("llamacpp", n_spec="[0, 4]"), max_tokens=128)
    out = tmp_path / "r"
    proc = spawn_orch("sweep", str(path), "--out", str(out), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while not any(r["phase"] == "measured" for r in rows(next(out.glob("srvkill-*"), out) / "requests.jsonl")):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    (server_pid,) = children(proc.pid, b"llama-server")
    time.sleep(0.3)  # a request is in flight
    killed_at = time.time()
    os.kill(server_pid, signal.SIGKILL)
    output = proc.communicate(timeout=300)[0].decode()
    assert proc.returncode == 1, output
    (run,) = out.iterdir()
    first, second = rows(run / "cells.jsonl")
    assert first["status"] == "failed" and first["error"] == "server exited during the measured requests"
    errors = [r for r in rows(run / "requests.jsonl") if r["cell_id"] == first["cell_id"] and not r["ok"]]
    assert errors and all(r["wall_start"] + (r["t_end"] - r["t_start"]) - killed_at < 5 for r in errors)
    assert second["status"] == "ok"


def test_results_folder_that_cannot_be_written(tmp_path, no_processes):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    path = scenario(tmp_path, "nowrite", engine("llamacpp"))
    result = CliRunner().invoke(cli, ["sweep", str(path), "--out", str(blocker / "results")])
    assert result.exit_code == 1
    assert result.output.startswith(f"Error: cannot create the run folder {blocker}/results/nowrite-")
    assert result.output.rstrip().endswith("pass a writable --out")


def alive(pid: int) -> bool:
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def children(pid: int, name: bytes) -> list[int]:
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()
            cmd = open(f"/proc/{entry}/cmdline", "rb").read()
        except OSError:
            continue
        if int(stat[1]) == pid and name in cmd and stat[0] != "Z":
            found.append(int(entry))
    return found


def test_orch_killed_with_sigkill_then_resume_completes_exactly(tmp_path, spawn_orch):
    path = scenario(tmp_path, "orchkill", engine("llamacpp", n_spec="[0, 4]"), max_tokens=32, repeats=2)
    out = tmp_path / "r"
    proc = spawn_orch("sweep", str(path), "--out", str(out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while len([r for r in rows(next(out.glob("orchkill-*"), out) / "requests.jsonl") if r["phase"] == "measured"]) < 2:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    servers = children(proc.pid, b"llama-server")
    proc.kill()
    proc.wait()
    # The server dies with orch (parent-death signal): nothing is left running.
    deadline = time.monotonic() + 10
    while any(alive(pid) for pid in servers):
        assert time.monotonic() < deadline, "llama-server outlived orch by 10 s"
        time.sleep(0.1)
    (run,) = out.iterdir()
    with open(run / "requests.jsonl", "a") as f:
        f.write('{"ok": true, "cell_id": "llamacpp-n0", "tru')  # what a kill mid-write leaves
    from orchestrator.results.rundir import RunDir
    reader = RunDir(run)
    before = reader.request_records()
    assert [w for w in reader.warnings if "ignoring a truncated last line" in w], reader.warnings
    result = CliRunner().invoke(cli, ["sweep", str(path), "--out", str(out), "--resume"])
    assert result.exit_code == 0, result.output
    assert "warning: requests.jsonl: dropped a truncated last line (43 bytes)" in result.output
    import pandas as pd
    s = pd.read_csv(run / "summary.csv")
    assert list(s["requests_ok"]) == [6, 6] and list(s["requests_failed"]) == [0, 0]  # as an uninterrupted run
    measured = [r for r in RunDir(run).request_records() if r.phase == "measured"]
    assert len({(r.cell_id, r.key) for r in measured}) == 12
    assert len(before) >= 2


def test_disk_full_while_writing_is_a_clear_error_and_keeps_what_was_written(tmp_path):
    import resource

    path = scenario(tmp_path, "diskfull", engine("llamacpp"), max_tokens=16, repeats=2)
    out = tmp_path / "r"

    def limit_files():  # fault: every file orch writes may grow to 6 kB, then EFBIG
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (6_000, 6_000))

    proc = subprocess.run([*ORCH, "sweep", str(path), "--out", str(out)], capture_output=True, text=True,
                          timeout=300, preexec_fn=limit_files)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("Error: cannot write ") and "File too large" in last and "--resume" in last
    (run,) = out.iterdir()
    from orchestrator.results.rundir import RunDir
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        kept = RunDir(run).request_records()
    assert kept and all(r.cell_id for r in kept)  # complete lines intact


def test_shell_metacharacters_reach_the_server_as_one_literal_argument(tmp_path):
    argv_file, canary = tmp_path / "argv.json", tmp_path / "pwned"
    fake = tmp_path / "fake-llama-server"
    fake.write_text(f"#!{sys.executable}\nimport json, sys\njson.dump(sys.argv[1:], open({str(argv_file)!r}, 'w'))\n"
                    "sys.exit(3)\n")
    fake.chmod(0o755)
    evil = f"a b; touch {canary}; $(touch {canary}) `touch {canary}`"
    text = engine("llamacpp").replace(f'binary = "{llama_server_binary()}"', f'binary = "{fake}"')
    text = text.replace('"-t", "2"]', '"-t", "2", "--alias", "' + evil.replace('"', '\\"') + '"]')
    result = CliRunner().invoke(cli, ["sweep", str(scenario(tmp_path, "shell", text)), "--out", str(tmp_path / "r")])
    assert result.exit_code == 1  # the fake server exits 3
    argv = json.loads(argv_file.read_text())
    assert argv[argv.index("--alias") + 1] == evil
    assert not canary.exists()


def test_api_key_for_url_endpoints_is_sent_and_never_written(tmp_path, monkeypatch):
    from .support.fake_server import FakeServer

    secret = "sk-orch-test-9f8e7d6c5b4a"
    monkeypatch.setenv("MY_ENDPOINT_KEY", secret)
    with FakeServer(total_tokens=8, tokens_per_chunk=2) as server:
        result = CliRunner().invoke(cli, ["bench", "--url", server.url, "--model", "m", "--api-key-env",
                                          "MY_ENDPOINT_KEY", "--out", str(tmp_path / "r"),
                                          "--set", 'workload.prompts=["repeat"]'])
        assert result.exit_code == 0, result.output
        assert {h.get("Authorization") for h in server.headers} == {f"Bearer {secret}"}
    assert secret not in result.output
    written = [f for f in (tmp_path / "r").rglob("*") if f.is_file()]
    assert len(written) > 10 and not [f for f in written if secret.encode() in f.read_bytes()]
    assert "MY_ENDPOINT_KEY" in next((tmp_path / "r").glob("*/scenario.toml")).read_text()  # the name only


def test_a_log_shows_progress_lines_while_the_sweep_runs(tmp_path, spawn_orch):
    """Output to a pipe (what `| tee log`, nohup and CI give): plain lines arrive while the sweep
    runs, not only when it ends. The real llama-server and model."""
    path = scenario(tmp_path, "teelog", engine("llamacpp", n_spec="[0, 8]"), max_tokens=32, repeats=4)
    proc = spawn_orch("sweep", str(path), "--out", str(tmp_path / "r"), stdout=subprocess.PIPE,
                      stderr=subprocess.STDOUT)
    seen_running = []
    for raw in proc.stdout:
        line = raw.decode()
        seen_running.append((line.rstrip("\n"), proc.poll() is None))
    proc.wait(60)
    assert proc.returncode == 0, "\n".join(ln for ln, _ in seen_running)
    live = [ln for ln, running in seen_running if running]
    start = next(ln for ln in live if "cell 1/2 llamacpp-n0: starting server (12 requests to measure)" in ln)
    assert start.startswith("[00:")
    assert any(re.search(r"cell 1/2 llamacpp-n0: 10/12 requests, median [\d.]+ tok/s so far$", ln) for ln in live)
    assert any(re.search(r"cell 1/2 llamacpp-n0: ok in \d+ s; about .+ left for 1 more cell\(s\) at this pace$", ln)
               for ln in live)
    assert any("cell 2/2 llamacpp-ngram-mod-n8: ok in" in ln for ln, _ in seen_running)
    assert not any("\x1b[" in ln for ln, _ in seen_running)  # no terminal control codes in a log


def test_telemetry_that_breaks_never_fails_a_cell_and_can_be_turned_off(tmp_path, monkeypatch):
    import orchestrator.sweep.runner as runner

    def broken(*a, **k):  # fault: an NVML install that raises something other than NVMLError
        raise RuntimeError("libnvidia-ml.so: wrong ELF class")

    monkeypatch.setattr(runner, "CellTelemetry", broken)
    path = scenario(tmp_path, "telebroken", engine("llamacpp"))
    result = CliRunner().invoke(cli, ["sweep", str(path), "--out", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    assert "telemetry off for this cell: RuntimeError: libnvidia-ml.so: wrong ELF class" in result.output
    (run,) = (tmp_path / "r").iterdir()
    (cell,) = rows(run / "cells.jsonl")
    assert cell["status"] == "ok" and cell["requests_ok"] == 3 and "telemetry" not in cell
    monkeypatch.undo()
    off = CliRunner().invoke(cli, ["sweep", str(path), "--out", str(tmp_path / "off"), "--set", "telemetry.enabled=false"])
    assert off.exit_code == 0, off.output
    (run,) = (tmp_path / "off").iterdir()
    (cell,) = rows(run / "cells.jsonl")
    assert "telemetry" not in cell and not (run / "cells" / "llamacpp-n0" / "telemetry.jsonl").exists()
