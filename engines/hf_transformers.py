"""Hugging Face transformers' own generate(): assisted generation with a draft ("assistant") model
and prompt-lookup decoding, served by orch's small OpenAI-compatible server
(engines/servers/transformers_generate.py; its docstring says why not `transformers serve`), in
an environment of its own (`orch engines install transformers`).

Methods: `assistant` (draft_model is the assistant; n_spec = num_assistant_tokens, schedule
"constant" and no confidence cut, so every step drafts n_spec tokens but the last, cut at EOS or
max_tokens) and `prompt-lookup` (n_spec = prompt_lookup_num_tokens, the most a match drafts). An assistant with a different tokenizer works too: generate()
translates between the vocabularies (greedy only), and the server says so as it starts; drafts
are then counted in the target's tokens, so a step may draft more than n_spec. Token counts come from
the server's usage; drafted and accepted tokens per request from the candidate generator, reported
in vLLM's per-request shape.
"""

from __future__ import annotations

from pathlib import Path

from .base import SPEC_DECODE_METRICS, Engine
from .pyenv import PythonEnv

SERVER = Path(__file__).parent / "servers" / "transformers_generate.py"

ENV = PythonEnv(
    "transformers", "5.19.0",
    # torch pinned to the CPU build this project's hosts carry; a GPU host's pip finds its CUDA build.
    ("torch==2.13.0", "transformers==5.19.0", "aiohttp==3.14.5"),
    # Never a CUDA build of torch on a host without an NVIDIA device: several GB for nothing.
    check=("import os, glob, torch, transformers, aiohttp; "
           "assert glob.glob('/dev/nvidia[0-9]*') or torch.version.cuda is None, "
           "'a CUDA build of torch on a host with no NVIDIA GPU: pip install torch==2.13.0+cpu'"),
    note="torch 2.13.0 (the CPU build on a CPU host) and transformers 5.19.0")

# The GGUF -> Hugging Face conversion (orchestrator/setup/gguf_to_hf.py) where no vLLM environment
# is there to lend its torch and transformers: the same pins, plus what transformers reads GGUFs with,
# so that a folder made here is the folder vLLM's environment makes.
HF_CONVERT = PythonEnv(
    "hf-convert", "5.19.0",
    ("torch==2.13.0", "transformers==5.19.0", "gguf==0.19.0", "accelerate==1.15.0"),
    check=ENV.check.replace("aiohttp", "gguf, accelerate"),
    note="torch 2.13.0, transformers 5.19.0, gguf and accelerate: what the GGUF -> Hugging Face conversion imports")


class HfTransformers(Engine):
    kind = "transformers"
    methods = ("assistant", "prompt-lookup")
    draft_methods = ("assistant",)
    default_port = 8000
    model_format = "hf"
    installer = ENV
    install_hint = "orch engines install transformers"
    # The same per-request fields as vLLM's --per-request-spec-decode-metrics summary.
    stream_counts = SPEC_DECODE_METRICS
    report_note = ("transformers: token counts from usage; drafted and accepted tokens per request from "
                   "generate()'s candidate generator (orch's server, engines/servers/transformers_generate.py). "
                   "One request at a time: assisted generation takes a batch of one.")

    def default_binary(self) -> str | None:
        return ENV.python()

    def command_prefix(self, binary: str) -> list[str]:
        return [binary, str(SERVER)]

    def server_args(self, n_spec, model, port, parallel, draft=None, host="127.0.0.1") -> list[str]:
        args = ["--model", str(model.path), "--served-model-name", model.label, "--host", host, "--port", str(port)]
        if n_spec > 0:
            args += ["--method", self.spec.speculation.method, "--n-spec", str(n_spec)]
            if draft is not None:
                args += ["--assistant", str(draft.path)]
        return args

    def cache_setting(self, workload) -> str:
        return "no prompt cache: every request prefills its whole prompt"

    def version(self) -> str:
        return ENV.describe(self.binary(), "transformers")
