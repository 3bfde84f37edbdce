"""Records read back are hostile input: run folders corrupted by hand, driven through the real CLI.

Each test writes the lines itself and knows, line by line, whether a line is a measured
success, a failure (as written, or kept as failed because a measurement is invalid) or
unreadable; the expected counts and warning lines come from that, not from orch's code.
"""

import html
import json

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from orchestrator.cli import cli
from orchestrator.results.rundir import RunDir
from orchestrator.analysis.stats import median_ci, ratio_ci, verdict
from orchestrator.analysis.summary import summarize as summarize_records

from .support.runs import cells_of, requests_of

from .support.runs import make_run
from .support.runs import CELLS, req

ENGINES = {"e": {"kind": "llama-server", "model": "m"}}
CI_COLUMNS = ["e2e_tok_s_ci_low", "e2e_tok_s_ci_high", "decode_tok_s_ci_low", "decode_tok_s_ci_high",
              "independent_ci_low", "independent_ci_high", "acceptance_ci_low", "acceptance_ci_high"]



def summarize(rows, cells):
    return summarize_records(requests_of(rows), cells_of(cells))

def invoke(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert "Traceback" not in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result


def warnings_of(result) -> list[str]:
    return [ln for ln in result.stderr.splitlines() if ln.startswith("warning: ")]


def write_lines(path, lines):
    path.write_text("".join(ln + "\n" for ln in lines))


def hostile_requests(tmp_path):
    """A run whose requests.jsonl holds, line by line: (text, cell, what orch must make of it)."""
    def line(row, **changes):
        return json.dumps({**row, **changes})  # json.dumps writes NaN as the bare word NaN

    a = [req("e-n0", 0, 40 + i, key=f"a{i}") for i in range(5)]
    b = [req("e-n4", 4, 80 + i, key=f"b{i}") for i in range(8)]
    spec = [
        (line(a[0]), "e-n0", "ok"),
        (line(a[1]), "e-n0", "ok"),
        ("garbage{", None, "skip"),
        ("[1,2]", None, "skip"),
        (line(a[2], ok="yes"), "e-n0", "skip"),
        (line(a[3]), "e-n0", "ok"),
        (line(b[0], completion_tokens=-5), "e-n4", "failed"),
        (line(b[1], e2e_tok_s=float("nan")), "e-n4", "failed"),
        (line(b[2], n_spec="x"), "e-n4", "skip"),
        (line(b[3]), "e-n4", "ok"),
        (line(a[4], e2e_tok_s="fast"), "e-n0", "failed"),
        (line(b[4], completion_tokens=2.5), "e-n4", "failed"),
        (line(b[5], e2e_tok_s=-3), "e-n4", "failed"),
        (line(b[6]), "e-n4", "ok"),
        (line(req("e-n4", 4, 0, ok=False, key="b7")), "e-n4", "failed"),  # a failure as the driver writes it
    ]
    run = make_run(tmp_path / "run", a + b, ENGINES)
    write_lines(run / "requests.jsonl", [text for text, _, _ in spec])
    return run, spec


def expected_requests_warning(run) -> str:
    return (f"warning: {run / 'requests.jsonl'}: skipped 4 of 15 lines ("
            "line 3: not JSON (Expecting value at column 1); "
            "line 4: not a JSON object (list); "
            'line 5: ok "yes": input should be a valid boolean; '
            'line 9: n_spec "x": input should be a valid integer); '
            "kept 11 rows, 5 of them as failed ("
            "line 7: completion_tokens -5: input should be greater than or equal to 0; "
            "line 8: e2e_tok_s NaN: input should be a finite number; "
            'line 11: e2e_tok_s "fast": input should be a valid number; '
            "line 12: completion_tokens 2.5: input should be a valid integer; "
            "line 13: e2e_tok_s -3: input should be greater than or equal to 0)")


def test_report_skips_unreadable_lines_keeps_invalid_measurements_as_failed_and_says_so(tmp_path):
    run, spec = hostile_requests(tmp_path)
    result = invoke("report", run)
    assert result.exit_code == 0, result.output
    assert warnings_of(result) == [expected_requests_warning(run)]

    s = pd.read_csv(run / "summary.csv").set_index("cell_id")
    for cell in ("e-n0", "e-n4"):
        ok = sum(1 for _, c, what in spec if c == cell and what == "ok")
        failed = sum(1 for _, c, what in spec if c == cell and what == "failed")
        assert (s.loc[cell, "requests_ok"], s.loc[cell, "requests_failed"]) == (ok, failed)
    assert s.loc["e-n0", "e2e_tok_s_median"] == 41  # a0, a1, a3: 40, 41, 43
    assert s.loc["e-n4", "e2e_tok_s_median"] == 84.5  # b3, b6: 83, 86
    assert s.loc["e-n4", "independent_speedup"] == pytest.approx(84.5 / 41)
    # The b requests have no twins among the a ones (other prompt ids): every kept one is counted unpaired.
    assert (s.loc["e-n4", "requests_paired"], s.loc["e-n4", "requests_unpaired"]) == (0, 7)
    bounds = s[CI_COLUMNS].to_numpy(dtype=float)
    assert (bounds[~np.isnan(bounds)] >= 0).all() and (~np.isnan(bounds)).sum() == 10  # e2e, decode x 2; speedup

    md = (run / "report" / "summary.md").read_text()
    page = (run / "report" / "index.html").read_text()
    note = expected_requests_warning(run).removeprefix("warning: ")
    assert "Records skipped" in md and f"- {note}" in md.splitlines()
    assert "Records skipped" in page and html.escape(note) in page


def test_a_kept_row_names_the_invalid_field_and_never_counts_as_measured(tmp_path):
    run, _ = hostile_requests(tmp_path)
    rows = {r.key: r for r in RunDir(run).request_records()}
    assert rows["b0"].ok is False and rows["b0"].completion_tokens is None
    assert rows["b0"].error == ("invalid record read back: completion_tokens -5: "
                                   "input should be greater than or equal to 0")
    assert rows["b1"].ok is False and rows["b1"].e2e_tok_s is None and "e2e_tok_s NaN" in rows["b1"].error
    assert rows["b7"].error is None  # the driver's own failure keeps its own (absent) error
    assert "a2" not in rows and "b2" not in rows


def test_compare_reads_the_same_hostile_run_with_the_same_warning(tmp_path):
    run, _ = hostile_requests(tmp_path)
    result = invoke("compare", run, "--out", tmp_path / "cmp")
    assert result.exit_code == 0, result.output
    assert warnings_of(result) == [expected_requests_warning(run)]
    row = result.stdout.splitlines()[1]
    # Medians from the kept rows; no speedup, since the b requests have no twins among the a ones.
    assert "41.0" in row and "n4 ngram-mod 84.5" in row and row.split()[-2:] == ["-", "-"]


def test_a_truncated_last_line_is_still_its_own_warning(tmp_path):
    rows = [req("e-n0", 0, v, key=f"a{v}") for v in (40, 41, 42)]
    run = make_run(tmp_path / "run", rows, ENGINES)
    with open(run / "requests.jsonl", "a") as f:
        f.write('{"ok": true, "cell_id": "e-n0", "tru')
    result = invoke("report", run)
    assert result.exit_code == 0
    assert warnings_of(result) == [f"warning: {run / 'requests.jsonl'}:4: ignoring a truncated last line; kept 3 rows"]
    assert pd.read_csv(run / "summary.csv")["requests_ok"].tolist() == [3]


def test_many_bad_lines_are_counted_with_their_line_numbers(tmp_path):
    rows = [req("e-n0", 0, 40, key="a0")]
    run = make_run(tmp_path / "run", rows, ENGINES)
    write_lines(run / "requests.jsonl", [json.dumps(rows[0])] + ["x"] * 30 + [json.dumps(rows[0])])
    result = invoke("report", run)
    detail = "; ".join(f"line {n}: not JSON (Expecting value at column 1)" for n in range(2, 7))
    more = ", ".join(str(n) for n in range(7, 27)) + " and 5 more"
    assert warnings_of(result) == [f"warning: {run / 'requests.jsonl'}: skipped 30 of 32 lines ({detail}; "
                                   f"and 25 more at lines {more}); kept 2 rows"]


def test_binary_garbage_and_deep_nesting_are_skipped_lines(tmp_path):
    rows = [req("e-n0", 0, 40, key="a0"), req("e-n0", 0, 42, key="a1")]
    run = make_run(tmp_path / "run", rows, ENGINES)
    (run / "requests.jsonl").write_bytes(json.dumps(rows[0]).encode() + b"\n\xff\xfe\x00garbage\n"
                                         + b"[" * 100_000 + b"\n" + json.dumps(rows[1]).encode() + b"\n")
    result = invoke("report", run)
    assert result.exit_code == 0, result.output
    assert warnings_of(result) == [f"warning: {run / 'requests.jsonl'}: skipped 2 of 4 lines (line 2: not UTF-8 text; "
                                   "line 3: not JSON (nested too deeply)); kept 2 rows"]
    assert pd.read_csv(run / "summary.csv")["requests_ok"].tolist() == [2]


@pytest.mark.parametrize("content, why", [
    ("{not json", "not valid JSON (Expecting property name enclosed in double quotes at column 2)"),
    ("[1, 2]", "not a JSON object (list)"),
])
def test_a_corrupt_environment_means_no_machine_details_not_a_traceback(tmp_path, content, why):
    rows = [req("e-n0", 0, 40), req("e-n4", 4, 80, key="b")]
    run = make_run(tmp_path / "run", rows, ENGINES)
    (run / "environment.json").write_text(content)
    result = invoke("report", run, "--reference", "published")
    assert result.exit_code == 0, result.output
    assert warnings_of(result) == [f"warning: {run / 'environment.json'}: {why}; "
                                   "the report goes on without machine details"]
    assert (run / "report" / "summary.md").read_text().splitlines()[2] == "model: ? · machine: ? (? cores, no GPU)"
    compared = invoke("compare", run, "--out", tmp_path / "cmp")
    assert compared.exit_code == 0 and "? (? cores, no GPU)" in compared.stdout


def test_environment_fields_of_the_wrong_type_are_dropped(tmp_path):
    rows = [req("e-n0", 0, 40), req("e-n4", 4, 80, key="b")]
    run = make_run(tmp_path / "run", rows, ENGINES)
    (run / "environment.json").write_text(json.dumps(
        {"engines": {"e": {"kind": "llama-server", "model": 7}}, "gpu": 5, "cpu": "Test CPU", "cpu_count": 2}))
    result = invoke("report", run, "--reference", "published")
    assert result.exit_code == 0, result.output
    assert warnings_of(result) == [
        f"warning: {run / 'environment.json'}: ignored invalid fields (gpu 5: input should be a valid list; "
        "engines.e.model 7: input should be a valid string); the report goes on without them"]
    assert result.stdout.splitlines()[0] == "reference: no published figures for ?; charts drawn without overlay"
    assert (run / "report" / "summary.md").read_text().splitlines()[2] == \
        "model: ? · machine: Test CPU (2 cores, no GPU)"


def test_cells_missing_a_cell_id_or_with_bad_server_metrics(tmp_path):
    rows = [req("e-n0", 0, 40), req("e-n4", 4, 80, key="b")]
    run = make_run(tmp_path / "run", rows, ENGINES)
    cells = [{"cell_id": "e-n0", "engine": "e", "method": "none", "n_spec": 0, "status": "ok"},
             {"engine": "e", "method": "ngram-mod", "n_spec": 4, "status": "ok"},
             {"cell_id": "e-n0", "engine": "e", "method": "none", "n_spec": 0, "status": "failed",
              "server_metrics": {"1": {"acceptance_rate": "high"}}}]
    write_lines(run / "cells.jsonl", [json.dumps(c) for c in cells])
    result = invoke("report", run)
    assert result.exit_code == 0, result.output
    assert warnings_of(result) == [
        f"warning: {run / 'cells.jsonl'}: skipped 1 of 3 lines (line 2: missing cell_id); kept 2 rows, "
        '1 of them with invalid fields dropped (line 3: server_metrics.1.acceptance_rate "high": '
        "input should be a valid number)"]
    s = pd.read_csv(run / "summary.csv").set_index("cell_id")
    assert s.loc["e-n0", "cell_status"] == "failed"  # the newer record of the cell, kept
    assert s.loc["e-n4", "cell_status"] == "unknown" and s.loc["e-n4", "requests_ok"] == 1
    assert pd.isna(s.loc["e-n0", "server_acceptance_rate"])


def test_a_run_whose_every_line_is_unreadable_ends_in_one_line(tmp_path):
    run = make_run(tmp_path / "run", [req("e-n0", 0, 40)], ENGINES)
    write_lines(run / "requests.jsonl", ["garbage", "[1]", "{}"])
    write_lines(run / "cells.jsonl", ['"x"'])
    result = invoke("report", run)
    assert result.exit_code == 0, result.output
    assert warnings_of(result) == [
        f"warning: {run / 'requests.jsonl'}: skipped 3 of 3 lines (line 1: not JSON (Expecting value at column 1); "
        "line 2: not a JSON object (list); line 3: missing key, phase, concurrency, repeat, prompt_set, prompt_id, "
        "ok, cell_id, engine, method, n_spec); kept 0 rows",
        f"warning: {run / 'cells.jsonl'}: skipped 1 of 1 lines (line 1: not a JSON object (str)); kept 0 rows"]
    assert result.stdout.splitlines()[0] == "no cell and no measured request in the records: nothing to summarize"
    assert len(pd.read_csv(run / "summary.csv")) == 0
    assert "Records skipped" in (run / "report" / "index.html").read_text()
    compared = invoke("compare", run, "--out", tmp_path / "cmp")
    assert compared.exit_code == 0
    assert compared.stdout.splitlines() == ["no run has both an n_spec 0 cell and a speculative cell to compare"]


# ---------------------------------------------------------------- statistics


def test_a_zero_baseline_gives_no_speedup_and_no_verdict(tmp_path):
    rows = [req("e-n0", 0, 0, key=f"a{i}") for i in range(3)] + [req("e-n4", 4, v, key=f"a{i}")
                                                                  for i, v in enumerate((80, 81, 82))]
    s = summarize(rows, CELLS[:2]).set_index("cell_id")
    assert s.loc["e-n0", "speedup_verdict"] == "baseline" and pd.isna(s.loc["e-n0", "speedup"])
    assert (s.loc["e-n4", "requests_paired"], s.loc["e-n4", "requests_unpaired"]) == (0, 3)  # x / 0: no ratio
    for col in ("speedup", "speedup_ci_low", "speedup_verdict", "independent_speedup", "independent_ci_low",
                "independent_verdict"):
        assert pd.isna(s.loc["e-n4", col]), col
    run = make_run(tmp_path / "run", rows, ENGINES)
    result = invoke("compare", run, "--out", tmp_path / "cmp")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[1].split()[-2:] == ["-", "-"]  # speedup, verdict
    assert "nan" not in result.stdout.lower() and "slower" not in result.stdout


def test_a_baseline_that_is_often_zero_in_resamples_has_no_interval():
    # Cells resampled independently (independent_*). Baseline [0, 40, 42, 44, 45]: median 42, but a
    # resample's median is 0 when it draws the 0 three or more times out of five: P = 10(.2^3)(.8^2) + 5(.2^4)(.8) + .2^5 = 0.0579 > 2.5%, so the
    # upper 97.5% bound of the ratio is infinite: no interval, no verdict, though the speedup is 2.
    rows = [req("e-n0", 0, v, key=f"a{i}") for i, v in enumerate([0, 40, 42, 44, 45])]
    rows += [req("e-n4", 4, v, key=f"b{i}") for i, v in enumerate([80, 84, 88])]
    s = summarize(rows, CELLS[:2]).set_index("cell_id")
    assert s.loc["e-n4", "independent_speedup"] == pytest.approx(2.0)
    assert pd.isna(s.loc["e-n4", "independent_ci_low"]) and pd.isna(s.loc["e-n4", "independent_ci_high"])
    assert pd.isna(s.loc["e-n4", "independent_verdict"])
    # One zero among eleven: P(median of 11 draws is 0) = P(6+ zeros, p = 1/11) < 0.1%: defined.
    rows = [req("e-n0", 0, v, key=f"a{i}") for i, v in enumerate([0] + list(range(40, 50)))]
    rows += [req("e-n4", 4, v, key=f"b{i}") for i, v in enumerate([80, 84, 88])]
    s = summarize(rows, CELLS[:2]).set_index("cell_id")
    assert s.loc["e-n4", "independent_verdict"] == "faster" and 1 < s.loc["e-n4", "independent_ci_low"]


def test_undefined_intervals_are_none_and_give_no_verdict():
    assert ratio_ci([40, 42], [0, 0, 0]) == (None, None)  # x / 0
    assert ratio_ci([0, 0], [0, 0]) == (None, None)  # 0 / 0
    assert ratio_ci([0, 0], [40, 42]) == (0.0, 0.0)  # a zero numerator is a defined ratio
    for low, high in [(float("nan"), 2.0), (0.5, float("inf")), (float("-inf"), 0.5), (None, 0.9), (0.5, None)]:
        assert verdict(low, high) is None
    assert (verdict(0.5, 0.9), verdict(0.9, 1.1), verdict(1.1, 1.2)) == ("slower", "no clear difference", "faster")


def test_intervals_of_non_negative_rates_have_no_negative_bound():
    rng = np.random.default_rng(7)
    for _ in range(200):
        a = rng.choice([0.0, 0.001, 5.0, 100.0], size=rng.integers(1, 8)) * rng.random()
        b = rng.choice([0.0, 0.001, 5.0, 100.0], size=rng.integers(1, 8)) * rng.random()
        for low, high in (median_ci(a), ratio_ci(a, b)):
            assert (low is None) == (high is None)
            if low is not None:
                assert 0 <= low <= high and np.isfinite(high)


# ---------------------------------------------------------------- --out that cannot be written


def test_compare_and_reference_into_a_file_are_one_error_line(tmp_path):
    run = make_run(tmp_path / "run", [req("e-n0", 0, 40), req("e-n4", 4, 80, key="b")], ENGINES)
    afile = tmp_path / "afile"
    afile.write_text("not a folder")
    for args, target in [(["compare", run, "--out", afile], afile),
                         (["compare", run, "--out", afile / "sub"], afile / "sub"),
                         (["reference", "--out", afile], afile),
                         (["reference", "--out", afile / "sub"], afile / "sub")]:
        result = invoke(*args)
        assert result.exit_code == 1, result.output
        assert result.stderr.splitlines() == [f"Error: cannot write {target}: Not a directory; pass a writable --out"]
    assert afile.read_text() == "not a folder"


def test_cpu_flags_name_the_instruction_sets_and_bad_ones_are_dropped(tmp_path):
    rows = [req("e-n0", 0, 40), req("e-n4", 4, 80, key="b")]
    run = make_run(tmp_path / "run", rows, ENGINES)
    flags = {"avx2": True, "avx512f": False, "amx_tile": False}
    (run / "environment.json").write_text(json.dumps({"cpu": "Test CPU", "cpu_count": 2, "cpu_flags": flags}))
    assert invoke("report", run).exit_code == 0
    assert (run / "report" / "summary.md").read_text().splitlines()[2] == \
        "model: ? · machine: Test CPU (2 cores; AVX2, no AVX-512, no AMX, no GPU)"
    (run / "environment.json").write_text(json.dumps({"cpu": "Test CPU", "cpu_count": 2,
                                                      "cpu_flags": {"avx2": "yes", "avx512f": True}}))
    result = invoke("report", run)
    assert result.exit_code == 0, result.output
    assert warnings_of(result) == [
        f"warning: {run / 'environment.json'}: ignored invalid fields (cpu_flags.avx2 \"yes\": input should be a "
        "valid boolean); the report goes on without them"]
    # what was dropped is unknown, not absent
    assert (run / "report" / "summary.md").read_text().splitlines()[2] == \
        "model: ? · machine: Test CPU (2 cores; AVX-512, no GPU)"
