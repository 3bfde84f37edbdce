"""The command lines of a shipped scenario's cells, read from `orch sweep --dry-run`, and the flags
and Docker options in them (test_gpu_scenarios, test_sglang_engine)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from click.testing import CliRunner

from orchestrator.cli import cli

SCENARIOS = Path(__file__).parent.parent.parent / "scenarios"


def cells(name: str) -> dict[str, list[str]]:
    result = CliRunner().invoke(cli, ["sweep", str(SCENARIOS / name), "--dry-run"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    return {re.match(r"cell \d+/\d+ (\S+)", a).group(1): shlex.split(b) for a, b in zip(lines[2::2], lines[3::2], strict=False)}


def split(cmd: list[str], image: str) -> tuple[list[str], list[str]]:
    assert cmd[:3] == ["docker", "run", "--rm"]
    i = cmd.index(image)
    return cmd[3:i], cmd[i + 1:]


def flags(argv: list[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for i, tok in enumerate(argv):
        if tok.startswith("-") and not re.fullmatch(r"-\d+", tok):
            nxt = argv[i + 1] if i + 1 < len(argv) else None
            out.setdefault(tok, []).append(nxt if nxt is not None and (not nxt.startswith("-") or
                                                                      re.fullmatch(r"-\d+", nxt)) else "")
    return out


def docker_opts(opts: list[str]) -> dict:
    assert opts[opts.index("--gpus") + 1] == "all" and opts[opts.index("--ipc") + 1] == "host"
    assert re.fullmatch(r"127\.0\.0\.1:\d+:\d+", opts[opts.index("-p") + 1])  # published on loopback only
    assert opts[opts.index("-e") + 1] == "HF_TOKEN"  # by name: the value is never written
    return {"volume": opts[opts.index("-v") + 1]}
