"""The shape of a scenario: what each table and key of a scenario file holds, typed, with the
checks that need nothing but the values (ranges, duplicates, keys that go together). On the
shared floor, so that engines, the driver and telemetry take these types.

The checks against what orch knows (engine kinds and their methods, launchers, known GPUs,
built-in prompt sets, device syntax, files) run above, in sweep/scenario_file.py, once a file has this
shape."""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal, Self, TypeVar
from urllib.parse import SplitResult, urlsplit

from pydantic import (BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, StrictInt, StrictStr,
                      field_validator, model_serializer, model_validator)

from orchestrator.common import redact

MAX_BLOCKS = 50  # replicate starts per cell; more would plan more starts than any sweep sits through
# Requests one sweep may plan, warm-up included, over every cell and block (README, "Limits"): a
# plan is held in memory and every request is a row the report reads back.
MAX_REQUESTS = 100_000
MAX_ID_CHARS = 200  # prompt ids and set names are never paths, but they fill every request row and table


class KeyedError(ValueError):
    """A cross-field error that knows which key it is about."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key


class _Strict(BaseModel):
    # TOML has inf and nan literals; no timeout or temperature means anything with them.
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


_Item = TypeVar("_Item", str, int)


def _unique(values: list[_Item], what: str) -> list[_Item]:
    seen: set[_Item] = set()
    repeated: set[_Item] = set()
    for v in values:  # linear: a list may be long
        if v in seen:
            repeated.add(v)
        else:
            seen.add(v)
    dupes = sorted(repeated)
    if dupes:
        raise ValueError(f"duplicate {what} {dupes}; list each once")
    return values


def _path_name(value: str) -> str:
    """Scenario, engine and method names end up in result folder names: keep them plain."""
    if len(value) > 64 or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", value):
        raise ValueError("use at most 64 letters, digits, '.', '_' and '-', starting with a letter or digit "
                         "(it names result folders)")
    return value


def cell_id(engine: str, method: str, n_spec: int) -> str:
    """A cell's id, which names its result folder. The baseline (n_spec 0) has method "none"."""
    if n_spec == 0:
        return f"{engine}-n0"
    return f"{engine}-{method}-n{n_spec}"


_V1_TAIL = re.compile(r"/v1(/chat/completions|/completions|/models)?/*\Z")


def url_problem(url: str) -> str | None:
    """What is wrong with a server's base URL, with the fix; None if it is fine.

    Messages do not repeat the URL: it may hold a password."""
    if not url.isprintable() or any(c.isspace() for c in url):
        return "the URL contains whitespace or control characters; remove them"
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # e.g. an unclosed [ of an IPv6 address
        return f"not a valid URL ({exc}); write it as http://HOST:PORT"
    if parts.scheme not in ("http", "https"):
        return "not an http(s) URL; write it as http://HOST:PORT"
    if not parts.hostname:
        return "the URL has no host; write it as http://HOST:PORT"
    if _port(parts) == 0:
        port = parts.netloc.rpartition("@")[2].rpartition("]")[2].partition(":")[2]
        return f"port {port!r} is not a number from 1 to 65535; use the port the server listens on"
    if parts.query or parts.fragment or "?" in url or "#" in url:
        return "the URL has a query or fragment ('?...' or '#...'); remove it: orch appends paths to the base URL"
    tail = _V1_TAIL.search(parts.path)
    if tail:
        return f"drop the trailing {tail.group(0).rstrip('/')}: orch adds /v1/... itself"
    return None


def _port(parts: SplitResult) -> int | None:
    """The URL's port, 0 if it is not one; None if it has none."""
    try:
        return parts.port
    except ValueError:  # not digits, or past 65535
        return 0


