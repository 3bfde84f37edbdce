"""Scenario files: TOML, validated completely before anything starts."""

from __future__ import annotations

import math
import re
import tomllib
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from engines import ENGINES

from orchestrator.common import redact
from orchestrator.common.errors import ScenarioError
from orchestrator.launch.launchers import LAUNCHERS
from orchestrator.setup.models import check_model_ref
from orchestrator.measure.prompt_files import MAX_TEXT_BYTES, utf8_bytes
from orchestrator.measure.prompts import PromptFileError, PromptSource, load_prompt_set
from orchestrator.sweep.placement import Device, devices_of, parse_cores, parse_gpus
from orchestrator.telemetry.roofline import KNOWN_GPUS, known_gpu


class _Strict(BaseModel):
    # TOML has inf and nan literals; no timeout or temperature means anything with them.
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


def _unique(values: list, what: str) -> list:
    seen: set = set()
    dupes = sorted({v for v in values if v in seen or seen.add(v)})  # linear: a list may be long
    if dupes:
        raise ValueError(f"duplicate {what} {dupes}; list each once")
    return values


def _one_of(value: str, known, what: str, plural: str) -> str:
    if value not in known:
        raise ValueError(f"unknown {what} {value!r}; known {plural}: {', '.join(known)}")
    return value


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


def _port(parts) -> int | None:
    """The URL's port, 0 if it is not one; None if it has none."""
    try:
        return parts.port
    except ValueError:  # not digits, or past 65535
        return 0


MAX_BLOCKS = 50  # replicate starts per cell; more would plan more starts than any sweep sits through
# Requests one sweep may plan, warm-up included, over every cell and block (README, "Limits"): a
# plan is held in memory and every request is a row the report reads back.
MAX_REQUESTS = 100_000


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
    def _repeat_cap(self):
        if self.max_repeats is not None and self.target_ci is None:
            raise ValueError("max_repeats caps target_ci's repeats: set target_ci too, or drop max_repeats")
        if self.max_repeats is not None and self.max_repeats < self.repeats:
            raise ValueError(f"max_repeats ({self.max_repeats}) is below repeats ({self.repeats}); raise it")
        return self

    @field_validator("warmup", "repeats", "max_repeats")
    @classmethod
    def _bounded(cls, v):
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
    def _prompts(cls, v):
        _unique([p.source if p.plain else p.label for p in v], "prompt sets")
        return v

    @field_validator("concurrency")
    @classmethod
    def _concurrency(cls, v):
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
    def _method(cls, v):
        return _path_name(v)

    @field_validator("config")
    @classmethod
    def _config(cls, v):
        if not _finite(v):
            raise ValueError("every number must be finite, not inf or nan")
        return v

    @field_validator("n_spec")
    @classmethod
    def _n_spec(cls, v):
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
    def _gpus(cls, v):
        if isinstance(v, str) and v not in ("all", "none"):
            raise ValueError('use "all", "none", or a list of device ids')
        return v

    @field_validator("volumes")
    @classmethod
    def _volumes(cls, v):
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

    @field_validator("gpu")
    @classmethod
    def _known(cls, v):
        if v is not None and known_gpu(v) is None:
            raise ValueError(f"{v!r} is not a GPU orch knows; use one of {', '.join(g.name for g in KNOWN_GPUS)}, "
                             "or set bandwidth_gb_s")
        return v


class Telemetry(_Strict):
    """Sampling through each measured window (orchestrator/telemetry)."""

    enabled: bool = True
    interval_s: float = Field(default=0.1, ge=0.01, le=10)  # 10 Hz


def _disjoint(sets: list[set[int]], message: str) -> None:
    for i, a in enumerate(sets):
        for b in sets[i + 1:]:
            if a & b:
                raise ValueError(message.format(sorted(a & b)))


