"""What the engines' installers share: orch's cache folder, logged build commands, the one
error an installer raises, and the small interface `orch engines install` calls.

Installers live with their engine (engines/llama_server.py builds llama-server; engines/pyenv.py
makes the virtual environment a Python-package engine runs in). orchestrator.setup turns
InstallFailed into the CLI's InstallError; nothing here imports orchestrator.
"""

from __future__ import annotations

import os
import subprocess
from abc import ABC, abstractmethod
from pathlib import Path


class InstallFailed(Exception):
    """An install step failed; the message is one line naming the log to read."""


class Installer(ABC):
    """One `orch engines install NAME` target."""

    name: str
    # True: it compiles with every core, so `orch setup` runs it beside the steps that download,
    # unpack and convert (which wait on the disk and the network more than on the CPU).
    compiles: bool = False

    @abstractmethod
    def expected(self) -> Path:
        """Where the installed binary (or environment's python) will be."""

    @abstractmethod
    def installed(self) -> Path | None:
        """The installed binary, or None."""

    @abstractmethod
    def install(self, progress=None, jobs: int | None = None) -> tuple[Path, bool]:
        """(binary, made_now); a second call returns at once. `progress` has step(text) and percent(n)."""


def cache_root() -> Path:
    if os.environ.get("ORCH_CACHE"):
        return Path(os.environ["ORCH_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "orch"


def run_logged(cmd: list[str], log_path: Path, on_line=None, env: dict | None = None, append: bool = False) -> None:
    """Run `cmd` with its output in `log_path`; a failure is one line with the log's last lines."""
    with open(log_path, "a" if append else "w") as log, subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env) as proc:
        log.write(f"$ {' '.join(cmd)}\n")
        assert proc.stdout is not None  # stdout=PIPE
        for line in proc.stdout:
            log.write(line)
            if on_line:
                on_line(line)
    if proc.returncode != 0:
        tail = [ln for ln in log_path.read_text().splitlines() if ln.strip()][-5:]
        raise InstallFailed(f"{' '.join(cmd[:4])} failed (exit {proc.returncode}); see {log_path}: {' | '.join(tail)}")


def say(progress, text: str) -> None:
    if progress is not None:
        progress.step(text)


def last_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else "no output"
