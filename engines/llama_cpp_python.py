"""llama-cpp-python's OpenAI-compatible server (`python -m llama_cpp.server`), in its own
environment (`orch engines install llama-cpp-python`).

Its speculation is prompt-lookup decoding (LlamaPromptLookupDecoding); n_spec is the number of
tokens it predicts per step (--draft_model_num_pred_tokens). Its streams carry no usage, so
token counts come from its /extras/tokenize endpoint after each request.
"""

from __future__ import annotations

import os

from .base import Engine
from .pyenv import PythonEnv

ENV = PythonEnv(
    "llama-cpp-python", "0.3.36",
    ("llama-cpp-python[server]==0.3.36",),
    check="import llama_cpp.server",
    # A native build dies with SIGILL on some of our CPU hosts; cap the compile at the core count.
    build_env={"CMAKE_ARGS": "-DGGML_NATIVE=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF",
               "CMAKE_BUILD_PARALLEL_LEVEL": str(os.cpu_count() or 1)},
    note="compiles llama.cpp: several minutes")


class LlamaCppPython(Engine):
    kind = "llama-cpp-python"
    methods = ("prompt-lookup-decoding",)
    health_path = "/v1/models"  # no /health; this answers once the model is loaded
    tokenize_path = "/extras/tokenize"
    default_port = 8000
    installer = ENV
    report_note = ("llama-cpp-python: its streams carry no usage; token counts from its own tokenizer on the "
                   "finished text (/extras/tokenize), after the request's clock stopped.")
    install_hint = "orch engines install llama-cpp-python"

    def default_binary(self) -> str | None:
        return ENV.python()

    def command_prefix(self, binary: str) -> list[str]:
        return [binary, "-m", "llama_cpp.server"]

    def server_args(self, n_spec, model, port, parallel, draft=None, host="127.0.0.1") -> list[str]:
        # model_alias: requests name the model by its label.
        args = ["--model", str(model.path), "--model_alias", model.label, "--host", host, "--port", str(port)]
        if n_spec > 0:
            args += ["--draft_model", self.spec.speculation.method, "--draft_model_num_pred_tokens", str(n_spec)]
        return args

    def cache_setting(self, workload) -> str:
        return "llama-cpp-python default (no prompt cache unless --cache true)"

    def version(self) -> str:
        return ENV.describe(self.binary(), "llama_cpp_python")
