"""llama-cpp-python's OpenAI-compatible server (`python -m llama_cpp.server`), in its own
environment (`orch engines install llama-cpp-python`).

Its speculation is prompt-lookup decoding (LlamaPromptLookupDecoding); n_spec is the number of
tokens it predicts per step (--draft_model_num_pred_tokens). Its streams carry no usage, so
token counts come from its /extras/tokenize endpoint after each request.
"""

from __future__ import annotations

from .base import Engine


class LlamaCppPython(Engine):
    kind = "llama-cpp-python"
    methods = ("prompt-lookup-decoding",)
    health_path = "/v1/models"  # no /health; this answers once the model is loaded
    tokenize_path = "/extras/tokenize"
    default_port = 8000
    installer = "llama-cpp-python"
    install_hint = "orch engines install llama-cpp-python"

    def default_binary(self) -> str | None:
        from orchestrator.setup.pyenvs import env_python

        return env_python("llama-cpp-python")

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
        from orchestrator.setup.pyenvs import env_version

        return env_version("llama-cpp-python", self.binary(), "llama_cpp_python")
