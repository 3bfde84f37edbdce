"""What one cell's server is started from, typed: the model files (ResolvedModel), the plan a
launcher follows (ServerPlan) and, for launcher = "docker", its one container (ContainerSpec):
what `docker run` shows and what docker-py is given.

ContainerSpec.run_line() (the command line users see and runs record) and
ContainerSpec.run_kwargs() (what orchestrator.launch.docker hands to docker-py) are the only places
the container's options are spelled, so the two cannot drift apart. Nothing here imports orchestrator.
"""

from __future__ import annotations

import re
import shlex
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Any, Literal, cast

if TYPE_CHECKING:
    from docker.types import DeviceRequest

# Bridge networking publishes the server's port on this address only: nothing off the host reaches it.
LOOPBACK = "127.0.0.1"

# Where an engine's config files are, in its arguments (Engine.config_file) and a scenario's args:
# Engine.plan puts the real folder in its place, the cell's config/ folder or, in a container,
# CONFIG_MOUNT, where that folder is mounted read-only.
CONFIG_DIR = "{orch_config}"
CONFIG_MOUNT = "/orch-config"
# A config file's name becomes a path in the run folder: one plain name, nothing that climbs or hides.
_CONFIG_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


@dataclass(frozen=True)
class ConfigFile:
    """One file an engine's server reads at start (Engine.config_files), written by the sweep
    into the cell's config/ folder before the server starts, and kept there as part of the record."""

    name: str
    text: str

    def __post_init__(self) -> None:
        if not _CONFIG_NAME.fullmatch(self.name) or ".." in self.name:
            raise ValueError(f"config file name {self.name!r}: one plain file name (letters, digits, . _ -, "
                             "at most 64 characters, not starting with a dot)")


def fill_config_dir(args: list[str], where: str) -> list[str]:
    """`args` with CONFIG_DIR replaced by `where`, the folder the server sees its config files in."""
    return [a.replace(CONFIG_DIR, where) for a in args]


@dataclass(frozen=True)
class Mount:
    """One bind mount: a host folder seen at `target` inside the container."""

    host: str
    target: str
    mode: Literal["ro", "rw"] = "rw"

    @classmethod
    def parse(cls, text: str) -> Mount:
        """A scenario's "HOST:CONTAINER[:ro|rw]" (already validated); ~ expands."""
        host, target, *mode = text.split(":")
        # DockerSettings checked that a mode, where given, is ro or rw.
        return cls(str(Path(host).expanduser()), target, cast(Literal["ro", "rw"], mode[0]) if mode else "rw")

    def flag(self) -> str:
        """`docker run -v` value; rw is docker's default, so it is left out."""
        return f"{self.host}:{self.target}" + (":ro" if self.mode == "ro" else "")

    def bind(self) -> str:
        """docker-py's (and the Engine API's Binds) form, mode always given."""
        return f"{self.host}:{self.target}:{self.mode}"


