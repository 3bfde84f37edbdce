"""A run's folder: results/<sweep>-<timestamp>/.

    scenario.toml       the scenario as run (after --set)
    environment.json    orch, engine binaries and versions, CPU, GPU, OS
    requests.jsonl      one line per request (warm-up and measured), flushed as each ends
    cells.jsonl         one line per cell: status, command, endpoint, template, error, log tail
    cells/<cell>/server.log
    summary.csv and the PNG charts
"""

from __future__ import annotations

import json
import os
import warnings
from datetime import datetime
from pathlib import Path

import tomli_w

from .errors import ResultsError

REQUESTS = "requests.jsonl"
CELLS = "cells.jsonl"
SCENARIO = "scenario.toml"
ENVIRONMENT = "environment.json"
SUMMARY = "summary.csv"


class RunDir:
    def __init__(self, path: Path):
        self.path = Path(path)

    @classmethod
    def create(cls, out: Path, sweep_name: str) -> "RunDir":
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        path = Path(out) / f"{sweep_name}-{stamp}"
        suffix = 1
        while path.exists():
            suffix += 1
            path = Path(out) / f"{sweep_name}-{stamp}-{suffix}"
        try:
            path.mkdir(parents=True)
        except OSError as exc:
            raise ResultsError(f"cannot create the run folder {path}: {exc.strerror}; pass a writable --out")
        return cls(path)

    @classmethod
    def latest(cls, out: Path, sweep_name: str) -> "RunDir | None":
        runs = sorted(p for p in Path(out).glob(f"{sweep_name}-*") if (p / SCENARIO).is_file())
        return cls(runs[-1]) if runs else None

    def repair(self) -> list[str]:
        """Before appending to an interrupted run: cut a partial last line a kill left behind, so
        that it does not end up in the middle of the file. Returns what was dropped."""
        notes = []
        for name in (REQUESTS, CELLS):
            path = self.path / name
            if not path.is_file() or path.stat().st_size == 0:
                continue
            data = path.read_bytes()
            if data.endswith(b"\n"):
                continue
            keep = data.rfind(b"\n") + 1
            with open(path, "r+b") as f:
                f.truncate(keep)
            notes.append(f"{name}: dropped a truncated last line ({len(data) - keep} bytes) left by an interrupted run")
        return notes

    def cell_dir(self, cell_id: str) -> Path:
        return self.path / "cells" / cell_id

    def write_scenario(self, data: dict) -> None:
        self._write(SCENARIO, scenario_text(data))

    def read_scenario_text(self) -> str:
        return (self.path / SCENARIO).read_text()

    def write_environment(self, env: dict) -> None:
        self._write(ENVIRONMENT, json.dumps(env, indent=2) + "\n")

    def _write(self, name: str, text: str) -> None:
        try:
            (self.path / name).write_text(text)
        except OSError as exc:
            raise ResultsError(f"cannot write to {self.path}: {exc.strerror}; pass a writable --out")

    def environment(self) -> dict:
        p = self.path / ENVIRONMENT
        return json.loads(p.read_text()) if p.is_file() else {}

    def append_request(self, rec: dict) -> None:
        append_jsonl(self.path / REQUESTS, rec)

    def append_cell(self, rec: dict) -> None:
        append_jsonl(self.path / CELLS, rec)

    def requests(self) -> list[dict]:
        return load_jsonl(self.path / REQUESTS)

    def cells(self) -> list[dict]:
        """The latest record of each cell (a resumed run appends newer ones)."""
        latest: dict[str, dict] = {}
        for rec in load_jsonl(self.path / CELLS):
            latest[rec["cell_id"]] = rec
        return list(latest.values())


def append_jsonl(path: Path, obj: dict) -> None:
    line = json.dumps(obj, ensure_ascii=False, allow_nan=False) + "\n"
    # One write per line and fsync: a kill leaves at most a truncated last line.
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        raise ResultsError(f"cannot write {path}: {exc.strerror}; every line before this one is kept; "
                           "free space and continue with --resume")


def load_jsonl(path: Path) -> list[dict]:
    if not Path(path).is_file():
        return []
    rows, lines = [], Path(path).read_text(encoding="utf-8").splitlines()
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if n == len(lines):
                warnings.warn(f"{path}:{n}: ignoring a truncated last line")
            else:
                raise ValueError(f"{path}:{n}: corrupt JSON line")
    return rows


def scenario_text(data: dict) -> str:
    return tomli_w.dumps(_drop_none(data))


def _drop_none(obj):
    if isinstance(obj, dict):
        return {k: _drop_none(v) for k, v in obj.items() if v is not None}
    if isinstance(obj, list):
        return [_drop_none(v) for v in obj]
    return obj
