"""The published "132 vs 39 tok/s" figures, shipped with orch (see reference_data/PROVENANCE.md)."""

from __future__ import annotations

from importlib import resources

import pandas as pd

from engines import ENGINES

# One panel per published setup: (title, model); each model was published on one engine.
SETUPS = [
    ("Gemma 4 31B FP8 · vLLM · MTP", "RedHatAI/gemma-4-31B-it-FP8-block"),
    ("Qwen3.6 27B FP8 · vLLM · MTP", "Qwen/Qwen3.6-27B-FP8"),
    ("Qwen3.6 27B Q8_0 · llama.cpp · draft-mtp", "unsloth/Qwen3.6-27B-MTP-GGUF:Qwen3.6-27B-Q8_0.gguf"),
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


def of_model(means: pd.DataFrame, model: str) -> pd.DataFrame:
    """One published setup's rows, by n_spec."""
    return means[means["model"] == model].sort_values("n_spec")


def matching(runs: pd.DataFrame, engine_kind: str, model: str) -> pd.DataFrame:
    """Published rows for a run's engine and model (another engine or model matches nothing)."""
    engine = ENGINES.get(engine_kind)
    published = engine.published_name if engine else None
    return runs[(runs["engine"] == published) & runs["model"].apply(lambda m: model in m or m in model)]
