"""Engines in containers, through docker-py: a cell's server is one labelled container."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlparse

import docker

from docker.models.containers import Container

from engines.plan import ContainerSpec, ServerPlan

from orchestrator.common import redact
from orchestrator.common.safefs import nofollow
from orchestrator.common.errors import OrchError, ServerError, ServerExited, ServerTimeout
from orchestrator.common.show import printable
from orchestrator.launch.shared import MANAGED, Watch, poll_ready

STOP_TIMEOUT_S = 10


class DockerUnavailable(OrchError):
    pass


def client_for(docker_host: str | None = None) -> docker.DockerClient:
    where = docker_host or os.environ.get("DOCKER_HOST") or "the local socket (unix:///var/run/docker.sock)"
    host = docker_host or os.environ.get("DOCKER_HOST")
    try:
        if host and host.startswith("ssh://"):
            # Through the system ssh client, so ~/.ssh/config and agents work as with `docker`.
            client = docker.DockerClient(base_url=host, use_ssh_client=True)
        else:
            client = docker.DockerClient(base_url=host) if host else docker.from_env()
        client.ping()
        return client
    except (docker.errors.DockerException, OSError) as exc:
        raise DockerUnavailable(f"Docker engine not reachable at {where} ({_short(exc)}); start it "
                                "(dockerd, or systemctl start docker) or point DOCKER_HOST at a running one") from exc


class DockerServer:
    def __init__(self, plan: ServerPlan, log_path: Path, ready_timeout_s: float,
                 client: docker.DockerClient | None = None):
        """`client`: a Docker client to use instead of one for the plan's docker_host (tests)."""
        self.plan = plan
        self.log_path = Path(log_path)
        self.ready_timeout_s = ready_timeout_s
        assert plan.container is not None  # the docker launcher is chosen only for a plan with a container
        self.client = client or client_for(plan.container.docker_host)
        self.container: Container | None = None
        self.base_url = f"http://{_server_host(plan.container.docker_host)}:{plan.port}"

    @property
    def _spec(self) -> ContainerSpec:
        assert self.plan.container is not None  # checked in __init__; a plan is frozen
        return self.plan.container

    @property
    def _started(self) -> Container:
        assert self.container is not None  # set by __enter__: only a started server is read or waited on
        return self.container

    def __enter__(self) -> "DockerServer":
        image = self._ensure_image()
        # Environment values are read now, at start, and handed to the engine only.
        self.container = self.client.containers.run(image.id, **self._spec.run_kwargs(os.environ))
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def describe(self) -> dict:
        if self.container is None:
            return {}
        ref = self._spec.image
        image = self.client.images.get(ref)
        return {"container_id": self.container.id[:12], "image": ref, "image_id": image.id,
                "image_digests": image.attrs.get("RepoDigests", [])}

    def watch(self) -> Watch:
        """The container's process tree where its Docker host is this one (the same PID space);
        its GPUs through NVML here, or through `nvidia-smi` inside it when the host is another:
        the NVIDIA runtime puts nvidia-smi in every container given a GPU, whatever its image,
        and no second container or agent has to be started on that host."""
        spec = self._spec
        gpus = spec.gpus != "none"
        ids = None if spec.gpus in ("all", "none") else [int(g) for g in spec.gpus]
        if _server_host(spec.docker_host) == "127.0.0.1":
            pid = (self.container.attrs.get("State") or {}).get("Pid") if self.container else None
            return Watch(pid=pid or None, gpu_ids=ids, gpus=gpus)
        return Watch(gpu_ids=ids, gpus=gpus, smi_lines=self._exec_stream if gpus else None,
                     unseen=["a container on a remote Docker host: its CPU time is not sampled"])

    def _exec_stream(self, cmd: list[str]):
        return self._started.exec_run(cmd, stream=True, demux=False).output

    def alive(self) -> bool:
        try:
            self._started.reload()
        except docker.errors.NotFound:
            return False
        return self._started.status == "running"

    def wait_ready(self, headers: dict | None = None) -> float:
        url = self.base_url + self.plan.health_path
        return poll_ready([url], self.ready_timeout_s, self._check_exit,
                          lambda: ServerTimeout(f"container not ready after {self.ready_timeout_s:.0f} s "
                                                f"(polling {url})", self._logs(30)), headers)

    def _check_exit(self) -> None:
        if not self.alive():
            raise self._exited()

    def stop(self) -> None:
        if self.container is None:
            return
        try:
            self._save_log()
            self.container.stop(timeout=STOP_TIMEOUT_S)
        except (docker.errors.APIError, OSError):
            pass  # the container is removed below whatever happened; a log that could not be saved is lost
        finally:
            try:
                self.container.remove(force=True)
            except docker.errors.NotFound:
                pass

    def stop_from_elsewhere(self) -> None:
        """Another thread's Ctrl-C (sweep/parallel.py): the container killed at once; the cell's own
        thread then finds it gone, saves its log and removes it."""
        try:
            if self.container is not None:
                self.container.kill()
        except (docker.errors.APIError, OSError):
            pass

    def _exited(self) -> ServerExited:
        state = self._started.attrs.get("State", {})
        err = ServerExited(state.get("ExitCode", -1), self._logs(30))
        if state.get("OOMKilled"):
            err.args = (f"{err.args[0]} (OOM-killed)",)
        return err

    def _save_log(self) -> None:
        """The container's whole log into server.log, streamed (it may be large), without secrets."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "w", encoding="utf-8", opener=nofollow) as out:
            for line in self._started.logs(stream=True, follow=False):  # follow defaults to stream
                out.write(redact.scrub(line.decode(errors="replace")))

    def _logs(self, tail: int | None) -> str:
        try:
            data = self._started.logs(tail=tail) if tail else self._started.logs()
        except docker.errors.APIError:
            return ""
        return data.decode(errors="replace")

    def _ensure_image(self):
        ref = self._spec.image
        try:
            return self.client.images.get(ref)
        except docker.errors.ImageNotFound:
            pass
        # docker-py parses the reference (tag or @sha256 digest) and does not raise on an error
        # reported inside the pull stream: look for it.
        for event in self.client.api.pull(ref, stream=True, decode=True):
            if "error" in event:
                raise ServerError(f"pull of {ref} failed: {event['error']}")
            if event.get("status", "").startswith(("Pulling from", "Digest", "Status")):
                print(printable(f"  {ref}: {event['status']}"), flush=True)  # the registry's words
        return self.client.images.get(ref)


def list_containers(docker_host: str | None = None, client: docker.DockerClient | None = None) -> list:
    client = client or client_for(docker_host)
    return client.containers.list(all=True, filters={"label": f"{MANAGED}=1"})


def container_lines(docker_host: str | None = None) -> list[str]:
    """`orch ls`: one line per container orch started, running or not."""
    found = list_containers(docker_host)
    if not found:
        return ["no orch containers"]
    return [printable(f"{c.name}  {c.status}  sweep={c.labels.get('orch.sweep')} cell={c.labels.get('orch.cell')} "
                      f"run={c.labels.get('orch.run')} owner_pid={c.labels.get('orch.owner_pid')}"
                      + ("  (orphaned)" if orphaned(c) else "")) for c in found]  # the Docker engine's words


def down(docker_host: str | None, everything: bool) -> str:
    """`orch down`: remove the containers of killed runs (with `everything`, of live ones too)."""
    return removed_text(remove([c for c in list_containers(docker_host) if everything or orphaned(c)]))


def removed_text(names: list[str]) -> str:
    """How many containers were removed, and which: `orch down`'s line, per node on a cluster."""
    return printable(f"removed {len(names)} container(s)" + (f": {', '.join(names)}" if names else ""))


