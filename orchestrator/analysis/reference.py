"""The published "132 vs 39 tok/s" figures, shipped with orch (see reference_data/PROVENANCE.md)."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from typing import Any

import pandas as pd

from engines import ENGINES

from orchestrator.telemetry.roofline import known_gpu, limit_tok_s

# One panel per published setup: (title, model); each model was published on one engine.
SETUPS = [
    ("Gemma 4 31B FP8 · vLLM · MTP", "RedHatAI/gemma-4-31B-it-FP8-block"),
    ("Qwen3.6 27B FP8 · vLLM · MTP", "Qwen/Qwen3.6-27B-FP8"),
    ("Qwen3.6 27B Q8_0 · llama.cpp · draft-mtp", "unsloth/Qwen3.6-27B-MTP-GGUF:Qwen3.6-27B-Q8_0.gguf"),
]
HARDWARE = "1x RTX PRO 6000 Blackwell (96 GB), CUDA 13.1"
CARD = known_gpu("RTX PRO 6000")

# Bytes of weights each published model reads per generated token, without its MTP head: the
# parameter count times bytes per weight (FP8: 1; Q8_0: 34 bytes per block of 32, 8.5 bits).
# Estimates from the names, since the files are not shipped; the Gemma figure is the issue's.
WEIGHTS = {
    "RedHatAI/gemma-4-31B-it-FP8-block": (31e9, "31B parameters x 1 byte (FP8)"),
    "Qwen/Qwen3.6-27B-FP8": (27e9, "27B parameters x 1 byte (FP8)"),
    "unsloth/Qwen3.6-27B-MTP-GGUF:Qwen3.6-27B-Q8_0.gguf": (27e9 * 8.5 / 8, "27B parameters x 8.5 bits (Q8_0)"),
}


def roofline(model: str, means: pd.DataFrame) -> tuple[float, str, pd.DataFrame]:
    """(limit tok/s, its basis, the setup's rows with `share`: mean tok/s over the limit) for a
    published setup on its card. The published tok/s is e2e (TTFT included), so a share is a
    little under what the decode rate alone would give."""
    weights, how = WEIGHTS[model]
    if CARD is None:  # telemetry/roofline.py's table must list the card the figures were published on
        raise LookupError("the RTX PRO 6000 is not in the table of GPUs (telemetry/roofline.py)")
    limit = limit_tok_s(int(weights), CARD.tb_s * 1000)
    rows = of_model(means, model).assign(share=lambda d: d["mean_tok_s"] / limit)
    return limit, f"{weights / 1e9:.1f} GB ({how}) / {CARD.tb_s * 1000:.0f} GB/s ({CARD.source})", rows


def published_runs() -> pd.DataFrame:
    with resources.files("orchestrator.analysis.reference_data").joinpath("published_mtp_runs.csv").open() as f:
        return pd.read_csv(f)


def published_means(runs: pd.DataFrame | None = None) -> pd.DataFrame:
    """Mean e2e tok/s per setup and n_spec, recomputed from the per-request rows."""
    runs = published_runs() if runs is None else runs
    g = runs.groupby(["engine", "model", "n_spec"])["tok_per_s"]
    out = g.agg(mean_tok_s="mean", runs="size", min_tok_s="min", max_tok_s="max").reset_index()
    base = out[out["n_spec"] == 0].set_index(["engine", "model"])["mean_tok_s"]
    out["speedup"] = [m / base[(e, mod)] for e, mod, m in zip(out["engine"], out["model"], out["mean_tok_s"], strict=True)]
    return out


def of_model(means: pd.DataFrame, model: str) -> pd.DataFrame:
    """One published setup's rows, by n_spec."""
    return means[means["model"] == model].sort_values("n_spec")


def matching(runs: pd.DataFrame, engine_kind: str, model: str) -> pd.DataFrame:
    """Published rows for a run's engine and model (another engine or model matches nothing)."""
    engine = ENGINES.get(engine_kind)
    published = engine.published_name if engine else None
    return runs[(runs["engine"] == published) & runs["model"].apply(lambda m: model in m or m in model)]


@dataclass(frozen=True)
class Setup:
    """One published setup as `orch reference` shows it: its rows and its card's limit."""

    title: str
    limit: float  # tok/s: the single-stream decode limit without speculation
    basis: str  # how the limit was reached
    rows: pd.DataFrame  # of_model's rows with `share` of the limit


def published_setups() -> list[Setup]:
    means = published_means()
    return [Setup(title, *roofline(model, means)) for title, model in SETUPS]


def published_for(environment: dict[str, Any]) -> tuple[list[tuple[str, pd.DataFrame]], str]:
    """The published means matching each of a run's engines (its name, the means), and a line
    saying what matched: the reference overlay's data."""
    runs = published_runs()
    found = []
    for name, eng in environment.get("engines", {}).items():
        if not eng.get("model"):
            continue  # no model recorded: "" would match every published row
        rows = matching(runs, eng.get("kind", ""), eng["model"])
        if len(rows):
            found.append((name, published_means(rows)))
    if not found:
        models = ", ".join(e.get("model", "?") for e in environment.get("engines", {}).values())
        return [], f"reference: no published figures for {models or 'this run'}; charts drawn without overlay"
    return found, "reference: published figures overlaid for " + ", ".join(n for n, _ in found)
