"""The cost columns of summary.csv from cell records with telemetry: per-token figures are each
request's share over its own tokens (median, interval), window figures are the window's, and a
reading that was not taken is empty with its reason, never zero."""

from __future__ import annotations

import pandas as pd
import pytest

from orchestrator.analysis.cost import cost_frame, cost_notes
from orchestrator.analysis.summary import summarize

from .support.runs import cells_of, req, requests_of


def window(per_request, gpus=None, energy=None):
    w = {"seconds": 10.0, "samples": 100, "interval_s": 0.1, "cpu_s": 15.0, "cpu_util": 1.5, "rss_peak_b": 4e8,
         "per_request": per_request, "gpu": "no GPU (NVML: NVML Shared Library Not Found)",
         "energy_source": "unavailable: no RAPL package zone"}
    if gpus:
        w.update(gpus=gpus, gpu="0: NVIDIA H200", energy_j=energy, power_mean_w=energy / 10,
                 energy_source="GPU 0: NVML energy counter")
    return w


def test_per_token_figures_are_each_requests_share_over_its_tokens():
    rows = [req("e-n0", 0, 40, key=f"a{i}") for i in range(5)] + [req("e-n4", 4, 80, key=f"a{i}") for i in range(5)]
    h200 = [{"index": 0, "name": "NVIDIA H200", "mem_peak_b": 9e10, "mem_total_b": 1.4e11, "power_mean_w": 400.0,
             "util_pct_mean": 90.0, "sm_mhz_mean": 1980.0, "temp_c_peak": 70.0, "energy_j": 4000.0}]
    base = {f"a{i}": {"cpu_s": 2.0, "energy_j": 500.0 + 10 * i} for i in range(5)}  # 100 tokens each
    spec = {f"a{i}": {"cpu_s": 1.0} for i in range(5)}  # a CPU host without RAPL: no joules
    cells = cells_of([{"cell_id": "e-n0", "engine": "e", "method": "none", "n_spec": 0, "status": "ok",
                       "telemetry": {"1": window(base, h200, 3000.0)},
                       "roofline": {"weight_bytes": 31_000_000_000, "bandwidth_gb_s": 1792.0, "limit_tok_s": 57.806,
                                    "weight_source": "scenario roofline.weight_gb",
                                    "bandwidth_source": "NVIDIA RTX PRO 6000 Blackwell datasheet"}},
                      {"cell_id": "e-n4", "engine": "e", "method": "ngram-mod", "n_spec": 4, "status": "ok",
                       "telemetry": {"1": window(spec)}}])
    s = summarize(requests_of(rows), cells).set_index("cell_id")
    n0, n4 = s.loc["e-n0"], s.loc["e-n4"]
    assert n0["j_per_token_median"] == pytest.approx(5.2)  # median of 500..540 J over 100 tokens
    assert n0["tok_per_j_median"] == pytest.approx(100 / 520)  # tokens/s per W = tokens per joule
    assert n0["j_per_token_window"] == pytest.approx(3000.0 / 500)  # the window's joules, idle included
    assert n0["cpu_s_per_token_median"] == pytest.approx(0.02) and n4["cpu_s_per_token_median"] == pytest.approx(0.01)
    assert n0["gpu_mem_peak_mb"] == 90_000 and n0["gpu_mem_headroom_mb"] == 50_000 and n0["gpu_power_w_mean"] == 400
    assert n0["roofline_share"] == pytest.approx(44.0 / 57.806)  # decode 40 * 1.1 over the limit
    assert n4["gpu_power_w_mean"] == "no GPU" and n4["gpu"].startswith("no GPU")  # never 0
    assert n4["energy_source"].startswith("unavailable") and pd.isna(n4["j_per_token_median"])
    view = cost_frame(s.reset_index())
    assert list(view.columns)[-2:] == ["limit tok/s", "decode / limit"]
    assert view.loc[0, "J/token"] == "5.200 [5.000-5.400]" and view.loc[1, "GPU MB"] == "no GPU"
    notes = cost_notes(s.reset_index())
    assert any(n.startswith("energy: GPU 0: NVML energy counter") for n in notes)
    assert any(n.startswith("energy: unavailable: no RAPL package zone") for n in notes)


def test_failed_requests_and_requests_without_a_share_are_left_out():
    rows = [req("e-n0", 0, 40, key="a"), req("e-n0", 0, 40, key="b", ok=False), req("e-n0", 0, 40, key="c")]
    cells = cells_of([{"cell_id": "e-n0", "engine": "e", "method": "none", "n_spec": 0, "status": "ok",
                       "telemetry": {"1": window({"a": {"cpu_s": 3.0}, "b": {"cpu_s": 99.0}})}}])
    s = summarize(requests_of(rows), cells)
    assert s.loc[0, "cpu_s_per_token_median"] == pytest.approx(0.03)  # a only: b failed, c has no share


def test_a_run_without_telemetry_has_empty_cost_columns_and_no_cost_table():
    rows = [req("e-n0", 0, 40, key="a")]
    s = summarize(requests_of(rows), cells_of([{"cell_id": "e-n0", "engine": "e", "method": "none", "n_spec": 0,
                                                 "status": "ok"}]))
    assert pd.isna(s.loc[0, "cpu_util"]) and pd.isna(s.loc[0, "gpu"]) and cost_frame(s).empty


def test_a_resumed_windows_joules_are_over_the_tokens_of_the_requests_it_ran():
    rows = [req("e-n0", 0, 40, key=f"a{i}") for i in range(10)]  # a0-a4 kept from before the resume
    gpu = [{"index": 0, "name": "NVIDIA H200", "energy_j": 1000.0}]
    rerun = {f"a{i}": {"cpu_s": 1.0, "energy_j": 200.0} for i in range(5, 10)}
    cells = cells_of([{"cell_id": "e-n0", "engine": "e", "method": "none", "n_spec": 0, "status": "ok",
                       "telemetry": {"1": window(rerun, gpu, 1000.0)}}])
    s = summarize(requests_of(rows), cells)
    assert s.loc[0, "j_per_token_window"] == pytest.approx(2.0)  # 1000 J over the 500 tokens re-run
