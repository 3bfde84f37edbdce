"""Prefill and decode rates per cell: the server's own timings where the stream carries them
(llama.cpp), else prefill from prompt tokens / TTFT, marked; on constructed records whose
rates are known."""

import pytest

from orchestrator.analysis.summary import format_table, summarize

from .support.runs import cells_of, requests_of, timed

CELLS = [{"cell_id": "e-n0", "engine": "e", "method": "none", "n_spec": 0, "status": "ok"}]


def rows(timings: bool):
    out = []
    for i, (prefill, decode) in enumerate([(200.0, 40.0), (300.0, 50.0), (400.0, 60.0)]):
        r = dict(timed("e-n0", 0, f"p{i}", 64, 2.0), prompt_tokens=50, ttft_s=0.5 * (i + 1))
        if timings:
            r.update(timings_prompt_per_second=prefill, timings_predicted_per_second=decode)
        out.append(r)
    return out


def test_the_servers_own_timings_when_it_reports_them():
    (row,) = summarize(requests_of(rows(True)), cells_of(CELLS)).to_dict("records")
    assert row["prefill_tok_s_median"] == 300.0 and row["server_decode_tok_s_median"] == 50.0
    assert row["prefill_source"] == "timings"
    assert 200.0 <= row["prefill_tok_s_ci_low"] <= 300.0 <= row["prefill_tok_s_ci_high"] <= 400.0
    assert "†" not in format_table(summarize(requests_of(rows(True)), cells_of(CELLS)))


def test_prefill_from_ttft_is_marked_where_the_server_times_nothing():
    summary = summarize(requests_of(rows(False)), cells_of(CELLS))
    (row,) = summary.to_dict("records")
    assert row["prefill_tok_s_median"] == pytest.approx(50 / 1.0)  # 100, 50, 33.3 tok/s: the median
    assert row["prefill_source"] == "ttft" and row["server_decode_tok_s_median"] is None
    table = format_table(summary)
    assert "50†" in table and "† prefill tok/s from prompt tokens / TTFT" in table


def test_a_cell_with_some_timed_requests_says_so():
    mixed = rows(True)[:2] + rows(False)[2:]
    (row,) = summarize(requests_of(mixed), cells_of(CELLS)).to_dict("records")
    assert row["prefill_source"] == "timings+ttft"


def test_ttft_and_total_latency_per_cell_with_intervals():
    # requests of 2, 4 and 9 s from start to last byte, TTFT 0.5, 1.0, 1.5 s
    reqs = [dict(timed("e-n0", 0, f"p{i}", 64, s), prompt_tokens=50, ttft_s=0.5 * (i + 1))
            for i, s in enumerate([2.0, 4.0, 9.0])]
    summary = summarize(requests_of(reqs), cells_of(CELLS))
    (row,) = summary.to_dict("records")
    assert row["latency_s_median"] == 4.0 and row["latency_s_mean"] == pytest.approx(5.0)
    assert 2.0 <= row["latency_s_ci_low"] <= 4.0 <= row["latency_s_ci_high"] <= 9.0
    assert row["ttft_s_median"] == 1.0 and 0.5 <= row["ttft_s_ci_low"] <= 1.0 <= row["ttft_s_ci_high"] <= 1.5


def test_a_failed_request_has_no_latency_in_its_cell():
    reqs = [dict(timed("e-n0", 0, "p0", 64, 2.0), ttft_s=0.5), dict(timed("e-n0", 0, "p1", 64, 30.0, ok=False))]
    (row,) = summarize(requests_of(reqs), cells_of(CELLS)).to_dict("records")
    assert row["latency_s_median"] == 2.0 and row["requests_failed"] == 1