class PromptSource(BaseModel):
    """One entry of a scenario's `workload.prompts`: a set's name or a file, as a string, or a
    table that says how to read and sample it."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)
    source: StrictStr = Field(min_length=1)  # a built-in set's name, or a file relative to the scenario
    format: Literal["jsonl", "mt-bench", "speed-bench", "humaneval"] | None = None  # None: from the columns
    name: StrictStr | None = Field(default=None, min_length=1, max_length=MAX_ID_CHARS)  # default: the file's stem
    per_category: StrictInt | None = Field(default=None, gt=0)  # N prompts per category, drawn with sample_seed
    sample_seed: StrictInt = 0
    turns: Literal["first", "all"] = "first"  # multi-turn items: the first user turn, or all joined
    # Only these prompts of the set, in the set's order (before per_category sampling).
    ids: Annotated[list[StrictStr], Field(min_length=1)] | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, data: object) -> object:
        return {"source": data} if isinstance(data, str) else data

    @field_validator("name")
    @classmethod
    def _name(cls, v: str | None) -> str | None:
        # A set's name is part of every request key (.../<set>/<id>): a "/" would let two sets'
        # keys collide; a control character would break the tables it labels.
        if v is not None and ("/" in v or not v.isprintable() or not v.strip()):
            raise ValueError(f"{v!r} is no set name; use printable text without '/'")
        return v

    @field_validator("ids")
    @classmethod
    def _ids(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and len(set(v)) < len(v):
            raise ValueError(f"ids lists {next(i for i in v if v.count(i) > 1)!r} twice")
        return v

    @model_validator(mode="after")
    def _applies(self) -> Self:
        if self.per_category is None and "sample_seed" in self.model_fields_set:
            raise ValueError("sample_seed draws per_category prompts: set per_category too, or drop sample_seed")
        return self

    @model_serializer(mode="wrap")
    def _as_string(self, handler: SerializerFunctionWrapHandler) -> object:
        # A plain entry stays a string in the run's scenario.toml, as the user wrote it (and as
        # runs written before tables existed hold it, which --resume compares as text).
        return self.source if self.plain else handler(self)

    @property
    def plain(self) -> bool:
        return all(getattr(self, k) == f.default for k, f in type(self).model_fields.items() if k != "source")

    @property
    def label(self) -> str:
        """How messages name it: the string, or the table."""
        if self.plain:
            return repr(self.source)
        fields = {k: getattr(self, k) for k, f in type(self).model_fields.items() if getattr(self, k) != f.default}
        return "{" + ", ".join(f"{k} = {v!r}" for k, v in {"source": self.source, **fields}.items()) + "}"


class Workload(_Strict):
    # Each a set's name or file ("seeds", "my.jsonl"), or a table: {source, format, name,
    # per_category, sample_seed, turns} (measure/prompts.py's PromptSource).
    prompts: list[PromptSource] = Field(default=[PromptSource(source="seeds")], min_length=1)
    max_tokens: int = Field(default=256, gt=0)
    temperature: float = Field(default=0.0, ge=0)
    seed: int = 1234
    concurrency: list[int] = Field(default=[1], min_length=1)
    warmup: int = Field(default=1, ge=0)
    repeats: int = Field(default=1, gt=0)
    ignore_eos: bool = False
    cache_prompt: bool = False
    request_timeout_s: float = Field(default=300.0, gt=0)
    # A request's redirects: followed to its own host only, to any host, or none (measure/driver.py).
    follow_redirects: Literal["same-host", "any", "none"] = "same-host"
    # Measure each cell as long as needed: after `repeats`, one more repeat of every prompt at a
    # time until the e2e median's 95% interval lies within +-target_ci of it (0.03: +-3%), or
    # max_repeats repeats ran. None: exactly `repeats`.
    target_ci: float | None = Field(default=None, gt=0, lt=1)
    max_repeats: int | None = Field(default=None, gt=0)
    # Replicated starts: every cell's server is started `blocks` times, each block in its own
    # seeded random order (n_spec 0 first in the run and last), so that start-to-start spread is
    # measured and drift falls on every depth alike (docs/metrics.md, "Two levels").
    blocks: int = Field(default=1, ge=1, le=MAX_BLOCKS)

    @model_validator(mode="after")
    def _repeat_cap(self) -> Self:
        if self.max_repeats is not None and self.target_ci is None:
            raise ValueError("max_repeats caps target_ci's repeats: set target_ci too, or drop max_repeats")
        if self.max_repeats is not None and self.max_repeats < self.repeats:
            raise ValueError(f"max_repeats ({self.max_repeats}) is below repeats ({self.repeats}); raise it")
        return self

    @field_validator("warmup", "repeats", "max_repeats")
    @classmethod
    def _bounded(cls, v: int | None) -> int | None:
        if v is not None and v > MAX_REQUESTS:
            raise ValueError(f"{v:,} is more than the {MAX_REQUESTS:,} requests one sweep may plan; use at most "
                             f"{MAX_REQUESTS:,} (README, Limits)")
        return v

    @property
    def repeat_cap(self) -> int:
        """The most repeats a cell may take (repeats when there is no target)."""
        if self.target_ci is None:
            return self.repeats
        return self.max_repeats if self.max_repeats is not None else max(10, self.repeats)

    @field_validator("prompts")
    @classmethod
    def _prompts(cls, v: list[PromptSource]) -> list[PromptSource]:
        _unique([p.source if p.plain else p.label for p in v], "prompt sets")
        return v

    @field_validator("concurrency")
    @classmethod
    def _concurrency(cls, v: list[int]) -> list[int]:
        if any(c <= 0 for c in v):
            raise ValueError("concurrency levels must be at least 1")
        return _unique(v, "concurrency levels")


class Speculation(_Strict):
    method: str = "none"
    n_spec: list[int] = Field(default=[0], min_length=1)
    draft_model: str | None = None
    # Extra keys of the engine's own speculation config (vLLM: --speculative-config JSON),
    # e.g. prompt_lookup_min/max for ngram, or synthetic acceptance rates.
    config: dict[str, Any] = {}

    @field_validator("method")
    @classmethod
    def _method(cls, v: str) -> str:
        return _path_name(v)

    @field_validator("config")
    @classmethod
    def _config(cls, v: dict[str, Any]) -> dict[str, Any]:
        if not _finite(v):
            raise ValueError("every number must be finite, not inf or nan")
        return v

    @field_validator("n_spec")
    @classmethod
    def _n_spec(cls, v: list[int]) -> list[int]:
        if any(n < 0 for n in v):
            raise ValueError("n_spec values must be 0 (speculation off) or more")
        return _unique(v, "n_spec values")


class DockerSettings(_Strict):
    """How to run an engine's official image. The image's entrypoint is the server."""

    image: str = Field(min_length=1)
    gpus: str | list[int] = "all"  # "all", "none", or device ids
    ipc: Literal["host", "private"] = "host"
    shm_size: str | None = None  # e.g. "16g", with ipc = "private"
    network: Literal["bridge", "host"] = "bridge"  # bridge publishes the port on 127.0.0.1 only
    volumes: list[str] = []  # "HOST:CONTAINER[:ro]"; ~ expands
    env: list[str] = []  # names passed through from your environment, never written anywhere
    docker_host: str | None = None  # else DOCKER_HOST, else the local engine
    port: int | None = Field(default=None, gt=0, lt=65536)  # server port inside the container

    @field_validator("gpus")
    @classmethod
    def _gpus(cls, v: str | list[int]) -> str | list[int]:
        if isinstance(v, str) and v not in ("all", "none"):
            raise ValueError('use "all", "none", or a list of device ids')
        return v

    @field_validator("volumes")
    @classmethod
    def _volumes(cls, v: list[str]) -> list[str]:
        for vol in v:
            parts = vol.split(":")
            if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] not in ("ro", "rw")):
                raise ValueError(f"{vol!r} is not HOST:CONTAINER[:ro]")
        return v


class RooflineSettings(_Strict):
    """Overrides for the decode limit (telemetry/roofline.py), for what orch cannot read itself."""

    weight_gb: float | None = Field(default=None, gt=0, allow_inf_nan=False)  # bytes read per token / 1e9
    bandwidth_gb_s: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    gpu: str | None = None  # a name in orch's table of known GPUs (`orch reference` lists them)



class Telemetry(_Strict):
    """Sampling through each measured window (orchestrator/telemetry)."""

    enabled: bool = True
    interval_s: float = Field(default=0.1, ge=0.01, le=10)  # 10 Hz


class PlacementSettings(_Strict):
    """Where cells run (sweep/placement.py). With none of these, one cell at a time on this host.
    `gpus` / `cores`: devices of this host, one cell per device at a time; `cluster`: a Ray
    address, one Ray task per cell (sweep/cluster.py)."""

    gpus: list[str] = []  # one device per entry: "0", or "0,1" for a server given two GPUs
    cores: list[str] = []  # one device per entry: a CPU core set, "0-3" (with gpus: entry i goes with gpu i)
    cluster: str | None = None  # "auto", "HOST:6379" or "ray://HOST:10001"
    resource: str | None = None  # with cluster: the custom resource a cell asks one of; default: one GPU

    @field_validator("cluster")
    @classmethod
    def _address(cls, v: str | None) -> str | None:
        if v is not None and (v != "auto" and not re.fullmatch(r"(ray://)?[A-Za-z0-9.\-\[\]:]+:\d{1,5}", v)):
            raise ValueError(f"{v[:60]!r} is not a Ray address; write \"auto\", \"HOST:6379\" or \"ray://HOST:10001\"")
        return v

    @field_validator("resource")
    @classmethod
    def _resource(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,63}", v):
            raise ValueError("a Ray resource name: letters, digits and '_', such as \"orch_device\"")
        return v

    @model_validator(mode="after")
    def _one_kind(self) -> Self:
        if self.gpus and self.cores and len(self.gpus) != len(self.cores):
            raise KeyedError("cores", f"{len(self.cores)} core sets for {len(self.gpus)} GPU devices; give one "
                                       "core set per GPU device, or leave cores out")
        if self.cluster and (self.gpus or self.cores):
            raise KeyedError("cluster", "on a Ray cluster each node declares its devices (docs/clusters.md); "
                                         "drop placement.gpus and placement.cores")
        if self.resource and not self.cluster:
            raise KeyedError("resource", "a Ray resource goes with placement.cluster; set the cluster's address")
        return self

class EngineSpec(_Strict):
    name: str = Field(min_length=1)
    kind: str
    launcher: str = "process"
    model: str = Field(min_length=1)
    api: Literal["chat", "completions"] = "chat"
    binary: str | None = None
    url: str | None = None  # with launcher = "external": the running server's base URL
    api_key_env: str | None = None  # NAME of an environment variable holding the API key; never its value
    docker: DockerSettings | None = None  # with launcher = "docker"
    args: list[str] = []
    env: dict[str, str] = {}
    ready_timeout_s: float = Field(default=300.0, gt=0)
    speculation: Speculation = Speculation()
    roofline: RooflineSettings = RooflineSettings()

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return _path_name(v)

    @model_validator(mode="after")
    def _launcher_fits(self) -> Self:
        external = self.launcher == "external"
        if external and not self.url:
            raise KeyedError("url", 'launcher "external" needs url = "http://host:port" of the running server')
        if self.url and not external:
            raise KeyedError("url", f'url is only for launcher = "external" (this engine uses {self.launcher!r})')
        if self.launcher == "docker" and self.docker is None:
            raise KeyedError("docker", 'launcher "docker" needs an [engines.docker] table with image = "..."')
        if self.docker is not None and self.launcher != "docker":
            raise KeyedError("docker", f'[engines.docker] is only for launcher = "docker" (this engine uses {self.launcher!r})')
        if self.docker is not None and self.binary:
            raise KeyedError("binary", "a container runs its image's entrypoint; remove binary")
        problem = url_problem(self.url) if self.url else None
        if problem:
            raise KeyedError("url", problem)
        if self.url and self.api_key_env and "@" in urlsplit(self.url).netloc:
            raise KeyedError("api_key_env", "the URL's user:pass@ and api_key_env would both be the Authorization "
                                             "header; use one of them")
        return self

    @model_validator(mode="after")
    def _remember_secrets(self) -> Self:
        # A key given as a server flag or in `env` is known as a secret from the moment the file is
        # read: scrubbed from everything printed or written after (common/redact.py).
        redact.remember_args(self.args)
        redact.remember_env(self.env)
        return self

    @field_validator("binary", "args", "env")
    @classmethod
    def _no_nul(cls, v: str | list[str] | dict[str, str] | None) -> str | list[str] | dict[str, str] | None:
        texts = [v] if isinstance(v, str) else list(v or []) + list(v.values() if isinstance(v, dict) else [])
        if any("\x00" in t for t in texts):
            raise ValueError("holds a NUL character, which no command line or environment can carry; remove it")
        return v

def _finite(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(_finite(v) for v in value.values())
    if isinstance(value, list):
        return all(_finite(v) for v in value)
    return True


class Scenario(_Strict):
    name: str = Field(min_length=1)
    description: str = ""
    workload: Workload = Workload()
    telemetry: Telemetry = Telemetry()
    placement: PlacementSettings = PlacementSettings()
    engines: list[EngineSpec] = Field(min_length=1)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return _path_name(v)

    @field_validator("engines")
    @classmethod
    def _unique_names(cls, v: list[EngineSpec]) -> list[EngineSpec]:
        _unique([e.name for e in v], "engine names")
        return v

    @model_validator(mode="after")
    def _unique_cells(self) -> Self:
        # Ids are folder names: compare them as a case-insensitive disk (macOS, Windows) would.
        seen: dict[str, tuple[str, str]] = {}
        for eng in self.engines:
            for n in eng.speculation.n_spec:
                cid = cell_id(eng.name, eng.speculation.method if n else "none", n)
                first_id, first_engine = seen.setdefault(cid.lower(), (cid, eng.name))
                if first_engine != eng.name:
                    same = repr(cid) if first_id == cid else f"{first_id!r} and {cid!r} (same folder ignoring case)"
                    raise KeyedError("engines", f"engines {first_engine!r} and {eng.name!r} both make cell {same}, "
                                                 "which names a result folder; rename one of the engines")
        return self
