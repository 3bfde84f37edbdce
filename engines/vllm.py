"""vLLM's OpenAI-compatible server (`vllm serve`, the entrypoint of vllm/vllm-openai)."""

from __future__ import annotations

import json

from .base import Engine


class Vllm(Engine):
    kind = "vllm"
    methods = ("mtp", "draft_model", "eagle", "eagle3", "ngram", "suffix")
    draft_methods = ("draft_model", "eagle", "eagle3")
    default_port = 8000
    install_hint = "pip install vllm (or use launcher = \"docker\" with the vllm/vllm-openai image)"

    def default_binary(self) -> str | None:
        return self.which("vllm")

    def server_args(self, n_spec, model, port, parallel, draft=None, host="127.0.0.1") -> list[str]:
        args = [str(model.path or model.hf_ref), "--host", host, "--port", str(port)]
        if n_spec > 0:
            args += ["--speculative-config", json.dumps(self.speculative_config(n_spec, draft), separators=(",", ":"))]
        return args

    def speculative_config(self, n_spec: int, draft=None) -> dict:
        """--speculative-config; n_spec 0 means no config at all. Key order as vLLM's docs write it."""
        spec = self.spec.speculation
        config = {"method": spec.method}
        if draft is not None:
            config["model"] = str(draft.path or draft.hf_ref)
        config["num_speculative_tokens"] = n_spec
        return config

    def cache_setting(self, workload) -> str:
        if workload.cache_prompt or "--enable-prefix-caching" in self.spec.args:
            return "prefix caching on (the scenario asked for it)"
        return "--no-enable-prefix-caching: no prefix-cache hits between requests"

    def plan(self, n_spec, model, port, parallel, draft=None):
        plan = super().plan(n_spec, model, port, parallel, draft)
        # Sweeps start vLLM with prefix caching off unless the scenario turns it on.
        if not {"--enable-prefix-caching", "--no-enable-prefix-caching"} & set(plan.argv):
            plan.argv.append("--no-enable-prefix-caching")
        return plan
