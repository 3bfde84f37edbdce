"""Engine registry: scenario `kind` -> Engine class. Add an engine by adding one module and one line."""

from .base import Engine, ServerPlan
from .endpoint import Endpoint
from .llama_cpp_python import LlamaCppPython
from .llama_server import LlamaServer
from .vllm import Vllm

ENGINES: dict[str, type[Engine]] = {
    LlamaServer.kind: LlamaServer,
    Endpoint.kind: Endpoint,
    Vllm.kind: Vllm,
    LlamaCppPython.kind: LlamaCppPython,
}

__all__ = ["ENGINES", "Engine", "ServerPlan"]
