"""The published "132 vs 39 tok/s" figures, shipped with orch (see reference_data/PROVENANCE.md)."""

from __future__ import annotations

from importlib import resources

import pandas as pd

# One panel per published setup: (title, engine, model).
SETUPS = [
    ("Gemma 4 31B FP8 · vLLM · MTP", "vllm", "RedHatAI/gemma-4-31B-it-FP8-block"),
    ("Qwen3.6 27B FP8 · vLLM · MTP", "vllm", "Qwen/Qwen3.6-27B-FP8"),
    ("Qwen3.6 27B Q8_0 · llama.cpp · draft-mtp", "llamacpp", "unsloth/Qwen3.6-27B-MTP-GGUF:Qwen3.6-27B-Q8_0.gguf"),
]
HARDWARE = "1x RTX PRO 6000 Blackwell (96 GB), CUDA 13.1"


def published_runs() -> pd.DataFrame:
    with resources.files("orchestrator.analysis.reference_data").joinpath("published_mtp_runs.csv").open() as f:
        return pd.read_csv(f)


def published_means(runs: pd.DataFrame | None = None) -> pd.DataFrame:
    """Mean e2e tok/s per setup and n_spec, recomputed from the per-request rows."""
    runs = published_runs() if runs is None else runs
    g = runs.groupby(["engine", "model", "n_spec"])["tok_per_s"]
    out = g.agg(mean_tok_s="mean", runs="size", min_tok_s="min", max_tok_s="max").reset_index()
    base = out[out["n_spec"] == 0].set_index(["engine", "model"])["mean_tok_s"]
    out["speedup"] = [m / base[(e, mod)] for e, mod, m in zip(out["engine"], out["model"], out["mean_tok_s"])]
    return out


def matching(runs: pd.DataFrame, engine_kind: str, model: str) -> pd.DataFrame:
    """Published rows for a run's engine and model (a run on another model matches nothing)."""
    kind = {"llama-server": "llamacpp", "vllm": "vllm"}.get(engine_kind, engine_kind)
    return runs[(runs["engine"] == kind) & runs["model"].apply(lambda m: model in m or m in model)]
