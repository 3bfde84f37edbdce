"""The Docker launcher on a real Docker engine, with a local llama-server image (host networking,
loopback only, the model bind-mounted read-only)."""

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

from engines.plan import ContainerSpec, Mount
from orchestrator.cli import cli

from .support.runs import jsonl_rows as rows, workload_scenario as scenario, llama_server_binary
from .support.docker_image import IMAGE, build_llama_image, docker_client, engine

pytestmark = pytest.mark.integration

ORCH = [sys.executable, "-c", "from orchestrator.cli import main; main()"]


@pytest.fixture(scope="module")
def client():
    c = docker_client()
    build_llama_image(c, llama_server_binary())
    yield c
    for leftover in c.containers.list(all=True, filters={"label": "orch.managed=1"}):
        if leftover.labels.get("orch.sweep", "").startswith("dk"):
            leftover.remove(force=True)


def labelled(client, sweep):
    return client.containers.list(all=True, filters={"label": f"orch.sweep={sweep}"})


def test_two_cell_docker_sweep_has_the_process_launchers_shape(client, tmp_path, monkeypatch):
    secret = "hf_orch_test_secret_4b1d"
    monkeypatch.setenv("HF_TOKEN", secret)
    dk = scenario(tmp_path, "dk", engine("llamacpp"))
    proc = scenario(tmp_path, "pr", engine("llamacpp", launcher="process"))
    for path in (dk, proc):
        result = CliRunner().invoke(cli, ["sweep", str(path), "--out", str(tmp_path / "r")])
        assert result.exit_code == 0, result.output
    (d,), (p,) = (tmp_path / "r").glob("dk-*"), (tmp_path / "r").glob("pr-*")
    d_rows, p_rows = rows(d / "requests.jsonl"), rows(p / "requests.jsonl")
    assert set(d_rows[0]) == set(p_rows[0]) and len(d_rows) == len(p_rows) == 2 * (1 + 3)
    assert [r["key"] for r in d_rows] == [r["key"] for r in p_rows]
    assert all(r["ok"] and r["completion_tokens"] == r["timings_predicted_n"] for r in d_rows)
    assert (d / "summary.csv").read_text().splitlines()[0] == (p / "summary.csv").read_text().splitlines()[0]
    cells = rows(d / "cells.jsonl")
    assert all(c["status"] == "ok" and c["image_id"].startswith("sha256:") for c in cells)
    assert "llama_server" in (d / "cells" / "llamacpp-n0" / "server.log").read_text()
    assert labelled(client, "dk") == []  # every container stopped and removed
    for c in cells:  # the container's process tree, found through its State.Pid on this host
        w = c["telemetry"]["1"]
        assert w["cpu_s"] > 0 and w["rss_peak_b"] > 100e6 and w["gpu"] == "no GPU given to this server"
        assert c["roofline"]["limit_tok_s"] == rows(p / "cells.jsonl")[0]["roofline"]["limit_tok_s"]
    assert "-e HF_TOKEN" in cells[0]["command"]  # passed by name...
    for f in d.rglob("*"):  # ...and its value written nowhere
        assert not f.is_file() or secret.encode() not in f.read_bytes(), f


