"""Does `orch report` write the same files as an older orch did? For each run folder given: a copy
reported by the code at OLD_REF (a git worktree of it) and a copy reported by this tree, in the
same place one after the other (the report names its folder), then every CSV and
report/summary.md compared byte for byte. Prints a line per file and a verdict; exit 1 on a
difference.

    python benchmarks/report_unchanged.py OLD_REF RUN_DIR [RUN_DIR ...]
"""

from __future__ import annotations

import filecmp
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COMPARED = ("*.csv", "report/summary.md")


def report(code: Path, run: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(code), "MPLBACKEND": "Agg"}
    subprocess.run([sys.executable, "-c", "from orchestrator.cli import main; main()", "report", str(run)],
                   env=env, check=True, stdout=subprocess.DEVNULL)


def outputs(run: Path) -> dict[str, Path]:
    return {str(p.relative_to(run)): p for pattern in COMPARED for p in run.glob(pattern)}


def one(old_code: Path, source: Path, scratch: Path) -> bool:
    place, kept = scratch / source.name, scratch / f"{source.name}.old"
    for code, dest in ((old_code, kept), (ROOT, None)):
        shutil.rmtree(place, ignore_errors=True)
        shutil.copytree(source, place, symlinks=True)
        report(code, place)
        if dest is not None:
            shutil.copytree(place, dest)
    old, new = outputs(kept), outputs(place)
    same = True
    for name in sorted(set(old) | set(new)):
        equal = name in old and name in new and filecmp.cmp(old[name], new[name], shallow=False)
        same &= equal
        print(f"  {'same' if equal else 'DIFFERENT'}  {name}")
    return same


def main(ref: str, runs: list[str]) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        old_code = Path(tmp) / "old"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "-q", "--detach", str(old_code), ref], check=True)
        try:
            results = []
            for run in runs:
                print(f"{run}:")
                results.append(one(old_code, Path(run), Path(tmp)))
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(old_code)], check=True)
    print(f"{sum(results)} of {len(results)} run folders: every CSV and summary.md byte for byte the same as {ref} wrote")
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2:]))
