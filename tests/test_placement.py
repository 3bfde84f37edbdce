"""Devices of one host (sweep/placement.py) and the writer of side-by-side cells (sweep/parallel.py):
what a device does to a server's plan, checked against the kernel and llama-server's own --help;
which cells ran beside which; hostile core sets and GPU ids."""

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import tomllib

import pytest

from engines import ENGINES
from engines.plan import ServerPlan
from engines.plan import ContainerSpec
from orchestrator.launch.launchers import _child_setup
from orchestrator.types.records import CellPlacement, CellRecord, RequestRecord
from orchestrator.results.rundir import RunDir, node_folder
from orchestrator.sweep import parallel
from orchestrator.sweep.parallel import Event, Relay, Writer, pump
from orchestrator.sweep.placement import Device, devices_of, node_device, parse_cores, parse_gpus, place, unavailable
from orchestrator.types.scenario import EngineSpec

from .support.fake_nvml import FakeNvml
from .support.llama_help import help_options
from .support.runs import llama_server_binary


def llama(args=("-c", "4096", "-t", "2")):
    return ENGINES["llama-server"](EngineSpec(name="a", kind="llama-server", model="m.gguf", binary="/x",
                                              args=list(args)))


@pytest.mark.parametrize("text, cores", [("0", (0,)), ("0-3", (0, 1, 2, 3)), ("0-1,8", (0, 1, 8)), (" 2 ", (2,))])
def test_core_sets_are_read_as_taskset_writes_them(text, cores):
    assert parse_cores(text) == cores


@pytest.mark.parametrize("text", ["", "a", "-1", "3-1", "0-99999", "1,1", "0;rm -rf /", "0-", "0,,1", "../0"])
def test_hostile_core_sets_are_refused_with_the_form_to_write(text):
    with pytest.raises(ValueError, match="core"):
        parse_cores(text)


@pytest.mark.parametrize("text", ["", "GPU-5fe3", "0,0", "1;2", "0-3", "9999"])
def test_hostile_gpu_ids_are_refused(text):
    with pytest.raises(ValueError, match="GPU"):
        parse_gpus(text)


def test_devices_pair_gpu_i_with_core_set_i():
    assert devices_of(["0", "1,2"], ["0-3", "4-7"]) == [Device("gpu 0 cores 0-3", (0,), (0, 1, 2, 3)),
                                                        Device("gpu 1,2 cores 4-7", (1, 2), (4, 5, 6, 7))]


def test_cores_this_host_cannot_run_on_are_named():
    allowed = sorted(os.sched_getaffinity(0))
    assert unavailable(devices_of([], [str(allowed[0])])) is None
    key, said = unavailable(devices_of([], [f"{allowed[-1] + 1}"]))
    assert key == "cores"
    assert said.startswith(f"device 'cores {allowed[-1] + 1}': cores [{allowed[-1] + 1}] are not available")


def test_gpu_ids_this_host_does_not_have_are_named(monkeypatch):
    """CUDA_VISIBLE_DEVICES naming no GPU leaves a CUDA build on the CPU; refused before a run."""
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    assert unavailable(devices_of(["0", "1"], []), FakeNvml(count=2)) is None
    assert unavailable(devices_of(["0", "7"], []), FakeNvml(count=2)) == (
        "gpus", "GPU ids [7] are not on this host (NVML sees 2); name GPUs from 0 to 1")
    key, said = unavailable(devices_of(["0"], []))  # this host's real NVML: no driver, no GPU
    assert key == "gpus" and said.startswith("this host has no GPU orch can see (NVML: ")
    monkeypatch.setenv("DOCKER_HOST", "ssh://gpu-host")  # containers elsewhere: their GPUs are not seen here
    assert unavailable(devices_of(["7"], [])) is None


def test_a_gpu_device_becomes_cuda_visible_devices_of_a_process():
    plan = ServerPlan(argv=["llama-server", "-t", "2"], port=1, health_path="/health", env={"A": "1"})
    placed = place(plan, Device("gpu 1,3", gpus=(1, 3)), llama())
    assert placed.env == {"A": "1", "CUDA_VISIBLE_DEVICES": "1,3"} and placed.cores is None
    assert placed.argv == plan.argv  # no core set: the thread count is the scenario's


