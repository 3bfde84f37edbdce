"""SGLang's server, `python3 -m sglang.launch_server`, in its official image (lmsysorg/sglang) on a
GPU host: `launcher = "docker"` only, since SGLang has no CPU build to run here.

Flags as SGLang 0.5.23 declares them (sglang/srt/arg_groups/fields/*.py, each field's name as
`--name-with-dashes`; tests/fixtures/sglang/server_flags.json holds the list, extracted from the
wheel, and the tests check every flag orch emits against it).

Depth: orch's n_spec is the number of tokens drafted per step. For the EAGLE family (EAGLE,
EAGLE3, NEXTN = MTP heads, STANDALONE draft models) orch drafts a chain: --speculative-num-steps
n_spec, --speculative-eagle-topk 1, --speculative-num-draft-tokens n_spec + 1 (the root and n_spec
drafts; SGLang rewrites any other value to num_steps + 1 when topk is 1, and it needs all three
or none). A tree (topk > 1, more draft tokens) is the scenario's speculation.config, as
bench_speculative.py sweeps steps x topk x draft tokens. NGRAM drafts n_spec tokens per step.

Acceptance: /metrics under --enable-metrics. SGLang's acceptance gauges (sglang:spec_accept_rate,
spec_accept_length) cover only its last log interval, so orch uses the counters instead:
sglang:spec_verify_calls_total (verification steps) and sglang:generation_tokens_total (tokens
out; each step yields its own token plus the drafts it accepted), whose deltas over a measured
window give the mean acceptance length; draft tokens proposed are not counted there, so no
acceptance rate. Not run here: there is no GPU on this machine.
"""

from __future__ import annotations

from .base import Engine

EAGLE_FAMILY = ("eagle", "eagle3", "nextn", "standalone")
# speculation.config keys: bench_speculative.py's tree settings and the acceptance thresholds.
SPEC_CONFIG_KEYS = ("speculative_eagle_topk", "speculative_num_draft_tokens",
                    "speculative_accept_threshold_single", "speculative_accept_threshold_acc")


class SGLang(Engine):
    kind = "sglang"
    methods = (*EAGLE_FAMILY, "ngram")  # --speculative-algorithm, upper-cased
    # NEXTN reads the target's own MTP layers (DeepSeek, GLM, Qwen MTP) or an assistant head given
    # as draft_model (Gemma 4); EAGLE, EAGLE3 and STANDALONE need a draft model.
    draft_methods = ("eagle", "eagle3", "standalone")
    default_port = 30000
    model_format = "hf"
    health_path = "/health"  # 503 while starting; once up, a one-token generation answers 200
    metrics_prefix = "sglang:"
    # name (prefix and _total removed) -> what server_metrics counts
    metric_counters = {"spec_verify_calls": "drafts", "generation_tokens": "generated_tokens"}
    spec_config_keys = SPEC_CONFIG_KEYS
    install_hint = 'use launcher = "docker" with the lmsysorg/sglang image on a GPU host'
    report_note = ("SGLang: token counts from usage; mean acceptance length from the deltas of its /metrics "
                   "counters sglang:generation_tokens_total / spec_verify_calls_total over each measured window.")

    def default_binary(self) -> str | None:
        return None  # the image provides it; a local process is not supported

    # The image has no entrypoint that starts the server: the container's command names it.
    image_command = ("python3", "-m", "sglang.launch_server")

    def server_args(self, n_spec, model, port, parallel, draft=None, host="127.0.0.1") -> list[str]:
        args = ["--model-path", str(model.path or model.hf_ref), "--served-model-name", model.label,
                "--host", host, "--port", str(port), "--enable-metrics", "--max-running-requests", str(parallel)]
        if n_spec > 0:
            args += self.speculation_args(n_spec, draft)
        return args

    def speculation_args(self, n_spec: int, draft=None) -> list[str]:
        spec = self.spec.speculation
        args = ["--speculative-algorithm", spec.method.upper()]
        if draft is not None:
            args += ["--speculative-draft-model-path", str(draft.path or draft.hf_ref)]
        if spec.method in EAGLE_FAMILY:
            settings = {"speculative_num_steps": n_spec, "speculative_eagle_topk": 1,
                        "speculative_num_draft_tokens": n_spec + 1}
        else:
            settings = {"speculative_num_draft_tokens": n_spec}
        for key, value in {**settings, **spec.config}.items():
            args += ["--" + key.replace("_", "-"), str(value)]
        return args

    def with_defaults(self, args: list[str]) -> list[str]:
        # Sweeps run without prefix-cache hits between repeats, as vLLM's cells do.
        return args if "--disable-radix-cache" in args else [*args, "--disable-radix-cache"]

    def cache_setting(self, workload) -> str:
        return "--disable-radix-cache: no prefix-cache hits between requests"
