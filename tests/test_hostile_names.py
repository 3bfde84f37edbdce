"""Names that break the charts: an engine and model name of 320,000 characters with control
characters in it. Drawn whole, one chart was a 31 MB PNG and the report took minutes; the charts
take a short, escaped form (plots/names.py) and the records and CSVs keep the full name."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd

from plots.names import for_charts, short, shortened

from .support.runs import CELLS, make_run, req

NAME = "Wide\x1b[2J model\x07 name " * 20000


def test_short_forms_are_escaped_bounded_and_as_distinct_as_the_names():
    assert short("llamacpp") == "llamacpp" and len(short(NAME)) == 40 and "\x1b" not in short(NAME)
    a, b = NAME + "a", NAME + "b"  # alike at both ends but for one character: still told apart
    forms = shortened([a, b, a])
    assert len(set(forms.values())) == 2 and all(len(f) <= 40 for f in forms.values())
    frame = pd.DataFrame({"engine": [a, b], "n_spec": [0, 4]})
    assert for_charts(frame)["engine"].tolist() == [forms[a], forms[b]] and frame["engine"].tolist() == [a, b]


def test_a_report_of_a_huge_hostile_name_draws_small_charts_and_keeps_the_name_in_the_records(tmp_path):
    rows = [req("e-n0", 0, 10.0, key="p1"), req("e-n4", 4, 12.0, key="p1"),
            req("e-n0", 0, 11.0, key="p2"), req("e-n4", 4, 13.0, key="p2")]
    for r in rows:
        r["engine"] = NAME
    run = make_run(tmp_path / "run", rows, {NAME: {"model": "m" + NAME, "version": "v"}})
    (run / "cells.jsonl").write_text("".join(json.dumps({**c, "engine": NAME}) + "\n" for c in CELLS))
    done = subprocess.run([sys.executable, "-c", "from orchestrator.cli import main; main()", "report", str(run)],
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    pngs = list(run.glob("*.png"))
    assert len(pngs) >= 5 and max(p.stat().st_size for p in pngs) < 500_000
    summary = pd.read_csv(run / "summary.csv")
    assert set(summary["engine"]) == {NAME.replace("\x1b", "\\x1b").replace("\x07", "\\x07")} or \
        len(summary["engine"].iloc[0]) >= len(NAME)  # the full name, escaped as CSV text is