@dataclass(frozen=True)
class ContainerSpec:
    """Everything `docker run` needs for one cell's server. Environment values are never held:
    only names, read from the caller's environment when the container is started."""

    image: str
    argv: tuple[str, ...]  # the command after the image (its entrypoint is the server)
    host_port: int  # where orch reaches the server: published on loopback, or the port itself with host networking
    container_port: int  # the server's port inside the container
    gpus: Literal["none", "all"] | tuple[int, ...] = "none"
    ipc: Literal["host", "private"] = "host"
    shm_size: str | None = None  # e.g. "16g"; only with ipc = "private"
    network: Literal["host", "bridge"] = "bridge"
    volumes: tuple[Mount, ...] = ()
    env_names: tuple[str, ...] = ()
    docker_host: str | None = None  # None: DOCKER_HOST, else the local engine
    cpuset: str | None = None  # e.g. "0-3": the CPU cores the container may run on (a sweep's device)
    # Filled in after planning (the sweep's owner labels); not part of the hash, as it changes.
    labels: dict[str, str] = field(default_factory=dict, hash=False)

    def run_line(self) -> list[str]:
        """The equivalent `docker run` command line, for people to read and rerun."""
        opts = ["docker", "run", "--rm"]
        if self.gpus != "none":
            opts += ["--gpus", self._gpus_flag()]
        if self.ipc == "host":
            opts += ["--ipc", "host"]
        elif self.shm_size:
            opts += ["--shm-size", self.shm_size]
        if self.network == "host":
            opts += ["--network", "host"]
        else:
            opts += ["-p", f"{LOOPBACK}:{self.host_port}:{self.container_port}"]
        if self.cpuset:
            opts += ["--cpuset-cpus", self.cpuset]
        for mount in self.volumes:
            opts += ["-v", mount.flag()]
        for name in self.env_names:
            opts += ["-e", name]  # the value comes from your environment; orch never writes it
        return [*opts, self.image, *self.argv]

    def _gpus_flag(self) -> str:
        if self.gpus == "all":
            return "all"
        ids = "device=" + ",".join(map(str, self.gpus))
        # The CLI reads --gpus as CSV: unquoted, device=0,3 is device 0 and a stray field "3".
        return f'"{ids}"' if len(self.gpus) > 1 else ids

    def run_kwargs(self, environ: Mapping[str, str]) -> dict[str, Any]:
        """Keyword arguments for docker-py's `client.containers.run(image, **kwargs)`. A name in
        env_names that `environ` lacks is left out: unset in the container, as with `docker run -e NAME`."""
        kwargs: dict[str, Any] = {
            "command": list(self.argv), "detach": True, "labels": dict(self.labels),
            "name": f"orch-{self.labels.get('orch.cell', 'cell')}-{uuid.uuid4().hex[:6]}",
            "environment": {n: environ[n] for n in self.env_names if n in environ},
            # A list, not docker-py's dict keyed by host folder: one folder may be mounted twice
            # (a model and its draft side by side, at /models and /drafts).
            "volumes": [mount.bind() for mount in self.volumes],
        }
        if self.ipc == "host":
            kwargs["ipc_mode"] = "host"
        elif self.shm_size:
            kwargs["shm_size"] = self.shm_size
        if self.network == "host":
            kwargs["network_mode"] = "host"
        else:
            kwargs["ports"] = {f"{self.container_port}/tcp": (LOOPBACK, self.host_port)}
        if self.gpus != "none":
            kwargs["device_requests"] = [self._device_request()]
        if self.cpuset:
            kwargs["cpuset_cpus"] = self.cpuset
        return kwargs

    def _device_request(self) -> DeviceRequest:
        from docker.types import DeviceRequest  # only a launch needs docker-py; planning does not

        if self.gpus == "all":
            return DeviceRequest(count=-1, capabilities=[["gpu"]])
        return DeviceRequest(device_ids=[str(g) for g in self.gpus], capabilities=[["gpu"]])


@dataclass(frozen=True)
class ResolvedModel:
    """A scenario's model or draft reference, made concrete: a local file or folder, or a hub name."""

    ref: str
    path: PurePath | None = None  # inside a container: the path it is mounted at
    hf_ref: str | None = None

    @property
    def label(self) -> str:
        return self.path.name if self.path else (self.hf_ref or self.ref)


@dataclass(frozen=True)
class ServerPlan:
    """What a launcher needs to start one server for one cell."""

    argv: list[str]
    port: int
    health_path: str
    env: dict[str, str]
    base_url: str | None = None  # set for a server orch did not start
    container: ContainerSpec | None = None  # set for launcher = "docker"
    cores: tuple[int, ...] | None = None  # a local process's CPU affinity (a sweep's device); None: any core
    # Written into config_dir (on this host) before the server starts: Engine.config_files.
    files: tuple[ConfigFile, ...] = ()
    config_dir: Path | None = None

    def display(self) -> str:
        """The command line a user would type: the argv, or the equivalent `docker run`. A server
        orch did not start has none (launchers.command_text shows its URL, less any password)."""
        if self.container is None:
            return shlex.join(self.argv)
        return shlex.join(self.container.run_line())
