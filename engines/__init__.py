"""Engine registry: scenario `kind` -> Engine class. Add an engine by adding one module and one
line, or from another installed package: an entry point in the group `orch.engines` naming an
Engine subclass (docs/architecture.md, "An engine from another package")."""

from importlib.metadata import entry_points

from .base import Engine, StreamCounts
from .installing import Installer, InstallFailed
from .endpoint import Endpoint
from .hf_transformers import HF_CONVERT, HfTransformers
from .llama_cpp_python import LlamaCppPython
from .llama_server import LlamaServer
from .sglang import SGLang
from .vllm import VLLM_CPU, Vllm

ENGINES: dict[str, type[Engine]] = {
    LlamaServer.kind: LlamaServer,
    Endpoint.kind: Endpoint,
    Vllm.kind: Vllm,
    LlamaCppPython.kind: LlamaCppPython,
    SGLang.kind: SGLang,
    HfTransformers.kind: HfTransformers,
}

# Environments whose torch, transformers and gguf turn a GGUF into the Hugging Face folder that
# engines with model_format "hf" load (orch models prepare NAME --format hf): vLLM's where it is
# installed (nothing more to install), else the last, made for the conversion alone. Same pins.
HF_CONVERTERS = (VLLM_CPU, HF_CONVERT)
# The llama.cpp build whose llama-quantize makes the requantized known models (orch models prepare).
QUANTIZER = LlamaServer.installer

INSTALLERS: dict[str, Installer] = {e.installer.name: e.installer for e in ENGINES.values() if e.installer}
INSTALLERS[HF_CONVERT.name] = HF_CONVERT

PLUGIN_GROUP = "orch.engines"
PLUGINS: dict[str, str] = {}  # a plugin engine's kind -> the distribution and version it came from
PLUGIN_PROBLEMS: list[str] = []  # one line per entry point that could not be taken (the CLI warns)


def _plugin(ep) -> type[Engine] | str:
    """The entry point's Engine class, or why it is not taken."""
    try:
        found = ep.load()
    except Exception as exc:  # another package's import may fail in any way; orch must still start
        return f"cannot be loaded ({type(exc).__name__}: {exc})"
    if not (isinstance(found, type) and issubclass(found, Engine)) or not isinstance(getattr(found, "kind", None), str):
        return "is not a subclass of engines.Engine with a kind"
    if found.kind in ENGINES:
        return f"names kind {found.kind!r}, which is taken; it is not used"
    if found.installer is not None and found.installer.name in INSTALLERS:
        return f"names installer {found.installer.name!r}, which is taken; it is not used"
    return found


def _load_plugins() -> None:
    for ep in entry_points(group=PLUGIN_GROUP):
        origin = f"{ep.dist.name} {ep.dist.version}" if ep.dist is not None else ep.value
        got = _plugin(ep)
        if isinstance(got, str):
            PLUGIN_PROBLEMS.append(f"engine plugin {ep.name} = {ep.value} ({origin}) {got}")
            continue
        ENGINES[got.kind] = got
        PLUGINS[got.kind] = origin
        if got.installer is not None:
            INSTALLERS[got.installer.name] = got.installer


_load_plugins()

__all__ = ["ENGINES", "HF_CONVERTERS", "INSTALLERS", "PLUGINS", "PLUGIN_PROBLEMS", "QUANTIZER", "Engine", "InstallFailed", "Installer",
           "StreamCounts"]
