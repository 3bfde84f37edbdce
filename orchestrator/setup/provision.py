"""What `orch engines install`, `orch models prepare` and `orch setup SCENARIO` put in orch's cache.

The installers themselves live with their engines (engines/llama_server.py, engines/pyenv.py);
models are fetched and converted by orchestrator.setup.models. This module only says which steps
a scenario needs and runs them, turning an installer's failure into the CLI's InstallError.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from engines import ENGINES, INSTALLERS, PLUGINS, QUANTIZER, InstallFailed
from engines.installing import cache_root

from orchestrator.common.errors import InstallError, OrchError
from orchestrator.common.show import printable
from orchestrator.setup.models import KNOWN_MODELS, hf_folder, prepare_model, resolve_model
from orchestrator.telemetry import roofline


def setup_steps(scenario) -> list[tuple[str, str]]:
    """(what, name) pairs a scenario needs: ("engine", installer) and ("model", "NAME:FORMAT")."""
    steps: list[tuple[str, str]] = []
    for spec in scenario.engines:
        engine = ENGINES[spec.kind]
        if spec.launcher == "process" and not spec.binary and engine.installer:
            steps.append(("engine", engine.installer.name))
        if spec.launcher == "external" or not engine.resolves_model:
            continue
        for ref in (spec.model, spec.speculation.draft_model):
            if ref in KNOWN_MODELS:
                if KNOWN_MODELS[ref].requantize:
                    steps.append(("engine", QUANTIZER.name))  # its llama-quantize makes the file
                # A container on another host fetches its own models; a known name is a local file.
                steps.append(("model", f"{ref}:{engine.model_format}"))
    return list(dict.fromkeys(steps))


Step = tuple[str, str]


def lanes(steps: list[Step]) -> list[list[Step]]:
    """The steps in lanes that run side by side: the compiling installers in one, with the models
    that llama-quantize makes after them (each after the model it is made from; models.py fetches
    one model's file in one lane at a time); every other step in another, in its order (a model's HF
    folder is converted after the engine installs before it, in vLLM's environment if one is there)."""
    compiling = [s for s in steps if s[0] == "engine" and INSTALLERS[s[1]].compiles]
    for step in steps:
        source = _requantized_from(step)
        if source:
            compiling += [s for s in (("model", f"{source}:gguf"), step) if s in steps and s not in compiling]
    rest = [s for s in steps if s not in compiling]
    return [lane for lane in (compiling, rest) if lane]


def _requantized_from(step: Step) -> str | None:
    """The known model a requantized model step is made from, else None."""
    known = KNOWN_MODELS.get(step[1].rsplit(":", 1)[0]) if step[0] == "model" else None
    return known.requantize[0] if known and known.requantize else None


def run_setup(steps: list[Step], progress_for, jobs: int | None = None, run=None) -> list[tuple[Step, Path, bool]]:
    """Run `steps` lane by lane, the lanes side by side (threads: the work is in subprocesses);
    `progress_for(lane)` gives each lane its progress. A lane stops at its first failure, the
    others go on; then the first failure is raised. Returns (step, path, made_now) in step order.
    `run(what, name, progress, jobs)` runs one step (run_step; another in tests)."""
    found = lanes(steps)
    with ThreadPoolExecutor(max_workers=len(found) or 1) as pool:
        outcomes = list(pool.map(lambda lane: _run_lane(lane, progress_for(lane), jobs, run or run_step), found))
    done = {step: result for results, _ in outcomes for step, result in results}
    failures = [exc for _, exc in outcomes if exc is not None]
    if failures:
        raise failures[0]
    return [(step, *done[step]) for step in steps]


def _run_lane(lane: list[Step], progress, jobs, run):
    results = []
    for what, name in lane:
        try:
            results.append(((what, name), run(what, name, progress, jobs)))
        except InstallError as exc:
            return results, exc
    return results, None


def run_step(what: str, name: str, progress=None, jobs: int | None = None) -> tuple[Path, bool]:
    """Install an engine or prepare a model "NAME:FORMAT"; (path, made_now)."""
    try:
        if what == "engine":
            return INSTALLERS[name].install(progress, jobs)
        model, fmt = name.rsplit(":", 1)
        return prepare_model(model, fmt, progress)
    except InstallFailed as exc:
        raise InstallError(str(exc)) from exc


def measure_roofline(scenarios) -> list[str]:
    """After every other step, on a quiet machine: this host's memory bandwidth (the copy
    benchmark) and the bytes of weights of each local model, both cached for the sweeps'
    rooflines (telemetry/roofline.py). Lines for the user."""
    gb_s, source = roofline.cpu_bandwidth(cache_root())
    assert gb_s is not None  # measure=True: an uncached host is measured, never None
    lines = [f"memory bandwidth: {gb_s:.1f} GB/s ({source})"]
    for spec in {s.model: s for sc in scenarios for s in sc.engines if s.launcher == "process"}.values():
        engine = ENGINES[spec.kind](spec)
        if not engine.resolves_model or spec.roofline.weight_gb:
            continue
        try:
            path = resolve_model(spec.model, None, engine.model_format).path
            n, where = roofline.model_bytes(path, cache_root()) if path else (None, "")
        except (OrchError, roofline.WeightsUnknown, OSError) as exc:
            lines.append(f"weights of {spec.model}: unknown ({exc})")
            continue
        if n:
            lines.append(f"weights of {spec.model}: {n / 1e6:.1f} MB read per token ({where}): decode limit "
                         f"{roofline.limit_tok_s(n, gb_s):.0f} tok/s on this host's CPU")
    return lines


def made_line(what: str, name: str, path: Path, made: bool) -> str:
    """One step's line: an engine installed or found, a model prepared or found."""
    if what == "engine":
        return printable(f"{name} {'installed' if made else 'already installed'}: {path}")
    return printable(f"{name.replace(':', ' as ')} {'prepared' if made else 'already there'}: {path}")


def engines_lines() -> list[str]:
    """`orch engines list`: the kinds orch knows (a plugin's with its package), then each install."""
    kinds = [f"{k} ({PLUGINS[k]})" if k in PLUGINS else k for k in ENGINES]
    lines = [printable("engine kinds: " + ", ".join(kinds))]
    for name, inst in INSTALLERS.items():
        found = inst.installed()
        lines.append(printable(f"{name}: {found or f'not installed (expected at {inst.expected()})'}"))
    return lines


def models_lines() -> list[str]:
    """`orch models list`: each known model and what orch has made of it."""
    lines = []
    for name, known in KNOWN_MODELS.items():
        if known.requantize:  # a GGUF only, made by llama-quantize
            made = known.gguf_path(name)
            lines.append(printable(f"{name}: {known.description}; gguf: {made if made.is_file() else 'not made'}"))
        else:
            lines.append(printable(f"{name}: {known.description}; hf folder: {hf_folder(name) or 'not prepared'}"))
    return lines
