"""The depth search against the full grid, from two run folders of the same scenario and engine.

    python benchmarks/depth_search.py GRID_RUN SEARCH_RUN [--engine NAME]

Prints, side by side: server starts, wall time (first cell's start to last cell's end), the
recommended depth and its measured tok/s, and the grid's best with its 95% interval; then
whether the search's pick lies within that interval, and how well the speedup model predicts
the grid: fitted on all grid cells, and fitted on the search's cells only (the prediction the
search acted on), each depth's predicted tok/s against the grid's measured one.

Make the two runs one after the other on the same machine, e.g.:

    orch sweep scenarios/n_spec-full.toml --engine llamacpp \\
        --set 'engines.llamacpp.speculation.n_spec=[0,2,4,8,12,16,24,32,48,64]'
    orch sweep scenarios/n_spec-full.toml --engine llamacpp --search \\
        --set 'engines.llamacpp.speculation.n_spec=[0,2,4,8,12,16,24,32,48,64]'
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from orchestrator.analysis.model import fit, measured_cells  # noqa: E402
from orchestrator.analysis.search import step  # noqa: E402
from orchestrator.analysis.summary import measured_frame  # noqa: E402
from orchestrator.results.rundir import RunDir  # noqa: E402

WITHIN = 0.15  # the bar: predicted within 15% of measured


def load(path: Path, engine: str | None):
    run = RunDir(path)
    cells = run.cell_records()
    engine = engine or sorted({c.engine for c in cells})[0]
    cells = [c for c in cells if c.engine == engine]
    frame = measured_frame(run.request_records())
    frame = frame[frame["engine"] == engine] if len(frame) else frame
    return run, engine, cells, frame


def wall_s(cells) -> float:
    spans = [(c.started_at, c.started_at + (c.seconds or 0)) for c in cells if c.started_at is not None]
    return max(e for _, e in spans) - min(s for s, _ in spans) if spans else float("nan")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("grid", type=Path)
    ap.add_argument("search", type=Path)
    ap.add_argument("--engine")
    a = ap.parse_args(argv)
    grid_run, engine, grid_cells, grid_df = load(a.grid, a.engine)
    search_run, _, search_cells, search_df = load(a.search, engine)
    settings = search_run.search_settings()
    if engine not in settings:
        print(f"{a.search} holds no depth search of {engine!r} (no search.jsonl line for it)")
        return 2
    depths, budget = settings[engine]
    decision = step(engine, depths, budget, search_df, search_cells)
    grid_m = measured_cells(grid_df, grid_cells)
    search_m = measured_cells(search_df, search_cells)
    print(f"engine {engine}; depths {depths}")
    print(f"{'':28}{'full grid':>16}{'search':>16}")
    print(f"{'server starts':28}{len(grid_cells):>16}{len(search_cells):>16}")
    print(f"{'wall time (min)':28}{wall_s(grid_cells) / 60:>16.1f}{wall_s(search_cells) / 60:>16.1f}")
    ok = True
    for lv in decision.levels:
        conc = lv.concurrency
        g = grid_m.get((engine, conc), {})
        if not g or lv.recommended is None:
            print(f"c={conc}: nothing to compare")
            ok = False
            continue
        best = max(g.values(), key=lambda m: m.tok_s)
        pick = search_m[(engine, conc)][lv.recommended]
        print(f"{f'c={conc} recommended / best':28}{f'n_spec {best.n_spec}':>16}{f'n_spec {lv.recommended}':>16}")
        print(f"{f'c={conc} tok/s (median)':28}{best.tok_s:>16.1f}{pick.tok_s:>16.1f}")
        print(f"{f'c={conc} grid best 95% CI':28}{f'{best.ci_low:.1f}-{best.ci_high:.1f}':>16}")
        inside = best.ci_low <= pick.tok_s <= best.ci_high
        in_grid = g.get(lv.recommended)
        print(f"c={conc}: the search's pick measured {pick.tok_s:.1f} tok/s, "
              + ("inside" if inside else "OUTSIDE") + f" the grid best's interval [{best.ci_low:.1f}-{best.ci_high:.1f}]"
              + (f"; the same depth in the grid: {in_grid.tok_s:.1f} [{in_grid.ci_low:.1f}-{in_grid.ci_high:.1f}]"
                 if in_grid else ""))
        ok &= inside and len(search_cells) <= len(grid_cells) // 2
        for label, source in (("all grid cells", g), ("the search's cells", search_m[(engine, conc)])):
            f = fit(engine, conc, source)
            if f.problem:
                print(f"  model fitted on {label}: {f.problem}")
                continue
            errs = {k: f.predict(k) / m.tok_s - 1 for k, m in sorted(g.items())}
            close = sum(abs(e) <= WITHIN for e in errs.values())
            print(f"  model fitted on {label}: within {WITHIN:.0%} of the grid's measured tok/s at {close} of "
                  f"{len(errs)} depths ({close / len(errs):.0%}); "
                  + ", ".join(f"{k}: {f.predict(k):.1f} vs {g[k].tok_s:.1f} ({e:+.1%})" for k, e in errs.items()))
    print("search: " + ("at most half the starts, and its pick inside the grid best's interval" if ok
                        else "NOT within the bar (see above)"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
