"""Cells side by side, for real: real llama-server and Gemma 3 270M on two devices of this host
(core sets), and on a real local Ray cluster of two node processes, each declaring one device of
one core (ray from PyPI, in orch's `test` extra). The sequential sweep of the same scenario is the
reference: the same record fields and counts, whatever ran beside what."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest

from .support.runs import ORCH, real_scenario

pytestmark = pytest.mark.integration

N_SPEC = "[0, 4, 8]"  # three cells on two devices: one device runs a second cell after its first
RESOURCE = ["--set", 'placement.resource="orch_device"']


def lines(path: Path) -> list[dict]:
    return [json.loads(ln) for ln in path.read_text().splitlines()]


def sweep(scenario: Path, out: Path, *args: str, timeout: float = 600) -> tuple[Path, subprocess.CompletedProcess]:
    done = subprocess.run([*ORCH, "sweep", str(scenario), "--out", str(out), *args], capture_output=True, text=True,
                          timeout=timeout)
    runs = [p for p in out.iterdir() if p.is_dir() and p.name != "compare"]
    assert len(runs) == 1, f"exit {done.returncode}: {done.stderr[-3000:]}"
    return runs[0], done


def shape(run: Path) -> tuple[Counter, Counter, set[str], set[str]]:
    """Per cell: requests by phase and outcome; cells by status; the fields requests and cells carry."""
    reqs, cells = lines(run / "requests.jsonl"), lines(run / "cells.jsonl")
    return (Counter((r["cell_id"], r["phase"], r["ok"]) for r in reqs), Counter((c["cell_id"], c["status"]) for c in cells),
            {k for r in reqs for k in r}, {k for c in cells for k in c})


@pytest.fixture(scope="module")
def scenario(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("sbs") / "sbs.toml"
    path.write_text(real_scenario("sbs", prompts="repeat", max_tokens=24, repeats=2, n_spec=N_SPEC))
    return path


@pytest.fixture(scope="module")
def sequential(scenario, tmp_path_factory) -> Path:
    run, done = sweep(scenario, tmp_path_factory.mktemp("seq"))
    assert done.returncode == 0, done.stderr[-3000:]
    return run


@pytest.fixture(scope="module")
def two_devices(scenario, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    run, done = sweep(scenario, tmp_path_factory.mktemp("dev"), "--set", 'placement.cores=["0", "1"]')
    assert done.returncode == 0, done.stderr[-3000:]
    return run, done


def assert_same_records(run: Path, sequential: Path) -> None:
    """The counts of a sequential sweep's records, per cell, phase and outcome, and its fields,
    plus `placement` in each cell record."""
    reqs, cells, req_fields, cell_fields = shape(run)
    seq_reqs, seq_cells, seq_req_fields, seq_cell_fields = shape(sequential)
    assert reqs == seq_reqs and cells == seq_cells
    assert sum(reqs.values()) == 3 * (1 + 2 * 3)  # 3 cells x (1 warm-up + 2 repeats x the 3 repeat prompts)
    # `reconnected` is an incident of one request (llama-server closed a kept-alive connection just
    # as it went out), written only where it happened: either run may have it, or neither.
    assert req_fields - {"reconnected"} == seq_req_fields - {"reconnected"}
    assert cell_fields == seq_cell_fields | {"placement"}


def test_two_devices_on_one_host_give_the_records_of_a_sequential_sweep(sequential, two_devices):
    assert_same_records(two_devices[0], sequential)


def test_each_cell_ran_pinned_to_its_device_and_says_what_ran_beside_it(two_devices):
    run, done = two_devices
    cells = {c["cell_id"]: c for c in lines(run / "cells.jsonl")}
    assert {tuple(c["placement"]["cores"]) for c in cells.values()} == {(0,), (1,)}
    for c in cells.values():
        assert c["argv"][-2:] == ["-t", "1"]  # llama-server's threads fitted to the device's one core
        # the kernel held the server to one core: its process tree never had more than one busy
        assert all(w["cpu_util"] <= 1.1 for w in c["telemetry"].values())
    n0, n4 = cells["llamacpp-n0"], cells["llamacpp-ngram-mod-n4"]
    assert n0["placement"]["beside"] and "llamacpp-n0" in n4["placement"]["beside"]  # they started together
    assert "they shared its CPU, PCIe and memory bandwidth" in done.stdout
    assert "they shared its CPU, PCIe and memory bandwidth" in (run / "report" / "summary.md").read_text()


def test_blocks_on_two_devices_run_one_block_after_the_other(scenario, tmp_path):
    """Side by side, the blocks still come in order: every start of block 2 begins after every
    start of block 1 ended, so that drift falls between blocks as it does one start at a time."""
    run, done = sweep(scenario, tmp_path, "--set", 'placement.cores=["0", "1"]', "--set", "workload.blocks=2")
    assert done.returncode == 0, done.stderr[-3000:]
    cells = lines(run / "cells.jsonl")
    assert Counter((c["cell_id"], c["block"], c["status"]) for c in cells) == Counter(
        (cid, b, "ok") for cid in ("llamacpp-n0", "llamacpp-ngram-mod-n4", "llamacpp-ngram-mod-n8") for b in (0, 1))
    first_ends = max(c["started_at"] + c["seconds"] for c in cells if c["block"] == 0)
    assert min(c["started_at"] for c in cells if c["block"] == 1) >= first_ends - 1.0
    for cid in ("llamacpp-n0", "llamacpp-ngram-mod-n4"):
        assert (run / "cells" / cid / "server.log").is_file() and (run / "cells" / cid / "server.b1.log").is_file()


def llama_servers(run_name_env: str | None = None) -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter(["name", "environ"]):
        try:
            if p.info["name"] == "llama-server" and (run_name_env is None or
                                                       (p.info["environ"] or {}).get("ORCH_CORES") == run_name_env):
                found.append(p)
        except psutil.Error:
            continue
    return found


def gone(procs: list[psutil.Process], within_s: float = 60) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if not any(_running(p) for p in procs):
            return True
        time.sleep(0.5)
    return False


def _running(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def wait_for(what, within_s: float = 120, every_s: float = 0.2):
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        got = what()
        if got:
            return got
        time.sleep(every_s)
    raise AssertionError(f"not within {within_s} s: {what}")


def test_ctrl_c_stops_both_devices_servers_and_resume_finishes_the_sweep(scenario, tmp_path, spawn_orch):
    out = tmp_path / "out"
    args = ["sweep", str(scenario), "--out", str(out), "--set", 'placement.cores=["0", "1"]']
    proc = spawn_orch(*args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    servers = wait_for(lambda: (s := llama_servers()) and len(s) == 2 and s)
    time.sleep(1.5)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(90) == 130
    assert gone(servers, 20)
    (run,) = out.iterdir()
    statuses = {c["cell_id"]: c["status"] for c in lines(run / "cells.jsonl")}
    assert set(statuses.values()) == {"interrupted"} and len(statuses) == 2
    resumed = subprocess.run([*ORCH, *args, "--resume"], capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    latest = {c["cell_id"]: c["status"] for c in lines(run / "cells.jsonl")}
    assert latest == {"llamacpp-n0": "ok", "llamacpp-ngram-mod-n4": "ok", "llamacpp-ngram-mod-n8": "ok"}


# ---------------------------------------------------------------- a real Ray cluster on this machine


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    def __init__(self, tmp: Path):
        self.port, self.client_port, self.procs, self.tmp = free_port(), free_port(), {}, tmp
        self.ray = str(Path(sys.executable).with_name("ray"))

    def start(self, name: str, cores: str, *args: str) -> None:
        """One node process (ray start --block), in a process group of its own, so that the test
        can kill it as a machine dies: everything at once."""
        common = ["--num-cpus", "1", "--resources", json.dumps({"orch_device": 1}),
                  "--object-store-memory", str(80 * 2**20), "--disable-usage-stats", "--block"]
        env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "ORCH_CORES": cores}
        log = open(self.tmp / f"{name}.log", "w")
        self.procs[name] = subprocess.Popen([self.ray, "start", *args, *common], env=env, stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True)

    def alive_nodes(self) -> int:
        out = subprocess.run([self.ray, "status", "--address", f"127.0.0.1:{self.port}"], capture_output=True,
                             text=True, timeout=60, env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}).stdout
        active = out.split("Active:", 1)[-1].split("Pending:", 1)[0]
        return sum(ln.strip().startswith("1 node_") for ln in active.splitlines())

    def kill(self, name: str) -> None:
        try:
            os.killpg(self.procs[name].pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.procs[name].wait(10)

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for name, proc in self.procs.items():
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill(name)


@contextmanager
def ray_cluster(tmp: Path):
    """A head and a second node on this machine, each declaring one device (orch_device) of one core."""
    c = Cluster(tmp)
    try:
        c.start("head", "0", "--head", "--port", str(c.port), "--ray-client-server-port", str(c.client_port),
                "--include-dashboard", "false")
        wait_for(lambda: socket.socket().connect_ex(("127.0.0.1", c.port)) == 0, 90, 0.5)
        c.start("second", "1", "--address", f"127.0.0.1:{c.port}")
        wait_for(lambda: c.alive_nodes() == 2, 120, 1.0)
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with ray_cluster(tmp_path_factory.mktemp("ray")) as c:
        yield c


@pytest.fixture(scope="module")
def on_ray(scenario, cluster, tmp_path_factory):
    """The scenario through Ray Client (ray://), the address form a remote cluster's users give."""
    run, done = sweep(scenario, tmp_path_factory.mktemp("ray-run"), "--cluster", f"ray://127.0.0.1:{cluster.client_port}",
                      *RESOURCE)
    assert done.returncode == 0, done.stderr[-3000:]
    return run, done


def test_a_ray_cluster_spreads_the_cells_over_its_nodes_with_the_records_of_a_sequential_sweep(sequential, on_ray):
    run, done = on_ray
    assert_same_records(run, sequential)
    cells = lines(run / "cells.jsonl")
    nodes = {c["placement"]["node"] for c in cells}
    assert len(nodes) == 2 and {tuple(c["placement"]["cores"]) for c in cells} == {(0,), (1,)}
    assert all(c["argv"][-2:] == ["-t", "1"] for c in cells)
    # each node's own environment.json, named as the cells name their node
    assert {p.name for p in (run / "nodes").iterdir()} == nodes
    for node in nodes:
        env = json.loads((run / "nodes" / node / "environment.json").read_text())
        assert env["engines"]["llamacpp"]["kind"] == "llama-server" and env["cpu_count"] == os.cpu_count()
    assert not llama_servers()


def test_orch_compare_labels_a_cluster_runs_rows_by_node(on_ray, sequential):
    run, _ = on_ray
    cells = {c["n_spec"]: c["placement"]["node"] for c in lines(run / "cells.jsonl")}
    shown = subprocess.run([*ORCH, "compare", str(run), str(sequential), "--out", str(run.parent / "compare")],
                           capture_output=True, text=True, timeout=300)
    assert shown.returncode == 0, shown.stderr
    header, *rows = shown.stdout.splitlines()
    assert " node " in header
    ray_row = next(r for r in rows if r.startswith(run.name))
    best = int(re.search(r" n(\d+) ngram-mod ", ray_row).group(1))
    expected = cells[best] if cells[0] == cells[best] else f"{cells[0]} / {cells[best]}"
    assert expected in ray_row


def test_ctrl_c_cancels_the_ray_tasks_and_their_servers(scenario, cluster, tmp_path, spawn_orch):
    proc = spawn_orch("sweep", str(scenario), "--out", str(tmp_path), "--cluster", f"127.0.0.1:{cluster.port}",
                      *RESOURCE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    servers = wait_for(lambda: (s := llama_servers()) and len(s) == 2 and s)
    time.sleep(1.5)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(120) == 130
    assert gone(servers, 30)
    (run,) = tmp_path.iterdir()
    assert {c["status"] for c in lines(run / "cells.jsonl")} == {"interrupted"}


def test_ctrl_c_on_a_cluster_leaves_no_container_of_the_run(cluster, tmp_path, spawn_orch):
    """The same with the Docker launcher: a killed worker cannot remove its container; orch does."""
    from .support.docker_image import build_llama_image, docker_client, engine
    from .support.runs import llama_server_binary, workload_scenario

    client = docker_client()
    build_llama_image(client, llama_server_binary())
    path = workload_scenario(tmp_path, "dkray", engine("llamacpp", n_spec="[0, 4, 8]"), max_tokens=64, repeats=3)
    proc = spawn_orch("sweep", str(path), "--out", str(tmp_path / "out"), "--cluster", f"127.0.0.1:{cluster.port}",
                      *RESOURCE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def ours(**filters):
        return client.containers.list(all=True, filters={"label": "orch.sweep=dkray", **filters})

    wait_for(lambda: len(ours(status="running")) == 2, 180)
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(120) == 130
    assert ours() == []
    (run,) = (tmp_path / "out").iterdir()
    assert {c["status"] for c in lines(run / "cells.jsonl")} == {"interrupted"}


AUTOSCALING = "; an autoscaling cluster needs one such node up first (min_workers = 1)"


@pytest.mark.parametrize("asks, said", [
    (['placement.resource="orch_devce"'], "no node offers one 'orch_devce' (its resources: CPU, memory, "
                                          "object_store_memory, orch_device); fix placement.resource, or start the nodes "
                                          "with --resources '{\"orch_devce\": 1}'" + AUTOSCALING),
    ([], "no node offers one 'GPU' (its resources: CPU, memory, object_store_memory, orch_device); on CPU nodes "
         "set placement.resource to the resource they declare (docs/clusters.md)" + AUTOSCALING),
])
def test_a_resource_no_node_offers_is_one_line_before_any_run_folder(cluster, tmp_path, scenario, asks, said):
    """Ray would keep such tasks pending for ever."""
    done = subprocess.run([*ORCH, "sweep", str(scenario), "--out", str(tmp_path), "--cluster",
                           f"127.0.0.1:{cluster.port}", *[a for x in asks for a in ("--set", x)]],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [f"Error: the Ray cluster at 127.0.0.1:{cluster.port}: placement.resource: "
                                                f"{said}"]
    assert not list(tmp_path.iterdir())


def test_orch_down_finds_containers_on_the_clusters_docker_hosts(cluster):
    import docker

    from .support.docker_image import build_llama_image, docker_client
    from .support.runs import llama_server_binary

    client = docker_client()
    image = build_llama_image(client, llama_server_binary())
    dead = subprocess.Popen(["true"])
    dead.wait()  # a pid that was orch's and is gone: the container is orphaned
    left = client.containers.create(image, command=["--version"], labels={
        "orch.managed": "1", "orch.sweep": "sbs", "orch.run": "sbs-x", "orch.owner_pid": str(dead.pid),
        "orch.owner_host": socket.gethostname()})
    shown = subprocess.run([*ORCH, "down", "--cluster", f"127.0.0.1:{cluster.port}"], capture_output=True,
                           text=True, timeout=300)
    assert shown.returncode == 0, shown.stderr
    said = shown.stdout.splitlines()
    assert len(said) == 2  # one line per node; both nodes share this host's Docker, so one of them removed it
    assert sum(f"removed 1 container(s): {left.name}" in ln for ln in said) == 1
    with pytest.raises(docker.errors.NotFound):
        client.containers.get(left.id)


def test_a_node_killed_mid_cell_fails_that_cell_the_rest_finish_and_resume_completes(scenario, cluster, tmp_path):
    """Last of the module: it kills the cluster's second node."""
    args = ["sweep", str(scenario), "--out", str(tmp_path / "out"), "--cluster", f"127.0.0.1:{cluster.port}", *RESOURCE]
    proc = subprocess.Popen([*ORCH, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        # the second node's server (it inherits ORCH_CORES=1 from its node), 2 s into its cell
        (victim,) = wait_for(lambda: [p for p in llama_servers("1") if time.time() - p.create_time() > 2])
        cluster.kill("second")
        output, _ = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, output[-3000:]
    assert gone([victim], 60)  # no server left: it died with the node's worker
    (run,) = (tmp_path / "out").iterdir()
    cells = {x["cell_id"]: x for x in lines(run / "cells.jsonl")}
    lost = [x for x in cells.values() if x["status"] == "failed"]
    assert len(lost) == 1 and lost[0]["error"].startswith("its Ray node died mid-cell (NodeDiedError")
    assert lost[0]["placement"]["cores"] == [1]
    assert sorted(x["status"] for x in cells.values()) == ["failed", "ok", "ok"]
    before = lines(run / "requests.jsonl")
    resumed = subprocess.run([*ORCH, *args, "--resume"], capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    latest = {x["cell_id"]: x for x in lines(run / "cells.jsonl")}
    assert all(x["status"] == "ok" for x in latest.values()) and len(latest) == 3
    moved = latest[lost[0]["cell_id"]]["placement"]
    assert moved["cores"] == [0]  # the head's device took it
    kept = any(r["ok"] and r["phase"] == "measured" and r["cell_id"] == lost[0]["cell_id"]
               for r in before)
    # the requests it kept were measured on the dead node: the record and the report say so
    assert moved["earlier"] == ([f"{lost[0]['placement']['host']}, cores 1"] if kept else [])
    assert ("Warning: resumed on another node or device" in resumed.stdout) == kept
    assert not llama_servers()