def test_a_core_set_pins_the_process_and_sets_llama_servers_threads_with_a_flag_its_help_lists():
    live, _, _ = help_options(llama_server_binary())
    engine = llama(("-c", "4096", "--threads=2", "-tb", "2"))
    argv = engine.fit_threads(["llama-server", "-c", "4096", "--threads=2", "-tb", "2"], 3)
    assert argv == ["llama-server", "-c", "4096", "-t", "3"]
    assert {"-t", "--threads", "-tb", "--threads-batch"} <= live  # the flags it replaces are the binary's


def test_a_device_goes_to_a_containers_device_requests_and_cpuset():
    spec = ContainerSpec(image="i", argv=("-t", "8"), host_port=1, container_port=2, gpus="all")
    plan = ServerPlan(argv=["-t", "8"], port=1, health_path="/health", env={}, container=spec)
    placed = place(plan, Device("gpu 2 cores 4-5", gpus=(2,), cores=(4, 5)), llama())
    c = placed.container
    assert (c.gpus, c.cpuset, c.argv) == ((2,), "4,5", ("-t", "2"))
    assert ["--gpus", "device=2", "--cpuset-cpus", "4,5"] == [a for a in c.run_line() if a in (
        "--gpus", "device=2", "--cpuset-cpus", "4,5")]
    kwargs = c.run_kwargs({})
    assert kwargs["cpuset_cpus"] == "4,5" and kwargs["device_requests"][0]["DeviceIDs"] == ["2"]


def test_an_external_server_is_where_it_is():
    plan = ServerPlan(argv=[], port=1, health_path="/health", env={}, base_url="http://h:1")
    assert place(plan, Device("cores 0", cores=(0,)), llama()) is plan


def test_the_server_process_really_runs_on_its_core_set():
    """The kernel's own word: the child's affinity, as /proc reports it, is the device's cores."""
    core = sorted(os.sched_getaffinity(0))[-1]
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"],
                            preexec_fn=lambda: _child_setup((core,)))
    try:
        with open(f"/proc/{proc.pid}/status") as f:
            allowed = next(ln.split(":")[1].strip() for ln in f if ln.startswith("Cpus_allowed_list"))
        assert allowed == str(core)
    finally:
        proc.kill()
        proc.wait()


def test_the_server_process_gets_sigterm_when_orch_dies():
    """The kernel's own word again: PR_GET_PDEATHSIG in the exec'd child is SIGTERM."""
    ask = ("import ctypes; v = ctypes.c_int(); ctypes.CDLL('libc.so.6').prctl(2, ctypes.byref(v)); print(v.value)")
    said = subprocess.run([sys.executable, "-c", ask], preexec_fn=lambda: _child_setup(None), capture_output=True,
                          text=True, timeout=30)
    assert said.stdout.strip() == str(int(signal.SIGTERM))


def test_a_ray_nodes_device_is_its_gpus_and_the_cores_it_declared(monkeypatch):
    allowed = sorted(os.sched_getaffinity(0))
    monkeypatch.setenv("ORCH_CORES", str(allowed[-1]))
    assert node_device(["1"]) == Device(f"gpu 1 cores {allowed[-1]}", (1,), (allowed[-1],))
    monkeypatch.delenv("ORCH_CORES")
    assert node_device([]) == Device("any", None, None)


@pytest.mark.parametrize("cores, gpus, said", [
    ("0-x", [], "ORCH_CORES='0-x' on this node: '0-x' is not a core set"),
    ("4000", [], "ORCH_CORES names cores [4000] this node's Ray worker may not run on"),
    (None, ["GPU-5fe3"], "Ray gave this task GPUs ['GPU-5fe3'] that are not GPU indices"),
])
def test_a_ray_nodes_bad_device_is_named(monkeypatch, cores, gpus, said):
    if cores is None:
        monkeypatch.delenv("ORCH_CORES", raising=False)
    else:
        monkeypatch.setenv("ORCH_CORES", cores)
    with pytest.raises(ValueError, match=re.escape(said)):
        node_device(gpus)


def test_node_names_become_one_safe_folder():
    assert node_folder("gpu-host-3f2a9c1e") == "gpu-host-3f2a9c1e"
    assert node_folder("../../etc/passwd") == "_.._etc_passwd" and "/" not in node_folder("a/b")
    assert node_folder("") == "node" and len(node_folder("x" * 500)) == 64


# ---------------------------------------------------------------- the writer