class PlacementSettings(_Strict):
    """Where cells run (sweep/placement.py). With none of these, one cell at a time on this host.
    `gpus` / `cores`: devices of this host, one cell per device at a time; `cluster`: a Ray
    address, one Ray task per cell (orchestrator/cluster)."""

    gpus: list[str] = []  # one device per entry: "0", or "0,1" for a server given two GPUs
    cores: list[str] = []  # one device per entry: a CPU core set, "0-3" (with gpus: entry i goes with gpu i)
    cluster: str | None = None  # "auto", "HOST:6379" or "ray://HOST:10001"
    resource: str | None = None  # with cluster: the custom resource a cell asks one of; default: one GPU

    @field_validator("gpus")
    @classmethod
    def _gpus(cls, v):
        _disjoint([set(parse_gpus(entry)) for entry in v], "GPU sets share GPUs {}; give each device GPUs of its own")
        return v

    @field_validator("cores")
    @classmethod
    def _cores(cls, v):
        _disjoint([set(parse_cores(entry)) for entry in v], "core sets share cores {}; give each device cores of its own")
        return v

    @field_validator("cluster")
    @classmethod
    def _address(cls, v):
        if v is not None and (v != "auto" and not re.fullmatch(r"(ray://)?[A-Za-z0-9.\-\[\]:]+:\d{1,5}", v)):
            raise ValueError(f"{v[:60]!r} is not a Ray address; write \"auto\", \"HOST:6379\" or \"ray://HOST:10001\"")
        return v

    @field_validator("resource")
    @classmethod
    def _resource(cls, v):
        if v is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,63}", v):
            raise ValueError("a Ray resource name: letters, digits and '_', such as \"orch_device\"")
        return v

    @model_validator(mode="after")
    def _one_kind(self):
        if self.gpus and self.cores and len(self.gpus) != len(self.cores):
            raise _KeyedError("cores", f"{len(self.cores)} core sets for {len(self.gpus)} GPU devices; give one "
                                       "core set per GPU device, or leave cores out")
        if self.cluster and (self.gpus or self.cores):
            raise _KeyedError("cluster", "on a Ray cluster each node declares its devices (docs/clusters.md); "
                                         "drop placement.gpus and placement.cores")
        if self.resource and not self.cluster:
            raise _KeyedError("resource", "a Ray resource goes with placement.cluster; set the cluster's address")
        return self

    def devices(self) -> list[Device]:
        return devices_of(self.gpus, self.cores)


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
    def _name(cls, v):
        return _path_name(v)

    @field_validator("kind")
    @classmethod
    def _kind(cls, v):
        return _one_of(v, ENGINES, "engine kind", "kinds")

    @field_validator("launcher")
    @classmethod
    def _launcher(cls, v):
        return _one_of(v, LAUNCHERS, "launcher", "launchers")

    @model_validator(mode="after")
    def _launcher_fits(self):
        external = self.launcher == "external"
        if external and not self.url:
            raise _KeyedError("url", 'launcher "external" needs url = "http://host:port" of the running server')
        if self.url and not external:
            raise _KeyedError("url", f'url is only for launcher = "external" (this engine uses {self.launcher!r})')
        if self.launcher == "docker" and self.docker is None:
            raise _KeyedError("docker", 'launcher "docker" needs an [engines.docker] table with image = "..."')
        if self.docker is not None and self.launcher != "docker":
            raise _KeyedError("docker", f'[engines.docker] is only for launcher = "docker" (this engine uses {self.launcher!r})')
        if self.docker is not None and self.binary:
            raise _KeyedError("binary", "a container runs its image's entrypoint; remove binary")
        if not ENGINES[self.kind].needs_binary and not external:
            raise _KeyedError("launcher", f'kind {self.kind!r} is a running server: use launcher = "external"')
        problem = url_problem(self.url) if self.url else None
        if problem:
            raise _KeyedError("url", problem)
        if self.url and self.api_key_env and "@" in urlsplit(self.url).netloc:
            raise _KeyedError("api_key_env", "the URL's user:pass@ and api_key_env would both be the Authorization "
                                             "header; use one of them")
        return self

    @model_validator(mode="after")
    def _remember_secrets(self):
        # A key given as a server flag or in `env` is known as a secret from the moment the file is
        # read: scrubbed from everything printed or written after (common/redact.py).
        redact.remember_args(self.args)
        redact.remember_env(self.env)
        return self

    @field_validator("binary", "args", "env")
    @classmethod
    def _no_nul(cls, v):
        texts = [v] if isinstance(v, str) else list(v or []) + list(v.values() if isinstance(v, dict) else [])
        if any("\x00" in t for t in texts):
            raise ValueError("holds a NUL character, which no command line or environment can carry; remove it")
        return v

    @model_validator(mode="after")
    def _method_fits_kind(self):
        spec = self.speculation
        methods = ENGINES[self.kind].methods
        if not methods:
            return self  # the server's own speculation; n_spec only labels the cell
        if spec.method != "none" and spec.method not in methods:
            raise _KeyedError("speculation.method",
                              f"{self.kind} has no speculation method {spec.method!r}; use one of {', '.join(methods)}")
        if spec.method == "none" and any(spec.n_spec):
            raise _KeyedError("speculation.n_spec", "n_spec above 0 needs a speculation.method")
        if spec.config:
            _check_spec_config(self.kind, spec.config)
        if spec.method in ENGINES[self.kind].draft_methods and not spec.draft_model:
            raise _KeyedError("speculation.draft_model", f"method {spec.method!r} needs a draft_model (a .gguf path)")
        return self