def orphaned(container) -> bool:
    """A container whose orch process on this host is gone (killed, or the machine rebooted)."""
    labels = container.labels
    if labels.get("orch.owner_host") != socket.gethostname():
        return False
    try:
        os.kill(int(labels.get("orch.owner_pid", "0")), 0)
    except (ProcessLookupError, ValueError):
        return True
    except PermissionError:
        return False
    return False


def remove(containers) -> list[str]:
    """The names of those removed; one already gone or going (another `orch down`, a cluster's
    nodes that share a Docker engine) is not an error and not counted; one Docker refuses to
    remove is an OrchError naming it."""
    removed, refused = [], []
    for c in containers:
        try:
            c.remove(force=True)
        except docker.errors.NotFound:
            continue
        except docker.errors.APIError as exc:
            if exc.status_code != 409:  # 409: "removal of container ... is already in progress"
                refused.append(f"{c.name} ({exc.explanation or exc})")
            continue
        except OSError as exc:
            refused.append(f"{c.name} (Docker did not answer: {exc})")
            continue
        removed.append(c.name)
    if refused:
        raise OrchError(f"removed {len(removed)} container(s)" + (f" ({', '.join(removed)})" if removed else "")
                        + f"; Docker would not remove {', '.join(refused)}; remove them with docker rm -f")
    return removed


def _server_host(docker_host: str | None) -> str:
    """Benchmark traffic goes to the host that runs the container."""
    url = docker_host or os.environ.get("DOCKER_HOST") or ""
    parsed = urlparse(url)
    return parsed.hostname if parsed.scheme in ("tcp", "ssh", "http", "https") and parsed.hostname else "127.0.0.1"


def _short(exc: Exception) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:160]
