"""The small abstract class every engine implements."""

from __future__ import annotations

import shutil
from abc import ABC, abstractmethod
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import Any, ClassVar, Literal, Protocol, TypeVar, cast

from .plan import CONFIG_DIR, CONFIG_MOUNT, ConfigFile, ContainerSpec, Mount, ResolvedModel, ServerPlan, fill_config_dir
from .installing import Installer


# What an engine reads of the scenario, as protocols: orchestrator's scenario types
# (orchestrator/types/scenario.py) have these attributes, and engines import nothing of orchestrator.
class SpeculationSettings(Protocol):
    @property
    def method(self) -> str: ...
    @property
    def config(self) -> dict[str, Any]: ...


class DockerSettings(Protocol):
    @property
    def image(self) -> str: ...
    @property
    def gpus(self) -> str | list[int]: ...
    @property
    def ipc(self) -> Literal["host", "private"]: ...
    @property
    def shm_size(self) -> str | None: ...
    @property
    def network(self) -> Literal["bridge", "host"]: ...
    @property
    def volumes(self) -> list[str]: ...
    @property
    def env(self) -> list[str]: ...
    @property
    def docker_host(self) -> str | None: ...
    @property
    def port(self) -> int | None: ...


class EngineSettings(Protocol):
    """A scenario's engine table."""

    @property
    def binary(self) -> str | None: ...
    @property
    def url(self) -> str | None: ...
    @property
    def args(self) -> list[str]: ...
    @property
    def env(self) -> dict[str, str]: ...
    @property
    def docker(self) -> DockerSettings | None: ...
    @property
    def speculation(self) -> SpeculationSettings: ...


class WorkloadSettings(Protocol):
    @property
    def cache_prompt(self) -> bool: ...
    @property
    def ignore_eos(self) -> bool: ...


# A request's draft counts in engine-neutral terms, as analysis reads them. Each engine's stream
# reports drafts under its own names (llama.cpp's timings.draft_n, vLLM's
# metrics.speculative_decoding.num_draft_tokens) and the records keep them as sent; the engine's
# adapter, StreamCounts.draft_fields(), says which record field holds each neutral count, and
# analysis/summary.py fills these columns of a run's request frame from it once per run, so no
# figure names an engine's field.
DRAFTED = "drafted"  # draft tokens proposed
ACCEPTED = "accepted"  # of those, accepted (never more)
STEPS = "draft_steps"  # verification steps that had a draft
HISTOGRAM = "accepted_histogram"  # steps by drafts accepted: [j] steps accepted exactly j


@dataclass(frozen=True)
class DraftFields:
    """Where one engine's request records hold each neutral count; None: it reports none."""

    drafted: str | None = None
    accepted: str | None = None
    steps: str | None = None
    histogram: str | None = None

    def source(self, column: str) -> str | None:
        """The record field behind a neutral column."""
        return {DRAFTED: self.drafted, ACCEPTED: self.accepted, STEPS: self.steps, HISTOGRAM: self.histogram}[column]


@dataclass(frozen=True)
class StreamCounts:
    """Token counts a server puts in its stream events beyond OpenAI's `usage`: event[key][field],
    where a dotted key walks nested objects ("metrics.speculative_decoding"). orchestrator.measure
    reads and checks them and records each as `<prefix>_<field>` (prefix: the key, by default);
    the record's fields are declared in orchestrator/types/records.py."""

    key: str
    counts: tuple[str, ...]  # whole numbers of tokens, 0 and up
    rates: tuple[str, ...] = ()  # tokens per second
    completion: str | None = None  # the count of completion tokens so far (at most max_tokens)
    drafted: str | None = None  # draft tokens proposed ...
    accepted: str | None = None  # ... and of those accepted (never more)
    prefix: str | None = None
    steps: str | None = None  # verification steps that had a draft
    # Steps by the number of drafts they accepted: histogram[j] steps accepted exactly j; its
    # total is `steps` and its weighted total `accepted`.
    histogram: str | None = None

    @property
    def record_prefix(self) -> str:
        return self.prefix or self.key

    def draft_fields(self) -> DraftFields:
        """The adapter to the neutral draft counts: which record field holds each."""
        def field(name: str | None) -> str | None:
            return f"{self.record_prefix}_{name}" if name else None
        return DraftFields(field(self.drafted), field(self.accepted), field(self.steps), field(self.histogram))


