"""The depth search against the full grid, over pairs of run folders of one scenario.

    python benchmarks/depth_search.py GRID_RUN SEARCH_RUN [GRID_RUN SEARCH_RUN ...] [--engine NAME]

For each pair, per concurrency level and prompt set: the grid's answer to "what to run" (its pick
and the depths not told apart from its best: analysis/recommend.py), the search's answer from
its own records by the same rule, and whether the search's pick lies in the grid's set; the
server starts each used (the bar: the search at most half the grid's). Then, over every pair,
how often the pick lay in the set. Make each grid and its search one after the other on the
same machine, with the same blocks, e.g.:

    orch sweep scenarios/n_spec-depths.toml --out results/grid
    orch sweep scenarios/n_spec-depths.toml --search --out results/search
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from orchestrator.analysis.pairs import pair_table  # noqa: E402
from orchestrator.analysis.recommend import what_to_run  # noqa: E402
from orchestrator.analysis.summary import measured_frame, summarize  # noqa: E402
from orchestrator.results.rundir import RunDir  # noqa: E402


def answers(path: Path, engine: str | None):
    run = RunDir(path)
    requests, cells = run.request_records(), run.cell_records()
    engine = engine or sorted({c.engine for c in cells})[0]
    summary = summarize(requests, cells)
    advice = what_to_run(summary, pair_table(measured_frame(requests), cells), run.server_starts())
    return engine, advice[advice["engine"] == engine], run.server_starts().get(engine, 0)


def depths(text) -> set[int]:
    return {int(k) for k in str(text).split(",") if k.strip().isdigit()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", type=Path, nargs="+", help="GRID_RUN SEARCH_RUN, one or more pairs")
    ap.add_argument("--engine")
    a = ap.parse_args(argv)
    if len(a.runs) % 2:
        ap.error("runs come in pairs: GRID_RUN SEARCH_RUN")
    inside = total = 0
    cheap = True
    for grid_path, search_path in zip(a.runs[::2], a.runs[1::2], strict=True):
        engine, grid, grid_starts = answers(grid_path, a.engine)
        _, search, search_starts = answers(search_path, engine)
        print(f"grid {grid_path.name}: {grid_starts} server starts; search {search_path.name}: {search_starts}"
              + ("" if search_starts <= grid_starts // 2 else "  (MORE than half)"))
        cheap &= search_starts <= grid_starts // 2
        for g in grid.itertuples(index=False):
            s = search[(search["concurrency"] == g.concurrency) & (search["prompt_set"] == g.prompt_set)]
            if s.empty:
                print(f"  c={g.concurrency} {g.prompt_set}: the search gave no answer")
                total += 1
                continue
            pick = int(s.iloc[0]["n_spec"])
            hit = pick in depths(g.indistinct)
            inside += hit
            total += 1
            print(f"  c={g.concurrency} {g.prompt_set}: grid n_spec {g.n_spec} (not told apart: {g.indistinct}); "
                  f"search n_spec {pick} (its own set: {s.iloc[0]['indistinct']}): "
                  + ("inside the grid's set" if hit else "OUTSIDE the grid's set"))
    print(f"the search's pick lay in the grid's indistinguishable set in {inside} of {total} answers; "
          + ("every search used at most half the grid's starts" if cheap else "a search used more than half"))
    return 0 if inside == total and cheap else 1


if __name__ == "__main__":
    sys.exit(main())