def _finite(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(_finite(v) for v in value.values())
    if isinstance(value, list):
        return all(_finite(v) for v in value)
    return True


def _check_spec_config(kind: str, config: dict) -> None:
    allowed = ENGINES[kind].spec_config_keys
    if not allowed:
        raise _KeyedError("speculation.config", f"{kind} takes no speculation config; pass server flags in args")
    unknown = sorted(set(config) - set(allowed))
    if unknown:
        raise _KeyedError("speculation.config", f"{kind} has no speculation setting {unknown[0]!r} "
                          f"(method, n_spec and draft_model have their own keys); use one of {', '.join(allowed)}")


class Scenario(_Strict):
    name: str = Field(min_length=1)
    description: str = ""
    workload: Workload = Workload()
    telemetry: Telemetry = Telemetry()
    placement: PlacementSettings = PlacementSettings()
    engines: list[EngineSpec] = Field(min_length=1)

    @field_validator("name")
    @classmethod
    def _name(cls, v):
        return _path_name(v)

    @field_validator("engines")
    @classmethod
    def _unique_names(cls, v):
        _unique([e.name for e in v], "engine names")
        return v

    @model_validator(mode="after")
    def _unique_cells(self):
        # Ids are folder names: compare them as a case-insensitive disk (macOS, Windows) would.
        seen: dict[str, tuple[str, str]] = {}
        for eng in self.engines:
            for n in eng.speculation.n_spec:
                cid = cell_id(eng.name, eng.speculation.method if n else "none", n)
                first_id, first_engine = seen.setdefault(cid.lower(), (cid, eng.name))
                if first_engine != eng.name:
                    same = repr(cid) if first_id == cid else f"{first_id!r} and {cid!r} (same folder ignoring case)"
                    raise _KeyedError("engines", f"engines {first_engine!r} and {eng.name!r} both make cell {same}, "
                                                 "which names a result folder; rename one of the engines")
        return self

class _KeyedError(ValueError):
    """A cross-field error that knows which key it is about."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key


# ---------------------------------------------------------------- loading


def load_scenario(path: str | Path, overrides: list[str] = (), only: list[str] = ()) -> Scenario:
    """The scenario file, validated, after --set; with `only`, just those engines of it."""
    path = Path(path)
    scenario = build_scenario(_read_toml(path), path, overrides)
    if only:
        names = [e.name for e in scenario.engines]
        unknown = [n for n in only if n not in names]
        if unknown:
            raise ScenarioError(path, "--engine", f"no engine named {unknown[0]!r}; this scenario has "
                                                  f"{', '.join(names)}")
        scenario.engines = [e for e in scenario.engines if e.name in only]
    return scenario


def read_workload(path: str | Path) -> dict:
    """The [workload] table of a scenario file, for `orch bench --scenario`."""
    table = _read_toml(Path(path)).get("workload", {})
    if not isinstance(table, dict):
        raise ScenarioError(path, "workload", f"must be a table ([workload]), not {type(table).__name__}")
    return dict(table)


def build_scenario(raw: dict, source: Path, overrides: list[str] = ()) -> Scenario:
    """Validate a scenario dict; errors name `source` (a file, or a command for built ones)."""
    for item in overrides:
        _apply_override(raw, item, source)
    scenario = _validate(raw, source)
    _check_files(scenario, source)
    return scenario


def _read_toml(path: Path) -> dict:
    try:  # is_file too raises PermissionError, under a folder that cannot be searched
        if not path.is_file():
            raise ScenarioError(path, "", "no such file; pass a scenario TOML such as scenarios/n_spec.toml")
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(path, "", f"not valid TOML ({exc}); fix the syntax") from exc
    except RecursionError:
        raise ScenarioError(path, "", "not valid TOML (arrays or tables nested too deeply); fix the syntax") from None
    except UnicodeDecodeError:
        raise ScenarioError(path, "", "not a UTF-8 text file; save it as UTF-8") from None
    except OSError as exc:
        raise ScenarioError(path, "", f"cannot read it ({exc.strerror}); check its permissions") from exc


def _validate(raw: dict, path: Path) -> Scenario:
    try:
        return Scenario.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = _loc(err["loc"], raw)
        inner = (err.get("ctx") or {}).get("error")
        if isinstance(inner, _KeyedError):
            key = f"{key}.{inner.key}" if key else inner.key
        raise ScenarioError(path, key, _message(err)) from exc


def _loc(loc: tuple, raw: dict) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


_FIXES = {
    "extra_forbidden": "unknown key; remove it or check its spelling",
    "finite_number": "must be a finite number, not inf or nan",
    "missing": "required key is missing; add it",
    "too_short": "must not be empty; give at least one value",
}


def _message(err: dict) -> str:
    kind = err["type"]
    if kind in _FIXES:
        return _FIXES[kind]
    msg = err["msg"].removeprefix("Value error, ")
    if kind.endswith("_type") or kind.endswith("_parsing"):
        return f"{msg} (got {type(err.get('input')).__name__} {err.get('input')!r})"
    return msg


def _check_files(scenario: Scenario, path: Path) -> None:
    base = path.parent
    _check_plan(scenario, path, _check_prompt_sets(scenario.workload.prompts, path))
    for i, eng in enumerate(scenario.engines):
        if not ENGINES[eng.kind].resolves_model:
            continue
        fmt = ENGINES[eng.kind].model_format
        problem = check_model_ref(eng.model, base, fmt)
        if problem:
            raise ScenarioError(path, f"engines[{i}].model", problem)
        draft = eng.speculation.draft_model
        if draft:
            problem = check_model_ref(draft, base, fmt)
            if problem:
                raise ScenarioError(path, f"engines[{i}].speculation.draft_model", problem)


def _check_prompt_sets(refs: list[PromptSource], path: Path) -> int:
    """Every set loads, and no two share a name: results tell prompts apart by (set, id). Returns
    how many prompts they hold; their text together is bounded as one file's is."""
    named: dict[str, str] = {}
    count = text = 0
    for i, ref in enumerate(refs):
        try:
            prompts = load_prompt_set(ref, path.parent)
        except PromptFileError as exc:
            raise ScenarioError(path, f"workload.prompts[{i}]", str(exc)) from exc
        name, count, text = prompts[0].set, count + len(prompts), text + sum(utf8_bytes(p.text) for p in prompts)
        if text > MAX_TEXT_BYTES:
            raise ScenarioError(path, f"workload.prompts[{i}]", f"the prompt sets up to this one hold more than "
                                f"{MAX_TEXT_BYTES >> 20} MiB of text, all of which a sweep keeps in memory; sample "
                                "them (per_category, ids) or drop a set")
        if name in named:
            raise ScenarioError(path, "workload.prompts", f"{named[name]} and {ref.label} are both prompt set {name!r} "
                                "(a file's name is its set's name); rename one of the files, or give one a `name` in a table")
        named[name] = ref.label
    return count


def _check_plan(scenario: Scenario, path: Path, prompts: int) -> None:
    """The requests the sweep would plan, over every cell and block, at most MAX_REQUESTS."""
    w = scenario.workload
    starts = sum(len(e.speculation.n_spec) for e in scenario.engines) * w.blocks
    total = starts * (w.warmup + prompts * w.repeat_cap * len(w.concurrency))
    if total > MAX_REQUESTS:
        cap = " (target_ci's cap, max_repeats)" if w.target_ci is not None else ""
        raise ScenarioError(path, "workload", f"plans {total:,} requests ({starts} server starts x ({w.warmup} warm-up "
                            f"+ {prompts} prompts x {w.repeat_cap} repeats{cap} x {len(w.concurrency)} concurrency "
                            f"levels)), more than the {MAX_REQUESTS:,} of one sweep; sample fewer prompts "
                            "(per_category, ids), lower repeats or warmup, or list fewer concurrency levels, n_spec "
                            "depths or blocks")


# ---------------------------------------------------------------- --set KEY=VALUE


def _apply_override(raw: dict, item: str, path: Path) -> None:
    key, sep, text = item.partition("=")
    if not sep or not key:
        raise ScenarioError(path, "--set", f"{item!r} is not KEY=VALUE (e.g. --set workload.max_tokens=32)")
    value = _parse_value(text)
    parts = key.split(".")
    node: Any = raw
    for i, part in enumerate(parts[:-1]):
        node = _step(node, part, create=True, key=".".join(parts[: i + 1]), path=path)
    last = parts[-1]
    if isinstance(node, list):
        node[_index(node, last, key, path)] = value
    elif isinstance(node, dict):
        node[last] = value
    else:  # --set name.x=1: `name` is a string
        raise ScenarioError(path, key, f"--set cannot set a key inside a {type(node).__name__}")


def _parse_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except (tomllib.TOMLDecodeError, RecursionError):
        return text


def _step(node: Any, part: str, create: bool, key: str, path: Path) -> Any:
    if isinstance(node, list):
        return node[_index(node, part, key, path)]
    if not isinstance(node, dict):
        raise ScenarioError(path, key, f"--set cannot descend into a {type(node).__name__}")
    if part not in node and create:
        node[part] = {}
    return node[part]


def _index(items: list, part: str, key: str, path: Path) -> int:
    if part.isascii() and part.isdecimal() and int(part) < len(items):
        return int(part)
    for i, item in enumerate(items):
        if isinstance(item, dict) and item.get("name") == part:
            return i
    raise ScenarioError(path, key, f"no list item {part!r}; use an index or an engine name")
