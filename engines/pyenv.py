"""Engines that are Python packages, each in a virtual environment of its own under orch's cache.

They never share orch's own environment: vLLM pins its own torch and transformers, and
llama-cpp-python compiles llama.cpp, neither of which orch's users want in their tools' venv.
Each such engine declares its PythonEnv in its own module.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .installing import Installer, cache_root, run_logged, say


@dataclass(frozen=True)
class PythonEnv(Installer):
    name: str
    version: str  # of the package below; names the environment's folder
    requirements: tuple[str, ...]
    check: str  # Python that must run in the finished environment
    remove: tuple[str, ...] = ()  # packages the requirements drag in that must go
    build_env: dict = field(default_factory=dict)
    note: str = ""

    def root(self) -> Path:
        return cache_root() / self.name / self.version

    def expected(self) -> Path:
        return self.root() / "venv" / "bin" / "python"

    def installed(self) -> Path | None:
        python = self.expected()
        return python if (self.root() / "install-info.json").is_file() and python.exists() else None

    def install(self, progress=None, jobs: int | None = None) -> tuple[Path, bool]:
        """(the environment's python, created_now). A second call returns at once."""
        found = self.installed()
        if found:
            return found, False
        root, venv = self.root(), self.root() / "venv"
        shutil.rmtree(venv, ignore_errors=True)  # a half-made environment from an interrupted install
        root.mkdir(parents=True, exist_ok=True)
        log = root / "install.log"
        say(progress, f"creating the environment {venv}")
        run_logged([sys.executable, "-m", "venv", str(venv)], log, append=True)
        python = str(venv / "bin" / "python")
        say(progress, f"pip install {' '.join(self.requirements)}" + (f" ({self.note})" if self.note else ""))
        run_logged([python, "-m", "pip", "install", "--progress-bar", "off", *self.requirements], log,
                   env={**os.environ, **self.build_env}, append=True)
        if self.remove:
            say(progress, f"removing {', '.join(self.remove)}")
            run_logged([python, "-m", "pip", "uninstall", "-y", *self.remove], log, append=True)
        say(progress, "checking the environment")
        run_logged([python, "-c", self.check], log, append=True)
        (root / "install-info.json").write_text(json.dumps(
            {"engine": self.name, "requirements": list(self.requirements), "removed": list(self.remove),
             "packages": _versions(python)}, indent=2, sort_keys=True) + "\n")
        return Path(python), True

    def package_version(self, package: str) -> str | None:
        info = self.root() / "install-info.json"
        if not info.is_file():
            return None
        return json.loads(info.read_text()).get("packages", {}).get(package)

    def python(self) -> str | None:
        """The installed environment's python, as an engine's default binary."""
        python = self.installed()
        return str(python) if python else None

    def describe(self, binary: str | None, package: str) -> str:
        """"NAME VERSION" (of `package`) when `binary` is this environment's python; else "unknown"."""
        if binary != str(self.expected()):
            return "unknown"
        return f"{self.name} {self.package_version(package) or 'unknown'}"



def _versions(python: str) -> dict[str, str]:
    out = subprocess.run([python, "-m", "pip", "list", "--format", "json"], capture_output=True, text=True)
    try:
        return {p["name"].lower(): p["version"] for p in json.loads(out.stdout)}
    except (ValueError, KeyError):
        return {}
