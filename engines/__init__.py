"""Engine registry: scenario `kind` -> Engine class. Add an engine by adding one module and one line."""

from .base import Engine, ServerPlan, StreamCounts
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

__all__ = ["ENGINES", "HF_CONVERTERS", "INSTALLERS", "QUANTIZER", "Engine", "InstallFailed", "Installer", "ServerPlan",
           "StreamCounts"]
