"""What `orch engines install`, `orch models prepare` and `orch setup SCENARIO` put in orch's cache.

The installers themselves live with their engines (engines/llama_server.py, engines/pyenv.py);
models are fetched and converted by orchestrator.setup.models. This module only says which steps
a scenario needs and runs them, turning an installer's failure into the CLI's InstallError.
"""

from __future__ import annotations

from pathlib import Path

from engines import ENGINES, INSTALLERS, InstallFailed

from orchestrator.common.errors import InstallError
from orchestrator.setup.models import KNOWN_MODELS, prepare_model


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
                # A container on another host fetches its own models; a known name is a local file.
                steps.append(("model", f"{ref}:{engine.model_format}"))
    return list(dict.fromkeys(steps))


def run_step(what: str, name: str, progress=None, jobs: int | None = None) -> tuple[Path, bool]:
    """Install an engine or prepare a model "NAME:FORMAT"; (path, made_now)."""
    try:
        if what == "engine":
            return INSTALLERS[name].install(progress, jobs)
        model, fmt = name.rsplit(":", 1)
        return prepare_model(model, fmt, progress)
    except InstallFailed as exc:
        raise InstallError(str(exc))