# vLLM's per-request draft counts (--per-request-spec-decode-metrics summary: the last event's
# metrics.speculative_decoding), a shape other servers that count drafts per request can report in
# (orch's transformers server does), read into the records' spec_* fields.
SPEC_DECODE_METRICS = StreamCounts(
    "metrics.speculative_decoding", counts=("num_spec_steps", "num_draft_tokens", "num_accepted_draft_tokens"),
    prefix="spec", drafted="num_draft_tokens", accepted="num_accepted_draft_tokens", steps="num_spec_steps",
    histogram="acceptance_histogram")


class Engine(ABC):
    """One kind of server. Everything orch knows about it is here or in its module; the rest of
    orch asks these attributes and methods and never branches on `kind`."""

    kind: ClassVar[str]
    # Speculation methods this engine understands; "none" (the baseline) is always allowed.
    methods: ClassVar[tuple[str, ...]]
    # Methods that need a draft model file.
    draft_methods: ClassVar[tuple[str, ...]] = ()
    health_path: ClassVar[str] = "/health"
    needs_binary: ClassVar[bool] = True
    # False: `model` is a served model name, not a file or hub reference to resolve.
    resolves_model: ClassVar[bool] = True
    install_hint: ClassVar[str] = ""
    # The `orch engines install` target that provides the local process, if any.
    installer: ClassVar[Installer | None] = None
    # Prefix of its Prometheus metric names (None: count any prefix's speculation counters).
    metrics_prefix: ClassVar[str | None] = None
    # Where its Prometheus text is served; None: it serves none (no server-side counters).
    metrics_path: ClassVar[str | None] = "/metrics"
    # Where it reports its settings as JSON with a "chat_template" string (llama.cpp's /props);
    # None: it reports none, and the cell records its template as unknown.
    props_path: ClassVar[str | None] = None
    # Its speculation counters: metric name (prefix and _total removed) -> what
    # orchestrator/measure/server_metrics.py counts ("drafts", "draft_tokens", "accepted_tokens",
    # or "generated_tokens": a step's own token plus the drafts it accepted). None: vLLM's and
    # llama.cpp's spec_decode_* names.
    metric_counters: ClassVar[dict[str, str] | None] = None
    # Where the image has no entrypoint that starts the server: the command before server_args.
    image_command: ClassVar[tuple[str, ...]] = ()
    # Counts its stream events carry beyond `usage`, if any.
    stream_counts: ClassVar[StreamCounts | None] = None
    # Its `engine` value in the published figures (orch reference), if it has rows there.
    published_name: ClassVar[str | None] = None
    # One line for the report: where its token counts and acceptance come from.
    report_note: ClassVar[str] = ""
    # "gguf": a model file; "hf": a Hugging Face folder (or hub reference).
    model_format: ClassVar[str] = "gguf"
    # For servers whose streams report no token counts: POST {"input": text} -> {"tokens": [...]}.
    tokenize_path: ClassVar[str | None] = None
    # Keys a scenario may add to the engine's speculation config (speculation.config).
    spec_config_keys: ClassVar[tuple[str, ...]] = ()

    def __init__(self, spec: EngineSettings | None = None):
        # The scenario's engine table; None when only class facts are asked (doctor).
        self.spec: EngineSettings = spec  # type: ignore[assignment]  # every method but class facts needs one

    @abstractmethod
    def default_binary(self) -> str | None:
        """Path of the server binary when the scenario names none, or None if not found."""

    default_port: ClassVar[int] = 8080  # the server's port inside its official image

    @abstractmethod
    def server_args(self, n_spec: int, model: ResolvedModel, port: int, parallel: int,
                    draft: ResolvedModel | None = None, host: str = "127.0.0.1") -> list[str]:
        """Arguments after the binary (or the image's entrypoint) for one cell."""

    def binary(self) -> str | None:
        if self.spec.binary:
            return self.spec.binary
        return self.default_binary()

    def plan(self, n_spec: int, model: ResolvedModel, port: int, parallel: int,
             draft: ResolvedModel | None = None, config_dir: Path | None = None) -> ServerPlan:
        """One cell's server. `config_dir`: the host folder its config files go in (the cell's
        config/ folder); an engine that writes none ignores it."""
        if not self.needs_binary:
            return ServerPlan(argv=[], port=port, health_path=self.health_path, env={}, base_url=self.spec.url)
        files = self.config_files(n_spec, model, draft)
        config_dir = config_dir if files else None
        if self.spec.docker is not None:
            return self._container_plan(n_spec, model, port, parallel, draft, files, config_dir)
        binary = self.binary() or self.kind
        args = self.with_defaults([*self.server_args(n_spec, model, port, parallel, draft), *self.spec.args])
        if config_dir is not None:
            args = fill_config_dir(args, str(config_dir))
        return ServerPlan(argv=[*self.command_prefix(binary), *args], port=port, health_path=self.health_path,
                          env={**self.process_env(), **self.spec.env}, files=files, config_dir=config_dir)

    def config_files(self, n_spec: int, model: ResolvedModel, draft: ResolvedModel | None) -> tuple[ConfigFile, ...]:
        """Files the server reads at start (a speculative config, a chat template), written into
        the cell's config/ folder before it starts; server_args names each by config_file(name)."""
        return ()

    @staticmethod
    def config_file(name: str) -> str:
        """How server_args names one of its config files: the folder is filled in by plan()."""
        return f"{CONFIG_DIR}/{name}"

    def with_defaults(self, args: list[str]) -> list[str]:
        """The server's arguments, the scenario's included, plus any default the engine adds unless
        the scenario set it. Planned once here, so a container's command and ServerPlan.argv agree."""
        return args

    def fit_threads(self, args: list[str], cores: int) -> list[str]:
        """`args` with the server's thread count set to `cores`, for a server pinned to that many
        cores; an engine with no thread setting returns them as they are."""
        return args

    def command_prefix(self, binary: str) -> list[str]:
        """What starts the server as a local process, before server_args."""
        return [binary]

    def process_env(self) -> dict[str, str]:
        """Defaults for a local process's environment; the scenario's env overrides them."""
        return {}

    def host_warnings(self, cpu_flags: dict[str, bool] | None, gpus: list[str]) -> list[str]:
        """What this engine's speed depends on that the host lacks (`cpu_flags`: environment.json's,
        None when unknown; `gpus`: NVIDIA GPUs seen). Printed as each of its cells starts."""
        return []

    def _container_plan(self, n_spec: int, model: ResolvedModel, host_port: int, parallel: int,
                        draft: ResolvedModel | None, files: tuple[ConfigFile, ...] = (),
                        config_dir: Path | None = None) -> ServerPlan:
        d = self.spec.docker
        assert d is not None  # plan() comes here only for launcher = "docker"
        host_net = d.network == "host"
        inner = host_port if host_net else (d.port or self.default_port)
        model, model_mount = _mount(model, "/models")
        draft, draft_mount = _mount(draft, "/drafts")
        # The config folder is on this host: a remote Docker host (docker_host) does not see it.
        config_mount = Mount(str(config_dir), CONFIG_MOUNT, "ro") if config_dir is not None else None
        volumes = tuple(m for m in (model_mount, draft_mount, config_mount) if m) + tuple(
            Mount.parse(v) for v in d.volumes)
        # Bridge networking publishes on 127.0.0.1 only, so the server may listen on all interfaces.
        args = self.with_defaults([*self.server_args(n_spec, model, inner, parallel, draft,
                                                     host="127.0.0.1" if host_net else "0.0.0.0"), *self.spec.args])
        if config_mount is not None:
            args = fill_config_dir(args, CONFIG_MOUNT)
        container = ContainerSpec(
            image=d.image, argv=(*self.image_command, *args), host_port=host_port, container_port=inner,
            # A string is "all" or "none": DockerSettings validated it.
            gpus=cast(Literal["all", "none"], d.gpus) if isinstance(d.gpus, str) else tuple(d.gpus),
            ipc=d.ipc, shm_size=d.shm_size,
            network=d.network, volumes=volumes, env_names=tuple(d.env), docker_host=d.docker_host)
        return ServerPlan(argv=args, port=host_port, health_path=self.health_path, env={}, container=container,
                          files=files, config_dir=config_dir)

    def request_fields(self, workload: WorkloadSettings) -> dict[str, Any]:
        """Engine-specific JSON fields added to every request body."""
        return {}

    def cache_setting(self, workload: WorkloadSettings) -> str:
        """How prompt/prefix caching was set for this engine, for the report."""
        return "engine default"

    def version(self) -> str:
        return "unknown"

    @staticmethod
    def which(name: str) -> str | None:
        found = shutil.which(name)
        return str(Path(found).resolve()) if found else None


M = TypeVar("M", bound=ResolvedModel | None)


def _mount(model: M, target_dir: str) -> tuple[M, Mount | None]:
    """A local model file is bind-mounted read-only (its folder at target_dir); hub references
    pass through unchanged, with no mount."""
    if model is None or model.path is None:
        return model, None
    mount = Mount(str(Path(model.path).parent), target_dir, "ro")
    return replace(model, path=PurePosixPath(target_dir) / Path(model.path).name), mount
