"""Results per category, on constructed records whose answer is known: code prompts 2x faster
at n_spec 4 and 1.2x at 8, prose no faster at 4 and slower at 8, spread over two prompt sets that
reuse the same prompt ids (so pairing by set/id is what keeps the twins apart)."""

import pytest
from click.testing import CliRunner

from orchestrator.analysis.categories import category_view, relabel
from orchestrator.cli import cli
from orchestrator.analysis.findings import analyze
from plots.report import write_report

from .support.runs import cells_of, make_run, requests_of, timed

SPEED = {"code": {4: 2.0, 8: 1.2}, "prose": {4: 1.0, 8: 0.8}}
ACCEPT = {"code": 0.8, "prose": 0.2}


def rows_by_category():
    rows = []
    for s in ("a", "b"):
        for i in range(6):
            cat = "code" if i in ({1, 3, 5} if s == "a" else {1, 2, 4}) else "prose"
            tokens, base_s = 30 + 10 * i, 2.0 + i
            rows.append(dict(timed("e-n0", 0, f"p{i}", tokens, base_s, prompt_set=s), category=cat))
            for n, x in SPEED[cat].items():
                wobble = 1 + 0.01 * (i % 3 - 1)  # a little spread, so intervals have width
                rows.append(dict(timed(f"e-n{n}", n, f"p{i}", tokens, base_s / (x * wobble), prompt_set=s),
                                 category=cat, sub_category=f"{cat}-{s}", timings_draft_n=100,
                                 timings_draft_n_accepted=int(100 * ACCEPT[cat])))
    return rows


def view_of(rows):
    cells = [{"cell_id": c, "engine": "e", "method": "ngram-mod" if n else "none", "n_spec": n, "status": "ok"}
             for c, n in (("e-n0", 0), ("e-n4", 4), ("e-n8", 8))]
    return category_view(requests_of(rows), cells_of(cells), {"e": 3})


def test_each_category_gets_its_own_speedup_acceptance_and_depth():
    view = view_of(rows_by_category())
    t = view.table().set_index(["category", "n_spec"])
    for cat, speeds in SPEED.items():
        assert t.loc[(cat, 0), "requests_ok"] == 6
        for n, x in speeds.items():
            assert t.loc[(cat, n), "requests_paired"] == 6
            assert t.loc[(cat, n), "speedup"] == pytest.approx(x, rel=0.011)
            assert t.loc[(cat, n), "acceptance_rate"] == pytest.approx(ACCEPT[cat])
            assert t.loc[(cat, n), "prompt_sets"] == "a, b"
    assert t.loc[("code", 4), "speedup_verdict"] == "faster" and t.loc[("prose", 8), "speedup_verdict"] == "slower"
    picks = {r.prompt_set: r.n_spec for r in view.advice.itertuples()}
    assert picks == {"code": 4, "prose": 0}
    text = view.advice_text().splitlines()
    assert text[0] == "what to run per category (typical paired speedup):"
    assert text[1].startswith("e at c=1 on code (a, b): ngram-mod n_spec 4, 2.00x [")
    assert text[2].startswith("e at c=1 on prose (a, b): no speculation (measured, 3 server starts): "
                              "no depth was shown to be faster")


def test_twins_pair_by_set_and_id_not_by_id_alone():
    recs = relabel(requests_of(rows_by_category()))
    assert {r.prompt_id for r in recs if r.n_spec == 0} == {f"{s}/p{i}" for s in "ab" for i in range(6)}
    # p1 is code in both sets: paired by category and id alone, two n_spec 0 twins would claim it.
    assert view_of(rows_by_category()).pairs["status"].eq("paired").all()


def test_a_run_without_categories_has_no_category_view(tmp_path):
    rows = [{k: v for k, v in r.items() if k not in ("category", "sub_category")} for r in rows_by_category()]
    assert view_of(rows) is None
    run = make_run(tmp_path / "run", rows, {"e": {"kind": "llama-server", "model": "m"}})
    found = analyze(run)
    write_report(found)
    assert found.categories is None and found.section("by-category") is None
    assert not (run / "summary_by_category.csv").exists()
    assert "By category" not in (run / "report" / "summary.md").read_text()
    assert not (run / "speedup_by_category.png").exists()


def test_the_report_and_the_cli_show_categories(tmp_path):
    run = make_run(tmp_path / "run", rows_by_category(), {"e": {"kind": "llama-server", "model": "m"}})
    result = CliRunner().invoke(cli, ["report", str(run)])
    assert result.exit_code == 0, result.output
    assert "what to run per category (typical paired speedup):" in result.output
    assert f"by category: {run / 'summary_by_category.csv'}" in result.output
    assert f"chart:   {run / 'speedup_by_category.png'}" in result.output
    md = (run / "report" / "summary.md").read_text()
    assert "### By category" in md and "| e | 4 | 1 | code | a, b | 6 / 0 |" in md
    assert 'id="by-category"' in (run / "report" / "index.html").read_text()


def test_categories_with_too_few_prompts_are_named_in_one_line():
    # prose keeps one prompt (b/p5): its ratio has no interval, whatever its repeats
    rows = [r for r in rows_by_category() if not (r["category"] == "prose" and r["prompt_id"] in ("p0", "p2", "p3", "p4"))]
    text = view_of(rows).advice_text().splitlines()
    assert len(text) == 3 and text[1].startswith("e at c=1 on code (a, b): ngram-mod n_spec 4")
    assert text[2] == ("no verdict per category (fewer than 2 prompts paired, or no spread to judge, at every "
                       "depth): prose; take more prompts per category (repeats of one prompt do not help)")


def test_a_baseline_measured_before_sets_had_categories_still_pairs():
    # A run resumed across orch versions: its n_spec 0 records carry no category, the later ones do.
    rows = [{k: v for k, v in r.items() if k != "category"} if r["n_spec"] == 0 else r for r in rows_by_category()]
    t = view_of(rows).table().set_index(["category", "n_spec"])
    assert t.loc[("code", 4), "requests_paired"] == 6 and t.loc[("code", 0), "requests_ok"] == 6


def test_a_set_without_categories_is_a_category_of_its_own_not_merged_by_name():
    rows = rows_by_category()
    for r in rows:
        if r["prompt_set"] == "b":
            r.pop("category")
            r["prompt_set"] = "code"  # a set named like a category of set a
    cats = set(view_of(rows).table()["category"])
    assert cats == {"code", "prose", "code (set)"}
