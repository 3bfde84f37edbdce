"""Ctrl-C and SIGTERM against a real `orch sweep` process and a real llama-server, then --resume."""

import os
import signal
import subprocess
import sys
import time

import pytest

from .support.runs import jsonl_rows as rows, real_scenario

pytestmark = pytest.mark.integration


ORCH = [sys.executable, "-c", "from orchestrator.cli import main; main()"]


def wait_for(predicate, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


def live_servers_on(port: int) -> list[int]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
            state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if b"--port" in cmd and cmd[cmd.index(b"--port") + 1] == str(port).encode() and state != "Z":
            found.append(int(pid))
    return found


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupt_mid_cell_stops_the_server_keeps_records_and_resume_finishes(tmp_path, sig, code, spawn_orch):
    scenario = tmp_path / "intr.toml"
    scenario.write_text(real_scenario("intr", max_tokens=48))
    out = tmp_path / "results"
    proc = spawn_orch("sweep", str(scenario), "--out", str(out),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    requests = lambda: rows(next(out.glob("intr-*"), out) / "requests.jsonl")
    # Interrupt during the second cell's measured requests.
    wait_for(lambda: any(r["cell_id"] == "llamacpp-ngram-mod-n4" and r["phase"] == "measured" for r in requests()))
    signalled = time.monotonic()
    proc.send_signal(sig)
    output = proc.communicate(timeout=30)[0].decode()
    assert time.monotonic() - signalled < 10  # servers stopped and orch gone within 10 s
    assert proc.returncode == code, output
    (run,) = out.glob("intr-*")

    cells = rows(run / "cells.jsonl")
    assert [(c["cell_id"], c["status"]) for c in cells] == [("llamacpp-n0", "ok"),
                                                           ("llamacpp-ngram-mod-n4", "interrupted")]
    port = int(cells[1]["argv"][cells[1]["argv"].index("--port") + 1])
    assert live_servers_on(port) == []
    before = requests()  # every line parses: nothing corrupt
    assert "--resume" in output

    resumed = subprocess.run([*ORCH, "sweep", str(scenario), "--out", str(out), "--resume"],
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    after = requests()
    assert after[: len(before)] == before  # nothing rewritten
    assert not any(r["cell_id"] == "llamacpp-n0" for r in after[len(before):])  # finished cell not re-run
    measured_n4 = {r["key"] for r in after if r["cell_id"] == "llamacpp-ngram-mod-n4"
                   and r["phase"] == "measured" and r["ok"]}
    assert len(measured_n4) == 6
    assert rows(run / "cells.jsonl")[-1]["status"] == "ok"
