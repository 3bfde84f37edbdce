"""The real llama-server's --help, parsed: what orch's flags are checked against (test_engine_truth,
test_gpu_scenarios, test_placement; the `llama_help` fixture in conftest.py)."""

from __future__ import annotations

import subprocess


def help_options(binary: str) -> tuple[set[str], set[str], set[str]]:
    """(live options, removed options, --spec-type values) as the binary's --help lists them."""
    text = subprocess.run([binary, "--help"], capture_output=True, text=True, timeout=60).stdout
    live, removed, types = set(), set(), set()
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if not line.startswith("-"):
            continue
        # Names fill the first 40 columns and the description starts at column 41; a longer
        # list of names has the whole line to itself.
        head = line[:40] if len(line) > 40 and line[39] == " " else line
        names = {w.rstrip(",") for w in head.split() if w.startswith("-")}
        desc = line[len(head):] + " " + " ".join(lines[i + 1:i + 3])
        (removed if "has been removed" in desc else live).update(names)
        if "--spec-type" in names:
            types = set(head.split()[-1].split(","))
    return live, removed, types
