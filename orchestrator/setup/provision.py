"""What `orch engines install`, `orch models prepare` and `orch setup SCENARIO` put in orch's cache.

Each installer is looked up by name; an engine class names the installer its local process needs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from engines import ENGINES

from orchestrator.setup.install import install_llama_server, installed_llama_server, llama_server_path
from orchestrator.setup.models import KNOWN_MODELS, prepare_model
from orchestrator.setup.pyenvs import PYTHON_ENGINES, install_python_engine


@dataclass(frozen=True)
class Installer:
    name: str
    installed: Callable[[], Path | None]
    install: Callable[..., tuple[Path, bool]]  # (progress) -> (path, made_now)
    expected: Callable[[], Path]


def _python_installer(name: str) -> Installer:
    env = PYTHON_ENGINES[name]
    return Installer(name, env.installed, lambda progress=None: install_python_engine(env, progress), env.python)


INSTALLERS: dict[str, Installer] = {
    "llama-server": Installer("llama-server", installed_llama_server, install_llama_server, llama_server_path),
    **{name: _python_installer(name) for name in PYTHON_ENGINES},
}


def setup_steps(scenario) -> list[tuple[str, str]]:
    """(what, name) pairs a scenario needs: ("engine", installer) and ("model", "NAME:FORMAT")."""
    steps: list[tuple[str, str]] = []
    for spec in scenario.engines:
        engine = ENGINES[spec.kind]
        if spec.launcher == "process" and not spec.binary and engine.installer:
            steps.append(("engine", engine.installer))
        if spec.launcher == "external" or not engine.resolves_model:
            continue
        for ref in (spec.model, spec.speculation.draft_model):
            if ref in KNOWN_MODELS:
                # A container on another host fetches its own models; a known name is a local file.
                steps.append(("model", f"{ref}:{engine.model_format}"))
    return list(dict.fromkeys(steps))


def run_step(what: str, name: str, progress=None) -> tuple[Path, bool]:
    if what == "engine":
        return INSTALLERS[name].install(progress)
    model, fmt = name.rsplit(":", 1)
    return prepare_model(model, fmt, progress)
