import pandas as pd
import pytest

from orchestrator.analysis.summary import format_table, summarize as summarize_records

from .support.runs import CELLS, cells_of, req, requests_of



def summarize(rows, cells):
    return summarize_records(requests_of(rows), cells_of(cells))



def test_medians_speedup_acceptance_and_warmup_excluded():
    rows = [req("e-n0", 0, v, key=f"p{i}") for i, v in enumerate((40, 42, 44))]
    rows += [req("e-n0", 0, 5, phase="warmup", key="w")]
    rows += [req("e-n4", 4, v, drafts=(10, 8), key=f"p{i}") for i, v in enumerate((80, 84, 88))]
    rows += [req("e-n4", 4, 0, ok=False, key="bad")]
    s = summarize(rows, CELLS).set_index("cell_id")
    assert s.loc["e-n0", "e2e_tok_s_median"] == 42 and s.loc["e-n0", "requests_ok"] == 3
    assert s.loc["e-n4", "e2e_tok_s_median"] == 84 and s.loc["e-n4", "requests_failed"] == 1
    assert s.loc["e-n4", "speedup"] == pytest.approx(2.0)
    assert (s.loc["e-n4", "requests_paired"], s.loc["e-n4", "requests_unpaired"]) == (3, 1)  # "bad": no twin
    assert s.loc["e-n4", "acceptance_rate"] == pytest.approx(24 / 30)
    assert s.loc["e-n4", "e2e_tok_s_p10"] == pytest.approx(80.8)
    assert pd.isna(s.loc["e-n0", "acceptance_rate"])
    # A cell that failed before any request still has its row.
    assert s.loc["e-n8", "cell_status"] == "failed" and s.loc["e-n8", "requests_ok"] == 0


def test_resumed_request_counts_once_newest_wins():
    rows = [req("e-n0", 0, 40, ok=False, key="a"), req("e-n0", 0, 50, key="a")]
    s = summarize(rows, CELLS[:1])
    assert (s.loc[0, "requests_ok"], s.loc[0, "requests_failed"], s.loc[0, "e2e_tok_s_median"]) == (1, 0, 50)


def test_speedup_is_per_prompt_set():
    rows = [req("e-n0", 0, 40, prompt_set="seeds", key="a"), req("e-n0", 0, 20, prompt_set="repeat", key="b"),
            req("e-n4", 4, 40, prompt_set="seeds", key="a"), req("e-n4", 4, 60, prompt_set="repeat", key="b")]
    s = summarize(rows, CELLS[:2]).set_index(["cell_id", "prompt_set"])
    assert s.loc[("e-n4", "seeds"), "speedup"] == pytest.approx(1.0)
    assert s.loc[("e-n4", "repeat"), "speedup"] == pytest.approx(3.0)


def test_table_text():
    rows = [req("e-n0", 0, 40, key="x"), req("e-n4", 4, 80, key="x", drafts=(4, 4))]
    lines = format_table(summarize(rows, CELLS[:2])).splitlines()
    assert lines[0].split() == ["engine", "method", "n_spec", "conc", "prompts", "ok", "failed", "e2e_tok/s",
                                "decode_tok/s", "prefill_tok/s", "ttft_s", "latency_s", "accept", "speedup", "95%", "CI",
                                "verdict"]
    # latency: 100 tokens at 40 and 80 tok/s are 2.50 s and 1.25 s from start to end
    assert lines[1].split() == ["e", "none", "0", "1", "seeds", "1", "0", "40.0", "44.0", "-", "0.100", "2.50", "-", "1.00x",
                                "-", "baseline"]
    # One request a side: a ratio, but no spread to give an interval or a verdict from.
    assert lines[2].split() == ["e", "ngram-mod", "4", "1", "seeds", "1", "0", "80.0", "88.0", "-", "0.100", "1.25", "1.00",
                                "2.00x", "-", "-"]


