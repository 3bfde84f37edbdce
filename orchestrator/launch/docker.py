"""Engines in containers, through docker-py: a cell's server is one labelled container."""

from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path
from urllib.parse import urlparse

import docker
from docker.types import DeviceRequest

from engines import ServerPlan

from orchestrator.common import redact
from orchestrator.common.errors import OrchError, ServerError, ServerExited, ServerTimeout
from orchestrator.launch.launchers import MANAGED, poll_ready

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
                                "(dockerd, or systemctl start docker) or point DOCKER_HOST at a running one")


class DockerServer:
    def __init__(self, plan: ServerPlan, log_path: Path, ready_timeout_s: float):
        self.plan, self.c = plan, plan.container
        self.log_path = Path(log_path)
        self.ready_timeout_s = ready_timeout_s
        self.client = client_for(self.c["docker_host"])
        self.container = None
        self.base_url = f"http://{_server_host(self.c['docker_host'])}:{plan.port}"

    def __enter__(self) -> "DockerServer":
        image = self._ensure_image()
        self.container = self.client.containers.run(image.id, **self._run_kwargs())
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def describe(self) -> dict:
        if self.container is None:
            return {}
        image = self.client.images.get(self.c["image"])
        return {"container_id": self.container.id[:12], "image": self.c["image"], "image_id": image.id,
                "image_digests": image.attrs.get("RepoDigests", [])}

    def alive(self) -> bool:
        try:
            self.container.reload()
        except docker.errors.NotFound:
            return False
        return self.container.status == "running"

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

    def _exited(self) -> ServerExited:
        state = self.container.attrs.get("State", {})
        err = ServerExited(state.get("ExitCode", -1), self._logs(30))
        if state.get("OOMKilled"):
            err.args = (f"{err.args[0]} (OOM-killed)",)
        return err

    def _save_log(self) -> None:
        """The container's whole log into server.log, streamed (it may be large), without secrets."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "w", encoding="utf-8") as out:
            for line in self.container.logs(stream=True, follow=False):  # follow defaults to stream
                out.write(redact.scrub(line.decode(errors="replace")))

    def _logs(self, tail: int | None) -> str:
        try:
            data = self.container.logs(tail=tail) if tail else self.container.logs()
        except docker.errors.APIError:
            return ""
        return data.decode(errors="replace")

    def _ensure_image(self):
        try:
            return self.client.images.get(self.c["image"])
        except docker.errors.ImageNotFound:
            pass
        # docker-py parses the reference (tag or @sha256 digest) and does not raise on an error
        # reported inside the pull stream: look for it.
        for event in self.client.api.pull(self.c["image"], stream=True, decode=True):
            if "error" in event:
                raise ServerError(f"pull of {self.c['image']} failed: {event['error']}")
            if event.get("status", "").startswith(("Pulling from", "Digest", "Status")):
                print(f"  {self.c['image']}: {event['status']}", flush=True)
        return self.client.images.get(self.c["image"])

    def _run_kwargs(self) -> dict:
        c = self.c
        kwargs = {
            "command": self.plan.argv, "detach": True, "labels": c.get("labels", {}),
            "name": f"orch-{c.get('labels', {}).get('orch.cell', 'cell')}-{uuid.uuid4().hex[:6]}",
            "environment": {n: os.environ[n] for n in c["env_names"] if n in os.environ},
            "volumes": {src: {"bind": target, "mode": mode} for src, (target, mode) in c["volumes"].items()},
        }
        if c["ipc"] == "host":
            kwargs["ipc_mode"] = "host"
        elif c["shm_size"]:
            kwargs["shm_size"] = c["shm_size"]
        if c["network"] == "host":
            kwargs["network_mode"] = "host"
        else:
            kwargs["ports"] = {f"{c['container_port']}/tcp": ("127.0.0.1", self.plan.port)}
        if c["gpus"] != "none":
            ids = None if c["gpus"] == "all" else [str(g) for g in c["gpus"]]
            kwargs["device_requests"] = [DeviceRequest(count=-1 if ids is None else 0, device_ids=ids,
                                                       capabilities=[["gpu"]])]
        return kwargs


def list_containers(docker_host: str | None = None) -> list:
    return client_for(docker_host).containers.list(all=True, filters={"label": f"{MANAGED}=1"})


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
    removed = []
    for c in containers:
        c.remove(force=True)
        removed.append(c.name)
    return removed


def _server_host(docker_host: str | None) -> str:
    """Benchmark traffic goes to the host that runs the container."""
    url = docker_host or os.environ.get("DOCKER_HOST") or ""
    parsed = urlparse(url)
    return parsed.hostname if parsed.scheme in ("tcp", "ssh", "http", "https") and parsed.hostname else "127.0.0.1"


def _short(exc: Exception) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:160]