class Said:
    def __init__(self):
        self.lines = []

    def __getattr__(self, name):
        return lambda *a: self.lines.append((name, *a))


def cell(cell_id, start, seconds, host="h", status="ok"):
    return CellRecord(cell_id=cell_id, engine="e", method="m", n_spec=1, status=status, started_at=start,
                      seconds=seconds)


def started(cell_id, start, host="h", node="h"):
    return Event("started", cell_id, CellPlacement(node=node, host=host, device="cores 0"), start)


def test_cells_beside_are_those_on_the_same_host_whose_spans_overlap(tmp_path):
    run = RunDir.create(tmp_path, "s")
    w = Writer(run, Said(), 4)
    for ev in [started("a", 0.0), started("b", 5.0), started("c", 1.0, host="other", node="n2"),
               Event("cell", "a", cell("a", 0.0, 10.0)), started("d", 10.5),
               Event("cell", "b", cell("b", 5.0, 10.0)), Event("cell", "d", cell("d", 10.5, 1.0)),
               Event("cell", "c", cell("c", 1.0, 30.0))]:
        w.apply(ev)
    beside = {r.cell_id: r.placement.beside for r in w.records}
    # a and b overlap (5-10); d starts after a ended but while b runs; c ran on another host
    assert beside == {"a": ["b"], "b": ["a", "d"], "d": ["b"], "c": []}
    assert [c.cell_id for c in run.cell_records()] == ["a", "b", "d", "c"]


def test_a_lost_cell_is_a_failed_record_and_requests_killed_on_ctrl_c_are_not_measurements(tmp_path):
    from orchestrator.sweep.runner import Cell

    run = RunDir.create(tmp_path, "s")
    w = Writer(run, Said(), 2)
    spec = EngineSpec(name="e", kind="llama-server", model="m.gguf", binary="/x")
    w.apply(started("e-n0", time.time()))
    w.apply(Event("lost", "e-n0", Cell(spec, 0), "its Ray node died mid-cell (NodeDiedError: gone)"))
    (rec,) = run.cell_records()
    assert (rec.status, rec.error, rec.placement.node) == ("failed", "its Ray node died mid-cell (NodeDiedError: gone)",
                                                           "h")
    w.interrupted = True
    bad = RequestRecord(cell_id="e-n8", engine="e", method="m", n_spec=8, key="measured/c1/r0/s/p", phase="measured",
                        concurrency=1, repeat=0, prompt_set="s", prompt_id="p", ok=False, error="connection reset")
    w.apply(Event("request", "e-n8", bad))
    assert run.request_records() == []


def test_a_cell_resumed_elsewhere_says_where_its_kept_requests_ran(tmp_path):
    from orchestrator.analysis.side_by_side import placement_notes

    run = RunDir.create(tmp_path, "s")
    for cell_id in ("a", "b"):  # both failed on node A; only a kept a measured request
        rec = cell(cell_id, 0.0, 1.0, status="failed")
        rec.set(placement=CellPlacement(node="A", host="A", device="cores 1"))
        run.append_cell(rec)
    run.append_request(RequestRecord(cell_id="a", engine="e", method="m", n_spec=1, key="measured/c1/r0/s/p",
                                     phase="measured", concurrency=1, repeat=0, prompt_set="s", prompt_id="p", ok=True))
    w = Writer(run, Said(), 2)
    for cell_id in ("a", "b"):
        w.apply(started(cell_id, 2.0, host="B", node="B"))
        w.apply(Event("cell", cell_id, cell(cell_id, 2.0, 1.0)))
    assert {c.cell_id: c.placement.earlier for c in run.cell_records()} == {"a": ["A, cores 1"], "b": []}
    (moved,) = [ln for ln in placement_notes(run.cell_records()) if "resumed" in ln]
    assert moved.startswith("Warning: resumed on another node or device, so their requests were measured on more "
                            "than one: a on A, cores 1, then B, cores 0.")