def test_overlapping_cells_differ_when_paired_and_not_when_resampled_independently():
    # Each speculative request is 2 tok/s faster than its twin; the prompts spread the rates 40-60.
    rows = [req("e-n0", 0, v, key=f"a{i}") for i, v in enumerate([40, 60, 45, 55, 50, 48])]
    rows += [req("e-n4", 4, v, key=f"a{i}") for i, v in enumerate([42, 62, 47, 57, 52, 50])]
    s = summarize(rows, CELLS[:2]).set_index("cell_id")
    assert s.loc["e-n4", "independent_verdict"] == "no clear difference"
    assert s.loc["e-n4", "independent_ci_low"] < 1.0 < s.loc["e-n4", "independent_ci_high"]
    assert s.loc["e-n4", "speedup_verdict"] == "faster"
    # prompts are the unit: the interval spans the prompts' ratios (62/60 to 42/40) and a little more
    assert 1.0 < s.loc["e-n4", "speedup_ci_low"] <= 62 / 60 and 42 / 40 <= s.loc["e-n4", "speedup_ci_high"] < 1.07
    assert s.loc["e-n0", "e2e_tok_s_ci_low"] <= 50 <= s.loc["e-n0", "e2e_tok_s_ci_high"]
    assert summarize(rows, CELLS[:2]).equals(summarize(rows, CELLS[:2]))  # seeded: same numbers twice


def test_pairs_that_go_both_ways_are_no_clear_difference():
    rows = [req("e-n0", 0, v, key=f"a{i}") for i, v in enumerate([40, 60, 45, 55, 50, 50])]
    rows += [req("e-n4", 4, v, key=f"a{i}") for i, v in enumerate([44, 54, 45, 60.5, 45, 50])]
    s = summarize(rows, CELLS[:2]).set_index("cell_id")
    assert s.loc["e-n4", "speedup_verdict"] == "no clear difference"
    assert s.loc["e-n4", "speedup_ci_low"] < 1.0 < s.loc["e-n4", "speedup_ci_high"]
    assert s.loc["e-n4", "pairs_slower"] == 2


def test_outlier_is_flagged_not_dropped():
    # The published first-run pattern: 91.8 among runs of about 134.
    rows = [req("e-n4", 4, v, key=f"r{i}") for i, v in enumerate([91.8, 134.0, 134.1, 133.9, 134.2])]
    s = summarize(rows, CELLS[1:2]).iloc[0]
    assert s["outliers"] == "r0 (91.8 tok/s)"
    assert s["requests_ok"] == 5 and s["e2e_tok_s_median"] == 134.0


def test_itl_spreads_a_multi_token_chunk_over_its_tokens():
    from orchestrator.analysis.metrics import itl_per_token, tpot
    rec = {"chunk_t": [0.1, 0.2, 0.5], "chunk_tokens": [1, 2, 5], "completion_tokens": 5,
           "t_first_token": 0.1, "t_end": 0.5}
    assert itl_per_token(rec) == pytest.approx([0.1, 0.1, 0.1, 0.1])  # 1 token in 0.1 s, 3 tokens in 0.3 s
    assert tpot(rec) == pytest.approx(0.1)
    assert itl_per_token({**rec, "chunk_tokens": [None, None, None]}) is None


def test_server_metrics_deltas_from_prometheus_text():
    from orchestrator.measure.server_metrics import delta, parse

    text = lambda d, t, a, p0: (
        "# TYPE vllm:spec_decode_num_drafts_total counter\n"
        f"vllm:spec_decode_num_drafts_total{{engine=\"0\"}} {d}\n"
        "# TYPE vllm:spec_decode_num_draft_tokens_total counter\n"
        f"vllm:spec_decode_num_draft_tokens_total{{engine=\"0\"}} {t}\n"
        "# TYPE vllm:spec_decode_num_accepted_tokens_total counter\n"
        f"vllm:spec_decode_num_accepted_tokens_total{{engine=\"0\"}} {a}\n"
        "# TYPE vllm:spec_decode_num_accepted_tokens_per_pos_total counter\n"
        f"vllm:spec_decode_num_accepted_tokens_per_pos_total{{engine=\"0\",position=\"0\"}} {p0}\n")
    d = delta(parse(text(5, 20, 10, 4)), parse(text(15, 60, 40, 13)))
    assert (d["drafts"], d["draft_tokens"], d["accepted_tokens"]) == (10, 40, 30)
    assert d["acceptance_rate"] == 0.75 and d["mean_acceptance_length"] == 4.0
    assert d["per_pos_acceptance"] == {"0": 0.9}


def test_a_metrics_page_that_is_not_prometheus_text_means_no_counters():
    from .support.fake_server import FakeServer
    from orchestrator.measure.server_metrics import scrape

    with FakeServer() as server:  # answers every GET with JSON
        assert scrape(server.url) is None
