"""Scenario files: TOML, validated completely before anything starts: their shape
(types/scenario.py), then what they name against what orch knows, then the files they name."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Iterable, Sequence

from pydantic import ValidationError
from pydantic_core import ErrorDetails

from engines import ENGINES
from orchestrator.common.errors import ScenarioError
from orchestrator.launch.launchers import LAUNCHERS
from orchestrator.measure.prompt_files import MAX_TEXT_BYTES, utf8_bytes
from orchestrator.measure.prompts import BUILTIN, PromptFileError, load_prompt_set
from orchestrator.setup.models import check_model_ref
from orchestrator.sweep.placement import Device, devices_of, parse_cores, parse_gpus
from orchestrator.telemetry.roofline import KNOWN_GPUS, known_gpu
from orchestrator.types.scenario import (MAX_REQUESTS, EngineSpec, KeyedError, PlacementSettings, PromptSource,
                                         Scenario)


def _one_of(value: str, known: Iterable[str], what: str, plural: str) -> str | None:
    """The message for a name orch does not know, or None."""
    return None if value in known else f"unknown {what} {value!r}; known {plural}: {', '.join(known)}"


def _check_registries(scenario: Scenario, path: Path) -> None:
    """What a scenario of the right shape names that orch must know: built-in prompt sets, device
    syntax, engine kinds, launchers, GPUs, methods. The first problem, in the file's order."""
    for i, ref in enumerate(scenario.workload.prompts):
        if ref.source in BUILTIN and (ref.format is not None or ref.turns != "first"):
            raise ScenarioError(path, f"workload.prompts[{i}]",
                                f"format and turns are for files; the built-in set {ref.source!r} has its own")
    _check_devices(scenario.placement, path)
    for i, eng in enumerate(scenario.engines):
        try:
            _check_engine(eng)
        except KeyedError as exc:
            raise ScenarioError(path, f"engines[{i}].{exc.key}", str(exc)) from exc


def _check_devices(placement: PlacementSettings, path: Path) -> None:
    for key, parse, message in (("gpus", parse_gpus, "GPU sets share GPUs {}; give each device GPUs of its own"),
                                ("cores", parse_cores, "core sets share cores {}; give each device cores of its own")):
        try:
            sets = [set(parse(entry)) for entry in getattr(placement, key)]
        except ValueError as exc:
            raise ScenarioError(path, f"placement.{key}", str(exc)) from exc
        for n, a in enumerate(sets):
            for b in sets[n + 1:]:
                if a & b:
                    raise ScenarioError(path, f"placement.{key}", message.format(sorted(a & b)))


def _check_engine(eng: EngineSpec) -> None:
    """An engine table against the registries; a KeyedError names the key under the engine."""
    for key, problem in (("kind", _one_of(eng.kind, ENGINES, "engine kind", "kinds")),
                         ("launcher", _one_of(eng.launcher, LAUNCHERS, "launcher", "launchers"))):
        if problem:
            raise KeyedError(key, problem)
    gpu = eng.roofline.gpu
    if gpu is not None and known_gpu(gpu) is None:
        raise KeyedError("roofline.gpu", f"{gpu!r} is not a GPU orch knows; use one of "
                                         f"{', '.join(g.name for g in KNOWN_GPUS)}, or set bandwidth_gb_s")
    engine = ENGINES[eng.kind]
    if not engine.needs_binary and eng.launcher != "external":
        raise KeyedError("launcher", f'kind {eng.kind!r} is a running server: use launcher = "external"')
    _check_method(eng)


def _check_method(eng: EngineSpec) -> None:
    spec, engine = eng.speculation, ENGINES[eng.kind]
    if not engine.methods:
        return  # the server's own speculation; n_spec only labels the cell
    if spec.method != "none" and spec.method not in engine.methods:
        raise KeyedError("speculation.method",
                         f"{eng.kind} has no speculation method {spec.method!r}; use one of {', '.join(engine.methods)}")
    if spec.method == "none" and any(spec.n_spec):
        raise KeyedError("speculation.n_spec", "n_spec above 0 needs a speculation.method")
    if spec.config:
        _check_spec_config(eng.kind, spec.config)
    if spec.method in engine.draft_methods and not spec.draft_model:
        raise KeyedError("speculation.draft_model", f"method {spec.method!r} needs a draft_model (a .gguf path)")


def _check_spec_config(kind: str, config: dict[str, Any]) -> None:
    allowed = ENGINES[kind].spec_config_keys
    if not allowed:
        raise KeyedError("speculation.config", f"{kind} takes no speculation config; pass server flags in args")
    unknown = sorted(set(config) - set(allowed))
    if unknown:
        raise KeyedError("speculation.config", f"{kind} has no speculation setting {unknown[0]!r} "
                         f"(method, n_spec and draft_model have their own keys); use one of {', '.join(allowed)}")


def devices(placement: PlacementSettings) -> list[Device]:
    """The devices a scenario's [placement] names (it has passed _check_devices)."""
    return devices_of(placement.gpus, placement.cores)


# ---------------------------------------------------------------- loading


def load_scenario(path: str | Path, overrides: Sequence[str] = (), only: Sequence[str] = ()) -> Scenario:
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


def build_scenario(raw: dict, source: Path, overrides: Sequence[str] = ()) -> Scenario:
    """Validate a scenario dict; errors name `source` (a file, or a command for built ones)."""
    for item in overrides:
        _apply_override(raw, item, source)
    scenario = _validate(raw, source)
    _check_registries(scenario, source)
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
        if isinstance(inner, KeyedError):
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


def _message(err: ErrorDetails) -> str:
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