def test_ctrl_c_stops_the_cells_and_writes_what_they_report_then_raises(tmp_path, monkeypatch):
    """pump's interrupt path: on_interrupt is called, the jobs' last events are still written."""
    events = queue.Queue()
    run = RunDir.create(tmp_path, "s")
    w = Writer(run, Said(), 1)
    stopped = []

    def on_interrupt():
        stopped.append(True)
        events.put(Event("cell", "a", cell("a", 0.0, 1.0, status="failed")))
        events.put(Event("done", "a"))

    events.put(started("a", 0.0))
    real_one = parallel._one
    calls = {"n": 0}

    def interrupting(q, writer):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real_one(q, writer)

    monkeypatch.setattr(parallel, "_one", interrupting)
    with pytest.raises(KeyboardInterrupt):
        pump(events, w, 1, on_interrupt)
    assert stopped and [(c.cell_id, c.status, c.error) for c in run.cell_records()] == [("a", "interrupted",
                                                                                      "interrupted")]


def test_a_write_that_fails_stops_every_cell_and_is_raised(tmp_path):
    """The disk full (here: requests.jsonl is a folder, so the write really fails): the cells are
    stopped, not left to run their measurements into nothing, and the error reaches the CLI."""
    from orchestrator.common.errors import ResultsError

    events = queue.Queue()
    run = RunDir.create(tmp_path, "s")
    (run.path / "requests.jsonl").mkdir()
    stopped = []

    def on_interrupt():
        stopped.append(True)
        events.put(Event("done", "a"))  # the cell's thread, once its server is killed, ends

    ok = RequestRecord(cell_id="a", engine="e", method="m", n_spec=8, key="measured/c1/r0/s/p", phase="measured",
                       concurrency=1, repeat=0, prompt_set="s", prompt_id="p", ok=True)
    for ev in [started("a", 0.0), Event("request", "a", ok)]:
        events.put(ev)
    with pytest.raises(ResultsError, match="cannot write .*requests.jsonl: Is a directory"):
        pump(events, Writer(run, Said(), 1), 1, on_interrupt)
    assert stopped == [True] and events.empty()


def test_a_remote_server_log_is_written_as_text_without_secrets(tmp_path, monkeypatch):
    """A node's server.log comes back as bytes: not UTF-8 throughout, with a key in it. A log
    that cannot be written is one ResultsError, not a traceback."""
    from orchestrator.common import redact
    from orchestrator.common.errors import ResultsError

    monkeypatch.setattr(redact, "_secrets", set())
    redact.remember("sk-node-secret-91")
    run = RunDir.create(tmp_path, "s")
    w = Writer(run, Said(), 1)
    w.apply(Event("log", "a", b"main: loaded\xff\xfe key=sk-node-secret-91\n"))
    text = (run.cell_dir("a") / "server.log").read_text(encoding="utf-8")
    assert text.startswith("main: loaded\ufffd\ufffd key=") and "sk-node-secret-91" not in text
    (run.cell_dir("b") / "server.log").mkdir(parents=True)
    with pytest.raises(ResultsError, match="cannot write .*server.log: Is a directory"):
        w.apply(Event("log", "b", b"x"))


def test_a_server_that_comes_up_after_ctrl_c_is_stopped_at_once(tmp_path):
    class Server:
        stops = 0

        def stop_from_elsewhere(self):
            self.stops += 1

    stop = threading.Event()
    relay, early = Relay(queue.Queue(), lambda cid: tmp_path / cid, stop), Server()
    relay.serving("a", early)
    assert early.stops == 0
    stop.set()
    late = Server()
    relay.serving("b", late)
    assert late.stops == 1


def test_a_relay_hands_every_call_to_the_queue_in_order(tmp_path):
    q = queue.Queue()
    relay = Relay(q, lambda cid: tmp_path / cid)
    relay.warn("w")
    relay.samples("a", 1, [{"t": 0}])
    relay.phase("noise")
    assert [(e.kind, e.data) for e in iter(lambda: q.get_nowait() if not q.empty() else None, None)] == [
        ("warn", "w"), ("samples", [{"t": 0}])]
    assert relay.cell_dir("a") == tmp_path / "a"


# ---------------------------------------------------------------- at the command line


def test_cores_this_host_lacks_are_one_line_and_exit_2_before_anything_starts(tmp_path, no_processes):
    from click.testing import CliRunner

    from orchestrator.cli import cli

    beyond = max(os.sched_getaffinity(0)) + 1
    result = CliRunner().invoke(cli, ["sweep", "scenarios/n_spec.toml", "--out", str(tmp_path), "--set",
                                      f'placement.cores=["0", "{beyond}"]'])
    assert result.exit_code == 2 and not list(tmp_path.iterdir())
    allowed = sorted(os.sched_getaffinity(0))
    span = f"{allowed[0]}-{allowed[-1]}" if len(allowed) > 1 else str(allowed[0])
    assert result.output.splitlines() == [
        f"Error: scenarios/n_spec.toml: placement.cores: device 'cores {beyond}': cores [{beyond}] are not available "
        f"to orch on this host (it may run on {span}); name cores of this host"]