def test_container_that_exits_during_start_up_fails_fast_and_the_sweep_goes_on(client, tmp_path):
    path = scenario(tmp_path, "dkbad", engine("bad", ["--no-such-flag"], "[0]") + engine("good", (), "[0]"))
    result = CliRunner().invoke(cli, ["sweep", str(path), "--out", str(tmp_path / "r")])
    assert result.exit_code == 1, result.output  # some cell failed
    (run,) = (tmp_path / "r").iterdir()
    bad, good = rows(run / "cells.jsonl")
    assert bad["status"] == "failed" and bad["error"].startswith("server exited with code 1 during start-up")
    assert "no-such-flag" in bad["log_tail"]
    assert bad["seconds"] < 5
    assert good["status"] == "ok"
    assert labelled(client, "dkbad") == []


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupt_leaves_no_container_and_keeps_records(client, tmp_path, sig, code, spawn_orch):
    name = f"dkint{code}"
    path = scenario(tmp_path, name, engine("llamacpp"), max_tokens=64, repeats=3)
    out = tmp_path / "r"
    proc = spawn_orch("sweep", str(path), "--out", str(out), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    _wait_measured(out, name)
    assert len(labelled(client, name)) == 1
    proc.send_signal(sig)
    output = proc.communicate(timeout=30)[0].decode()
    assert proc.returncode == code, output
    assert labelled(client, name) == []
    (run,) = out.iterdir()
    assert rows(run / "requests.jsonl") and rows(run / "cells.jsonl")[-1]["status"] == "interrupted"


def test_orch_down_removes_containers_of_a_run_killed_with_sigkill(client, tmp_path, spawn_orch):
    path = scenario(tmp_path, "dkkill", engine("llamacpp"), max_tokens=64, repeats=3)
    out = tmp_path / "r"
    proc = spawn_orch("sweep", str(path), "--out", str(out), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    _wait_measured(out, "dkkill")
    proc.kill()
    proc.wait()
    left = labelled(client, "dkkill")
    assert len(left) == 1 and left[0].status == "running"
    listing = CliRunner().invoke(cli, ["ls"])
    assert "sweep=dkkill" in listing.output and "(orphaned)" in listing.output
    result = CliRunner().invoke(cli, ["down"])
    assert result.exit_code == 0
    assert result.output.startswith("removed 1 container(s): orch-llamacpp-n0-")
    assert labelled(client, "dkkill") == []


def _wait_measured(out, name, timeout=90):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = list(out.glob(f"{name}-*"))
        if runs and any(r["phase"] == "measured" for r in rows(runs[0] / "requests.jsonl")):
            return
        time.sleep(0.1)
    raise AssertionError("no measured request in time")


@pytest.mark.parametrize("image", ["vllm/vllm-openai:nightly", "vllm/vllm-openai@sha256:" + "ab" * 32])
def test_an_error_inside_the_pull_stream_fails_the_cell(tmp_path, image):
    """docker-py does not raise on an error event in the pull stream. Fault injection: no
    registry can be reached here, so the Docker API answers from a fake."""
    import docker

    from orchestrator.launch.docker import DockerServer
    from orchestrator.common.errors import ServerError
    from engines.plan import ServerPlan

    class Images:
        def get(self, name):
            raise docker.errors.ImageNotFound(name)

    class Api:
        def pull(self, repository, stream, decode):
            # The whole reference, tag or digest: docker-py parses it.
            assert (repository, stream, decode) == (image, True, True)
            yield {"status": "Pulling from vllm/vllm-openai"}
            yield {"error": f"manifest for {image} not found: manifest unknown"}

    server = DockerServer.__new__(DockerServer)
    server.plan = ServerPlan(argv=[], port=1, health_path="/health", env={},
                             container=ContainerSpec(image=image, argv=(), host_port=1, container_port=1))
    server.client = type("Client", (), {"images": Images(), "api": Api()})()
    with pytest.raises(ServerError) as err:
        server._ensure_image()
    assert str(err.value) == f"pull of {image} failed: manifest for {image} not found: manifest unknown"


# ContainerSpec against the real Docker engine: containers are created, never started (bridge
# networking is off on the CI daemon, which still records port bindings at create).

TOKEN = "ORCH_TEST_TOKEN"  # set in the environment handed over...
UNSET = "ORCH_TEST_UNSET"  # ...and absent from it


def bridge_spec(tmp_path) -> ContainerSpec:
    """Published port, all GPUs, private IPC; one folder mounted twice (a model beside its draft)."""
    models, cache = tmp_path / "models", tmp_path / "cache"
    return ContainerSpec(
        image=IMAGE, argv=("--port", "8080", "-m", "/models/m.gguf", "--alias", "a b"), host_port=18765,
        container_port=8080, gpus="all", ipc="private", shm_size="96m", network="bridge",
        volumes=(Mount(str(models), "/models", "ro"), Mount(str(models), "/drafts", "ro"), Mount(str(cache), "/cache")),
        env_names=(TOKEN, UNSET), labels={"orch.managed": "1", "orch.sweep": "dkspec", "orch.cell": "dkspec-n0"})


def host_spec(tmp_path) -> ContainerSpec:
    return ContainerSpec(image=IMAGE, argv=("--port", "18766"), host_port=18766, container_port=18766,
                         gpus=(0, 3), ipc="host", network="host", labels={"orch.sweep": "dkspec"}, cpuset="0")


@pytest.fixture
def created(client, monkeypatch):
    """create(spec, environ) -> the container's `docker inspect`, made from run_kwargs(environ)."""
    monkeypatch.delenv(UNSET, raising=False)
    made = []

    def create(spec: ContainerSpec, environ: dict[str, str]) -> dict:
        made.append(client.containers.create(spec.image, **spec.run_kwargs(environ)))
        return made[-1].attrs

    yield create
    for container in made:
        container.remove(force=True)


@pytest.fixture
def cli_created(client, monkeypatch):
    """create(spec, environ) -> `docker inspect` of what the docker CLI makes of run_line()."""
    if not shutil.which("docker"):
        if os.environ.get("CI"):
            pytest.fail("no docker CLI in CI: .ci/run installs docker.io")
        pytest.skip("no docker CLI (apt-get install docker.io)")
    monkeypatch.delenv(UNSET, raising=False)
    made = []

    def create(spec: ContainerSpec, environ: dict[str, str]) -> dict:
        line = spec.run_line()
        assert line[:2] == ["docker", "run"]
        out = subprocess.run(["docker", "create", *line[2:]], env={**os.environ, **environ},
                             capture_output=True, text=True, check=True)
        made.append(client.containers.get(out.stdout.strip()))
        return made[-1].attrs

    yield create
    for container in made:
        container.remove(force=True)


def test_run_kwargs_publish_on_loopback_mount_read_only_and_pass_env_by_name(created, tmp_path):
    spec = bridge_spec(tmp_path)
    attrs = created(spec, {TOKEN: "tok-1", "OTHER": "not named, not passed"})
    host, config = attrs["HostConfig"], attrs["Config"]
    assert host["PortBindings"] == {"8080/tcp": [{"HostIp": "127.0.0.1", "HostPort": "18765"}]}
    models, cache = tmp_path / "models", tmp_path / "cache"
    assert host["Binds"] == [f"{models}:/models:ro", f"{models}:/drafts:ro", f"{cache}:/cache:rw"]
    # The engine's record, in no set order, read back: ro really is read-only.
    assert sorted((m["Destination"], m["RW"]) for m in attrs["Mounts"]) == [("/cache", True), ("/drafts", False),
                                                                             ("/models", False)]
    assert [e for e in config["Env"] or [] if e.startswith(("ORCH_TEST", "OTHER"))] == [f"{TOKEN}=tok-1"]
    assert (host["IpcMode"], host["ShmSize"]) == ("private", 96 * 2**20)  # not docker's default, 64m
    (gpus,) = host["DeviceRequests"]
    assert (gpus["Count"], gpus["DeviceIDs"] or [], gpus["Capabilities"]) == (-1, [], [["gpu"]])
    assert config["Labels"] == spec.labels and attrs["Name"].startswith("/orch-dkspec-n0-")
    assert config["Cmd"] == list(spec.argv) and config["Image"] == IMAGE


def test_run_kwargs_with_host_network_and_device_ids(created, tmp_path):
    attrs = created(host_spec(tmp_path), {})
    host = attrs["HostConfig"]
    assert host["NetworkMode"] == "host" and not host["PortBindings"] and host["IpcMode"] == "host"
    (gpus,) = host["DeviceRequests"]
    assert (gpus["Count"], gpus["DeviceIDs"], gpus["Capabilities"]) == (0, ["0", "3"], [["gpu"]])
    assert attrs["Config"]["Cmd"] == ["--port", "18766"] and attrs["Config"]["Labels"] == {"orch.sweep": "dkspec"}
    assert host["CpusetCpus"] == "0"  # a sweep's device (placement.cores): the engine pins the container


def _facts(attrs: dict) -> dict:
    """What a container is, as docker inspect records it, less the labels and name (orch's own
    bookkeeping, not shown in run_line) and AutoRemove (--rm there; orch removes its containers itself)."""
    host, config = attrs["HostConfig"], attrs["Config"]
    return {"image": config["Image"], "cmd": config["Cmd"], "network": host["NetworkMode"],
            # A bare NAME (from -e NAME, unset where it ran) carries no value, like a name left out.
            "env": sorted(e for e in config["Env"] or [] if "=" in e), "ports": host["PortBindings"] or {},
            "mounts": sorted((m["Source"], m["Destination"], m["RW"]) for m in attrs["Mounts"]),
            "ipc": host["IpcMode"], "shm": host["ShmSize"], "cpuset": host["CpusetCpus"],
            "gpus": [(r["Count"], r["DeviceIDs"] or [], r["Capabilities"]) for r in host["DeviceRequests"] or []]}


@pytest.mark.parametrize("make", [bridge_spec, host_spec])
def test_run_line_and_run_kwargs_make_the_same_container(created, cli_created, tmp_path, make):
    """The command line users see, given to the docker CLI, and the kwargs orch gives docker-py,
    given the same environment, make containers the Docker engine records alike."""
    spec, environ = make(tmp_path), {TOKEN: "tok-2"}
    from_kwargs, from_line = _facts(created(spec, environ)), _facts(cli_created(spec, environ))
    assert from_kwargs == from_line
    assert from_line["cmd"] == list(spec.argv)


def test_the_docker_client_is_injectable(client):
    """list_containers and DockerServer take a client instead of dialling DOCKER_HOST themselves."""
    from orchestrator.launch.docker import list_containers
    from orchestrator.launch.shared import MANAGED

    made = client.containers.create("orch-test/llama-server:cpu", command=["--version"],
                                    labels={MANAGED: "1", "orch.sweep": "dk-inject"})
    try:
        assert made.id in {c.id for c in list_containers(client=client)}
    finally:
        made.remove(force=True)


FAKE_SMI = r"""
#include <stdio.h>
#include <string.h>
#include <unistd.h>
/* A stand-in for nvidia-smi inside a container (no GPU can exist here): `nvidia-smi sleep` idles as
   the container's main process; with --query-gpu it prints readings every -lms, as nvidia-smi does,
   one of them split across two writes and one garbled. */
int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "sleep") == 0) { for (;;) pause(); }
    for (int i = 0; i < 50; i++) {
        printf("0, NVIDIA H200, %d, 143771, 3", 1000 + i); fflush(stdout); usleep(20000);
        printf("00.5, 1980, 97, 60\n"); if (i == 3) printf("garbled\n"); fflush(stdout); usleep(80000);
    }
    return 0;
}
"""


@pytest.fixture(scope="module")
def fake_smi_image(client, tmp_path_factory):
    import io
    import tarfile

    folder = tmp_path_factory.mktemp("smi")
    (folder / "smi.c").write_text(FAKE_SMI)
    subprocess.run(["gcc", "-static", "-O1", "-o", str(folder / "nvidia-smi"), str(folder / "smi.c")], check=True)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(folder / "nvidia-smi", arcname="usr/bin/nvidia-smi")
    client.api.import_image_from_data(buf.getvalue(), repository="orch-test/fake-smi", tag="1",
                                      changes=['ENTRYPOINT ["/usr/bin/nvidia-smi"]'])
    return "orch-test/fake-smi:1"


def test_a_remote_containers_gpus_are_read_through_nvidia_smi_inside_it(client, fake_smi_image):
    """Fault injection for what cannot exist here (a GPU): a fake nvidia-smi in a real container,
    read through docker-py's real exec stream, as orch reads a container on a remote Docker host."""
    from engines.plan import ServerPlan
    from orchestrator.launch.docker import DockerServer
    from orchestrator.telemetry import CellTelemetry

    spec = ContainerSpec(image=fake_smi_image, argv=(), host_port=8000, container_port=8000, gpus="all",
                         docker_host="ssh://gpu-box.invalid")
    plan = ServerPlan(argv=[], port=8000, health_path="/health", env={}, container=spec)
    server = DockerServer(plan, "/dev/null", 10, client=client)
    server.container = client.containers.run(fake_smi_image, ["sleep"], detach=True,
                                             labels={"orch.managed": "1", "orch.sweep": "dk-smi"})
    try:
        watch = server.watch()
        assert watch.pid is None and watch.smi_lines is not None  # another host's PIDs are not ours
        tele = CellTelemetry(watch, 0.1)
        time.sleep(1.0)
        with tele.window() as samples:
            time.sleep(1.0)
        w = tele.summarize(samples, {})
    finally:
        server.container.remove(force=True)
    assert w.gpu == "0: NVIDIA H200" and w.gpus[0].power_mean_w == pytest.approx(300.5)
    assert w.gpus[0].mem_peak_b > 1000 * 2**20 and w.gpus[0].energy_source == "power integrated"
    assert w.energy_j == pytest.approx(300.5 * w.seconds, rel=0.02)
    assert "process" in w.missing and "remote Docker host" in w.missing["process"]
