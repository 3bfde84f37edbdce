"""A run's folder: results/<sweep>-<timestamp>/.

    run.json            the records' schema version (records.SCHEMA_VERSION) and orch's version
    scenario.toml       the scenario as run (after --set)
    environment.json    orch, engine binaries and versions, CPU, GPU, OS (the host orch ran on)
    nodes/<node>/environment.json   the same, for each Ray node cells ran on (orchestrator/cluster)
    requests.jsonl      one line per request (warm-up and measured), flushed as each ends
    cells.jsonl         one line per cell: status, command, endpoint, template, error, log tail
    cells/<cell>/server.log
    search.jsonl        `orch sweep --search`: one line per step of the depth search (what ran,
                        what runs next, what was skipped and why)
    summary.csv, pairs.csv, model.csv, lossless.csv and the PNG charts (orch report redraws them)
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

from orchestrator import __version__
from orchestrator.common import redact
from orchestrator.common.errors import ResultsError
from orchestrator.results.records import (SCHEMA_VERSION, CellRecord, R, RequestRecord, read_environment,
                                          read_records)

REQUESTS = "requests.jsonl"
CELLS = "cells.jsonl"
SCENARIO = "scenario.toml"
ENVIRONMENT = "environment.json"
SUMMARY = "summary.csv"
PAIRS = "pairs.csv"
SEARCH = "search.jsonl"
TELEMETRY = "telemetry.jsonl"  # in each cell's folder: the samples of its measured windows
MODEL = "model.csv"
BY_CATEGORY = "summary_by_category.csv"  # where the prompts carry categories (analysis/categories.py)
RUN = "run.json"
NODES = "nodes"


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
        run = cls(path, again)
        run.write_schema()
        return run

    def write_schema(self) -> None:
        self._write(RUN, json.dumps({"schema_version": SCHEMA_VERSION, "orch": __version__}) + "\n")

    def schema_version(self) -> int:
        """The records' schema version; 0 for a folder from before run.json (the same fields as 1).
        A folder this orch cannot read is refused with one line saying why."""
        path = self.path / RUN
        if not path.is_file():
            return 0
        try:
            version = json.loads(path.read_bytes().decode("utf-8")).get("schema_version")
        except (OSError, ValueError, AttributeError, RecursionError):
            version = None
        if not isinstance(version, int) or isinstance(version, bool) or version < 0:
            raise ResultsError(f"{path}: no readable schema_version; this folder was not written by orch "
                               "(or run.json was damaged): restore it as {\"schema_version\": "
                               f"{SCHEMA_VERSION}}} if the records are orch's")
        if version > SCHEMA_VERSION:
            raise ResultsError(f"{path}: schema_version {version} is newer than this orch reads "
                               f"({SCHEMA_VERSION}); upgrade orch (pip install -U) to read this run")
        return version

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
        """scenario.toml, with secrets taken out of its strings, not of its text: a secret that
        looks like a number ("1234") must not break the TOML that --resume compares."""
        self._write(SCENARIO, scenario_text(redact.scrub_values(data)), scrubbed=True)

    def read_scenario_text(self) -> str:
        return (self.path / SCENARIO).read_text()

    def write_environment(self, env: dict) -> None:
        self._write(ENVIRONMENT, json.dumps(env, indent=2) + "\n")

    def write_node_environment(self, node: str, env: dict) -> None:
        """A Ray node's environment.json; `node` comes from the cluster, so it is made a safe name."""
        folder = self.path / NODES / node_folder(node)
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ResultsError(f"cannot write to {folder}: {why(exc)}; pass a writable --out")
        self._write(f"{NODES}/{node_folder(node)}/{ENVIRONMENT}", json.dumps(env, indent=2) + "\n")

    def node_environment(self, node: str | None) -> dict:
        """A node's environment.json where the run has one, else the run's own."""
        path = self.path / NODES / node_folder(node) / ENVIRONMENT if node else None
        if path is None or not path.is_file():
            return self.environment()
        env, notes = read_environment(path)
        self._note(notes)
        return env

    def _write(self, name: str, text: str, scrubbed: bool = False) -> None:
        try:
            (self.path / name).write_text(text if scrubbed else redact.scrub(text))
        except OSError as exc:
            raise ResultsError(f"cannot write to {self.path}: {why(exc)}; pass a writable --out")

    def environment(self) -> dict:
        """environment.json; {} (and a warning) when it is not a JSON object."""
        env, notes = read_environment(self.path / ENVIRONMENT)
        self._note(notes)
        return env

    def _note(self, notes: list[str]) -> None:
        self.warnings.extend(n for n in notes if n not in self.warnings)

    def append_request(self, rec: RequestRecord) -> None:
        append_jsonl(self.path / REQUESTS, rec.line(), self.again)

    def append_cell(self, rec: CellRecord) -> None:
        append_jsonl(self.path / CELLS, rec.line(), self.again)

    def append_samples(self, cell_id: str, concurrency: int, rows: list[dict]) -> None:
        """One measured window's telemetry samples (telemetry/sampler.py), after the window ended:
        cells/<cell>/telemetry.jsonl, one line per sample, in one write."""
        folder = self.cell_dir(cell_id)
        text = "".join(json.dumps({"concurrency": concurrency, **_finite(r, [])}) + "\n" for r in rows)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with open(folder / TELEMETRY, "a", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            raise ResultsError(f"cannot write {folder / TELEMETRY}: {why(exc)}; {fix_for(exc)}, then {self.again}")

    def write_server_log(self, cell_id: str, text: str, name: str = "server.log") -> None:
        """cells/<cell>/<name> (server.log, or server.b<k>.log of block k) of a cell whose server
        ran on another node (its tail)."""
        folder = self.cell_dir(cell_id)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            (folder / name).write_text(redact.scrub(text))
        except OSError as exc:
            raise ResultsError(f"cannot write {folder / name}: {why(exc)}; {fix_for(exc)}, then {self.again}")

    def append_search(self, line: dict) -> None:
        append_jsonl(self.path / SEARCH, line, self.again)

    def search_settings(self) -> dict[str, tuple[list[int], int]]:
        """Per engine, the depths and the starts allowed of its depth search, from the newest valid
        line of search.jsonl (hostile: a line without a list of depths and a budget is skipped,
        with a warning); {} for a run that was no search."""
        out: dict[str, tuple[list[int], int]] = {}
        path = self.path / SEARCH
        if not path.is_file():
            return out
        bad = []
        for n, raw in enumerate(path.read_bytes().split(b"\n"), 1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw.decode("utf-8"))
                engine, grid, budget = obj["engine"], obj["grid"], obj["budget"]
                if not (isinstance(engine, str) and engine and isinstance(grid, list) and 0 < len(grid) <= 1000
                        and all(_whole(k) and k < 1 << 20 for k in grid) and 0 in grid and _whole(budget)):
                    raise ValueError("no engine, list of depths and budget")
            except (ValueError, KeyError, TypeError, RecursionError, UnicodeDecodeError):
                bad.append(n)
                continue
            out[engine] = (sorted(set(grid)), budget)
        if bad:
            self._note([f"{path}: skipped {len(bad)} lines without an engine, its depths (0 among them) and its budget "
                        f"(lines {', '.join(map(str, bad[:20]))})"])
        return out

    def request_records(self) -> list[RequestRecord]:
        return self._load(REQUESTS, RequestRecord)

    def cell_records(self) -> list[CellRecord]:
        """The latest record of each cell and block (a resumed run appends newer ones)."""
        latest = {(rec.cell_id, rec.block or 0): rec for rec in self._load(CELLS, CellRecord)}
        return list(latest.values())

    def server_starts(self) -> dict[str, int]:
        """Server starts per engine: each line of cells.jsonl is one cell's server run to its end
        (a resumed cell adds a line, and it started its server again)."""
        starts: dict[str, int] = {}
        for rec in self._load(CELLS, CellRecord):  # warnings are noted once, as for cell_records
            starts[rec.engine] = starts.get(rec.engine, 0) + 1
        return starts

    def _load(self, name: str, model: type[R]) -> list[R]:
        self.schema_version()
        records, notes = read_records(self.path / name, model)  # never raises on bad content
        self._note(notes)
        return records


def node_folder(node: str) -> str:
    """A node's name as one folder name: letters, digits, '.', '_' and '-' only, at most 64."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", node)[:64].lstrip(".")
    return safe or "node"


def _whole(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


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
