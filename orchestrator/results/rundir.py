"""A run's folder: results/<sweep>-<timestamp>/.

    scenario.toml       the scenario as run (after --set)
    environment.json    orch, engine binaries and versions, CPU, GPU, OS
    requests.jsonl      one line per request (warm-up and measured), flushed as each ends
    cells.jsonl         one line per cell: status, command, endpoint, template, error, log tail
    cells/<cell>/server.log
    summary.csv and the PNG charts
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
from datetime import datetime
from pathlib import Path

import tomli_w

from orchestrator.common import redact
from orchestrator.common.errors import ResultsError
from orchestrator.results.records import CellRecord, R, RequestRecord, read_environment, read_records

REQUESTS = "requests.jsonl"
CELLS = "cells.jsonl"
SCENARIO = "scenario.toml"
ENVIRONMENT = "environment.json"
SUMMARY = "summary.csv"


RESUME = "continue with --resume"


class RunDir:
    def __init__(self, path: Path, again: str = RESUME):
        self.path = Path(path)
        self.again = again  # how to carry on after a write error: the command's own fix
        # What reading the records back skipped or repaired, one line each (the CLI prints them
        # as `warning: ...`, the report lists them). Records read back are hostile input.
        self.warnings: list[str] = []

    @classmethod
    def create(cls, out: Path, sweep_name: str, again: str = RESUME) -> "RunDir":
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        path = Path(out) / f"{sweep_name}-{stamp}"
        suffix = 1
        while path.exists():
            suffix += 1
            path = Path(out) / f"{sweep_name}-{stamp}-{suffix}"
        try:
            path.mkdir(parents=True)
        except OSError as exc:
            raise ResultsError(f"cannot create the run folder {path}: {why(exc)}; pass a writable --out")
        return cls(path, again)

    @classmethod
    def latest(cls, out: Path, sweep_name: str) -> "RunDir | None":
        """The newest run of exactly this sweep: `rs` must not pick up a run of `rs-big`."""
        mine = re.compile(re.escape(sweep_name) + r"-(\d{8})-(\d{6})(?:-(\d+))?")
        runs = []
        for path in Path(out).glob("*") if Path(out).is_dir() else []:
            m = mine.fullmatch(path.name)
            if m and (path / SCENARIO).is_file():
                runs.append(((m[1], m[2], int(m[3] or 1)), path))
        return cls(max(runs)[1]) if runs else None

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
            (self.path / name).write_text(redact.scrub(text))
        except OSError as exc:
            raise ResultsError(f"cannot write to {self.path}: {why(exc)}; pass a writable --out")

    def environment(self) -> dict:
        """environment.json; {} (and a warning) when it is not a JSON object."""
        env, notes = read_environment(self.path / ENVIRONMENT)
        self._note(notes)
        return env

    def _note(self, notes: list[str]) -> None:
        self.warnings.extend(n for n in notes if n not in self.warnings)

    def append_request(self, rec: dict) -> None:
        append_jsonl(self.path / REQUESTS, rec, self.again)

    def append_cell(self, rec: dict) -> None:
        append_jsonl(self.path / CELLS, rec, self.again)

    def request_records(self) -> list[RequestRecord]:
        return self._load(REQUESTS, RequestRecord)

    def cell_records(self) -> list[CellRecord]:
        """The latest record of each cell (a resumed run appends newer ones)."""
        latest = {rec.cell_id: rec for rec in self._load(CELLS, CellRecord)}
        return list(latest.values())

    def requests(self) -> list[dict]:
        """Validated request records as dicts (every field the analysis reads is present)."""
        return [r.model_dump() for r in self.request_records()]

    def cells(self) -> list[dict]:
        return [c.model_dump() for c in self.cell_records()]

    def _load(self, name: str, model: type[R]) -> list[R]:
        records, notes = read_records(self.path / name, model)  # never raises on bad content
        self._note(notes)
        return records


def why(exc: OSError) -> str:
    """The cause in the system's words (Permission denied, No space left on device, ...)."""
    return exc.strerror or str(exc) or type(exc).__name__


def fix_for(exc: OSError) -> str:
    if exc.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
        return "free space"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "make the folder writable"
    return "fix that"


def append_jsonl(path: Path, obj: dict, again: str = RESUME) -> None:
    obj = redact.scrub_values(obj)
    try:
        line = json.dumps(obj, ensure_ascii=False, allow_nan=False) + "\n"
    except ValueError:  # a NaN or infinity that got past the checks: null, and say where
        line = json.dumps(_finite(obj, bad := []) | {"non_finite_fields": bad}, ensure_ascii=False) + "\n"
    # One write per line and fsync: a kill leaves at most a truncated last line.
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        raise ResultsError(f"cannot write {path}: {why(exc)}; every line before this one is kept; "
                           f"{fix_for(exc)}, then {again}")


def _finite(obj, bad: list, path: str = ""):
    if isinstance(obj, float) and not math.isfinite(obj):
        bad.append(path)
        return None
    if isinstance(obj, dict):
        return {k: _finite(v, bad, f"{path}.{k}" if path else str(k)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v, bad, f"{path}[{i}]") for i, v in enumerate(obj)]
    return obj


def scenario_text(data: dict) -> str:
    return tomli_w.dumps(_drop_none(data))


def _drop_none(obj):
    if isinstance(obj, dict):
        return {k: _drop_none(v) for k, v in obj.items() if v is not None}
    if isinstance(obj, list):
        return [_drop_none(v) for v in obj]
    return obj
