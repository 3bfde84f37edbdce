"""llama.cpp's `llama-server`."""

from __future__ import annotations

import os
import subprocess

from .base import Engine

# The flag that sets draft depth differs per speculation type (common/arg.cpp,
# common/speculative.cpp): draft-* read --spec-draft-n-max, ngram-mod its own n-max,
# the n-gram map types their m-gram size. The old --draft-max/--draft-min were removed.
DEPTH_FLAG = {
    "draft-simple": "--spec-draft-n-max",
    "draft-mtp": "--spec-draft-n-max",
    "draft-eagle3": "--spec-draft-n-max",
    "ngram-mod": "--spec-ngram-mod-n-max",
    "ngram-simple": "--spec-ngram-simple-size-m",
    "ngram-map-k": "--spec-ngram-map-k-size-m",
    "ngram-map-k4v": "--spec-ngram-map-k4v-size-m",
}


class LlamaServer(Engine):
    kind = "llama-server"
    methods = tuple(DEPTH_FLAG)
    draft_methods = ("draft-simple", "draft-eagle3")
    installer = "llama-server"
    install_hint = "orch engines install llama-server"

    def default_binary(self) -> str | None:
        from orchestrator.setup.install import installed_llama_server

        on_path = self.which("llama-server")
        if on_path:
            return on_path
        cached = installed_llama_server()
        return str(cached) if cached else None

    def server_args(self, n_spec, model, port, parallel, draft=None, host="127.0.0.1") -> list[str]:
        args = ["--host", host, "--port", str(port), "--parallel", str(parallel), "--metrics"]
        args += ["-m", str(model.path)] if model.path else ["-hf", model.hf_ref]
        if n_spec > 0:
            method = self.spec.speculation.method
            args += ["--spec-type", method, DEPTH_FLAG[method], str(n_spec)]
            if draft is not None:
                args += ["-md", str(draft.path)] if draft.path else ["-hfd", draft.hf_ref]
        return args

    def request_fields(self, workload) -> dict:
        # timings_per_token: predicted_n on every chunk, so ITL knows tokens per chunk.
        fields = {"cache_prompt": workload.cache_prompt, "timings_per_token": True}
        if workload.ignore_eos:
            fields["ignore_eos"] = True
        return fields

    def cache_setting(self, workload) -> str:
        if workload.cache_prompt:
            return "cache_prompt=true: prompt-cache reuse between requests allowed"
        return "cache_prompt=false on every request: no prompt-cache reuse"

    def version(self) -> str:
        binary = self.binary()
        if not binary or not os.path.exists(binary):
            return "not installed"
        try:
            out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"unknown ({exc})"
        lines = [ln for ln in (out.stdout + out.stderr).splitlines() if ln.startswith("version")]
        return lines[0].split(":", 1)[1].strip() if lines else "unknown"