def test_the_depth_search_is_refused_with_devices(tmp_path, no_processes):
    from click.testing import CliRunner

    from orchestrator.cli import cli

    result = CliRunner().invoke(cli, ["sweep", "scenarios/n_spec.toml", "--search", "--out", str(tmp_path),
                                      "--set", 'placement.cores=["0"]'])
    assert result.exit_code == 2 and "placement: the depth search starts one cell at a time" in result.output


def test_a_ray_address_nothing_answers_at_is_one_line_within_seconds_and_no_run_folder(tmp_path):
    import socket

    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", "from orchestrator.cli import main; main()", "sweep",
                           "scenarios/n_spec.toml", "--out", str(tmp_path), "--cluster", f"127.0.0.1:{port}"],
                          capture_output=True, text=True, timeout=120)
    assert time.monotonic() - started < 30 and done.returncode == 1 and not list(tmp_path.iterdir())
    assert done.stderr.splitlines() == [
        f"Error: no Ray cluster at '127.0.0.1:{port}': nothing answers at 127.0.0.1:{port} within 5 s (Connection "
        "refused); start one with `ray start --head` (docs/clusters.md) or fix placement.cluster"]



@pytest.mark.parametrize("scheme", ["", "ray://"])
@pytest.mark.parametrize("answer", ["http", "silent"])
def test_a_cluster_address_where_something_else_answers_is_one_line_within_seconds(tmp_path, scheme, answer):
    """A web server (or a socket that accepts and says nothing) at the --cluster address: Ray's own
    client would retry it for a minute, printing its own lines. The real Ray servers answer the
    probe (tests/test_side_by_side.py runs a sweep on one)."""
    import socket
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Web(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.end_headers()

    if answer == "http":
        server = ThreadingHTTPServer(("127.0.0.1", 0), Web)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        port = server.server_address[1]
    else:
        server = socket.socket()
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
    started = time.monotonic()
    try:
        done = subprocess.run([sys.executable, "-c", "from orchestrator.cli import main; main()", "sweep",
                               "scenarios/n_spec.toml", "--out", str(tmp_path), "--cluster", f"{scheme}127.0.0.1:{port}"],
                              capture_output=True, text=True, timeout=120)
    finally:
        server.shutdown() if answer == "http" else None
        server.server_close() if answer == "http" else server.close()
    assert time.monotonic() - started < 30 and done.returncode == 1 and not list(tmp_path.iterdir())
    # http.server answers a request line it cannot parse as HTTP/0.9 would: the error page alone
    said = "'<!DOCTYPE HTML>'" if answer == "http" else "'nothing'"
    assert done.stderr.splitlines() == [
        f"Error: no Ray cluster at '{scheme}127.0.0.1:{port}': what answers at 127.0.0.1:{port} is not a Ray server "
        f"(it said {said}); start one with `ray start --head` (docs/clusters.md) or fix placement.cluster"], done.stderr


# ---------------------------------------------------------------- resume


def test_resume_compares_the_scenario_but_not_where_its_cells_run(tmp_path, monkeypatch):
    """Placement may change between starts (another address of the cluster, fewer devices); each
    cell record says where it ran. Anything measured that changes is refused. A secret that looks
    like a number (here "1234", inside max_tokens 12345) must not break scenario.toml."""
    from orchestrator.common import redact
    from orchestrator.common.errors import OrchError
    from orchestrator.sweep.scenario_file import build_scenario
    from orchestrator.sweep.session import open_run

    monkeypatch.setattr(redact, "_secrets", set())
    redact.remember("1234")

    def scenario(placement, max_tokens=12345):
        return build_scenario({"name": "s", "placement": placement, "workload": {"max_tokens": max_tokens},
                               "engines": [{"name": "a", "kind": "llama-server", "model": "gemma-3-270m"}]},
                              tmp_path / "s.toml")

    run, _ = open_run(scenario({"cores": ["0", "1"]}), tmp_path, False, "again")
    assert tomllib.loads(run.read_scenario_text())["workload"]["max_tokens"] == 12345
    resumed, _ = open_run(scenario({"cores": ["0"]}), tmp_path, True, "again")
    assert resumed.path == run.path
    with pytest.raises(OrchError, match="scenario.toml differs from this scenario"):
        open_run(scenario({"cores": ["0"]}, max_tokens=17), tmp_path, True, "again")
    # side by side to one at a time would leave cells measured alone and beside others unmarked
    with pytest.raises(OrchError, match="scenario.toml differs from this scenario"):
        open_run(scenario({}), tmp_path, True, "again")
    run, _ = open_run(scenario({"cluster": "ray://head:10001", "resource": "d"}, 8), tmp_path / "c", False, "again")
    assert open_run(scenario({"cluster": "head:6379", "resource": "d"}, 8), tmp_path / "c", True, "again")[0].path \
        == run.path


@pytest.mark.parametrize("setting", ['placement.cores=["0"]', 'placement.cluster="auto"'])
def test_orch_bench_refuses_placement(tmp_path, setting):
    """A running server is where it is: a bench run has nothing to place, and a cluster's node
    would drive a loopback URL that is not its own."""
    from click.testing import CliRunner

    from orchestrator.cli import cli

    result = CliRunner().invoke(cli, ["bench", "--url", "http://127.0.0.1:9", "--model", "m", "--out",
                                      str(tmp_path), "--set", setting])
    assert (result.exit_code, result.output) == (2, "Error: orch bench: placement: orch bench measures a server "
                                                    "that is already running where it is; drop the [placement] "
                                                    "settings\n")
    assert not list(tmp_path.iterdir())


def test_removing_containers_goes_on_past_one_docker_refuses_and_names_it():
    """Fault injection (Docker's own exception types, raised by fake containers): 409 is another
    removal in progress, not an error; anything else is named after every other was tried."""
    import docker

    from orchestrator.common.errors import OrchError
    from orchestrator.launch.docker import remove

    class Box:
        def __init__(self, name, status=None):
            self.name, self.status = name, status

        def remove(self, force):
            if self.status == 404:
                raise docker.errors.NotFound("gone")
            if self.status:
                raise docker.errors.APIError("no", response=type("R", (), {"status_code": self.status})(),
                                             explanation="device or resource busy")

    assert remove([Box("a"), Box("b", 409), Box("c", 404)]) == ["a"]
    with pytest.raises(OrchError) as err:
        remove([Box("a"), Box("b", 500), Box("d")])
    assert str(err.value) == ("removed 2 container(s) (a, d); Docker would not remove b (device or resource busy); "
                              "remove them with docker rm -f")


def test_a_ray_client_server_that_dies_at_birth_is_retried(monkeypatch):
    """Fault injection: ray.init fails as ray-project/ray#63202 makes it (the proxy's forked server
    dies), twice, then connects; three failures are one line naming the cause."""
    import ray

    from orchestrator.common.errors import OrchError
    from orchestrator.sweep import cluster

    said = ("Initialization failure from server:\nTraceback (most recent call last):\n  File \"proxier.py\"\n"
            "RuntimeError: Starting Ray client server failed. See ray_client_server_23000.err for detailed logs.")
    calls = []

    def init(**kw):
        calls.append(kw["address"])
        if len(calls) < 3:
            raise ConnectionAbortedError(said)

    monkeypatch.setattr(cluster, "unreachable", lambda address: None)
    monkeypatch.setattr(ray, "init", init)
    monkeypatch.setattr(ray, "shutdown", lambda: None)
    assert cluster.connect("ray://head:10001") is ray and calls == ["ray://head:10001"] * 3
    calls.clear()
    monkeypatch.setattr(ray, "init", lambda **kw: (calls.append(1), (_ for _ in ()).throw(ConnectionAbortedError(said))))
    with pytest.raises(OrchError) as err:
        cluster.connect("ray://head:10001")
    assert len(calls) == 3 and str(err.value) == (
        "Ray Client at 'ray://head:10001' could not start a server for orch in 3 tries (RuntimeError: Starting Ray "
        "client server failed. See ray_client_server_23000.err for detailed logs.); see ray_client_server*.err in "
        "the head's Ray logs, or use the GCS address HEAD:6379 from a machine of the cluster")
