"""A run's folder: results/<sweep>-<timestamp>/.

    run.json            the records' schema version (types.records.SCHEMA_VERSION) and orch's version
    scenario.toml       the scenario as run (after --set)
    environment.json    orch, engine binaries and versions, CPU, GPU, OS (the host orch ran on)
    nodes/<node>/environment.json   the same, for each Ray node cells ran on (sweep/cluster.py)
    requests.jsonl      one line per request (warm-up and measured), flushed as each ends
    cells.jsonl         one line per cell: status, command, endpoint, template, error, log tail
    cells/<cell>/server.log
    search.jsonl        `orch sweep --search`: one line per step of the depth search (what ran,
                        what runs next, what was skipped and why)
    summary.csv, pairs.csv, model.csv, lossless.csv and the PNG charts (orch report redraws them)
    run.lock            held (flock) by the one sweep or --resume writing the folder; it names its pid

A run folder is hostile input too. Nothing is written through a link inside it (common/safefs.py):
a file rewritten whole goes to a temporary file renamed over it, an append opens the file without
following a link, and a link on the way is refused in one line (exit 2). Records are read a line at
a time, each line at most records.MAX_LINE bytes, so a junk file costs no more memory than that.
"""

from __future__ import annotations

import errno
import fcntl
import json
import math
import os
import re
import threading
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Iterator

import tomli_w

from orchestrator import __version__
from orchestrator.common import redact, safefs
from orchestrator.common.errors import OrchError, ResultsError, RunFolderError
from orchestrator.common.show import escape_raw_controls, printable
from orchestrator.results.readback import R, lines_of, read_bounded, read_environment, read_records
from orchestrator.types.records import SCHEMA_VERSION, CellRecord, RequestRecord

if TYPE_CHECKING:
    import pandas as pd  # only for the annotations: writing a run folder needs no pandas

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
LOCK = "run.lock"
SMALL_FILE = 1 << 20  # run.json; scenario.toml is read up to records.MAX_FILE


RESUME = "continue with --resume"
_held: dict[tuple[int, int], list[int]] = {}  # run.lock's (device, inode) -> [descriptor, holders] in this process
_held_guard = threading.Lock()


class RunDir:
    def __init__(self, path: Path, carry_on: str = RESUME):
        self.path = Path(path)
        self.carry_on = carry_on  # how to carry on after a write error: the command's own fix
        # What reading the records back skipped or repaired, one line each (the CLI prints them
        # as `warning: ...`, the report lists them). Records read back are hostile input.
        self.warnings: list[str] = []
        self._lock: tuple[int, int] | None = None  # this object's hold of run.lock (lock())

    @classmethod
    def made_by_orch(cls, path: Path) -> "RunDir":
        """An existing run folder (`orch report`), refused in one line if it holds no records."""
        if not (path / REQUESTS).is_file() and not (path / CELLS).is_file():
            raise OrchError(f"{path} holds no requests.jsonl or cells.jsonl; pass a run folder made by orch sweep")
        return cls(path)

    @classmethod
    def create(cls, out: Path, sweep_name: str, carry_on: str = RESUME) -> "RunDir":
        check_out(out, sweep_name)
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        path = Path(out) / f"{sweep_name}-{stamp}"
        suffix = 1
        try:
            while path.exists():
                suffix += 1
                path = Path(out) / f"{sweep_name}-{stamp}-{suffix}"
            path.mkdir(parents=True)
        except OSError as exc:
            if exc.errno == errno.ENAMETOOLONG:
                raise RunFolderError(f"--out {shown(out)}: {why(exc)} for this filesystem; pass a shorter --out") from exc
            raise ResultsError(f"cannot create the run folder {path}: {why(exc)}; pass a writable --out") from exc
        run = cls(path, carry_on)
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
            version = json.loads(read_bounded(path, SMALL_FILE).decode("utf-8")).get("schema_version")
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
        check_out(out, sweep_name)
        mine = re.compile(re.escape(sweep_name) + r"-(\d{8})-(\d{6})(?:-(\d+))?")
        runs = []
        try:
            for path in Path(out).glob("*") if Path(out).is_dir() else []:
                m = mine.fullmatch(path.name)
                if m and (path / SCENARIO).is_file():
                    runs.append(((m[1], m[2], int(m[3] or 1)), path))
        except OSError as exc:
            raise ResultsError(f"cannot read --out {shown(out)}: {why(exc)}; pass a readable --out") from exc
        return cls(max(runs)[1]) if runs else None

    def lock(self) -> None:
        """Hold the folder for one sweep: a second sweep or --resume of it, from any process, stops
        in one line (exit 2) while this one runs. The kernel drops the lock with its process, a
        killed one too. Taken again in the same process (a test), the hold is shared."""
        try:
            fd = safefs.open_inside(self.path, LOCK, os.O_RDWR | os.O_CREAT)
        except OSError as exc:
            raise ResultsError(f"cannot write {self.path / LOCK}: {why(exc)}; {fix_for(exc)}, then {self.carry_on}") from exc
        st = os.fstat(fd)
        key = (st.st_dev, st.st_ino)
        with _held_guard:
            if key in _held:
                os.close(fd)
                _held[key][1] += 1
                self._lock = key
                return
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pid = os.pread(fd, 32, 0).decode(errors="replace").strip()
                os.close(fd)
                holder = f" (pid {pid})" if pid.isdecimal() else ""
                raise RunFolderError(f"{self.path}: another orch{holder} is running a sweep in this run folder; "
                                     "wait for it to end, or drop --resume to start a new run") from None
            except OSError:  # a filesystem without locks (some network mounts): go on without one
                os.close(fd)
                return
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            _held[key] = [fd, 1]
            self._lock = key

    def unlock(self) -> None:
        key, self._lock = self._lock, None
        if key is None:
            return
        with _held_guard:
            held = _held.get(key)
            if held is not None:
                held[1] -= 1
                if held[1] == 0:
                    del _held[key]
                    os.close(held[0])

    @contextmanager
    def locked(self) -> Iterator[RunDir]:
        """lock(), given back only if the block fails: the caller keeps the hold and unlocks later."""
        self.lock()
        try:
            yield self
        except BaseException:
            self.unlock()
            raise

    def repair(self) -> list[str]:
        """Before appending to an interrupted run: cut a partial last line a kill left behind, so
        that it does not end up in the middle of the file. Returns what was dropped. Reads only
        the file's tail, and never through a link."""
        notes = []
        for name in (REQUESTS, CELLS):
            path = self.path / name
            if not path.is_file():
                continue
            try:
                with os.fdopen(safefs.open_inside(self.path, name, os.O_RDWR), "r+b") as f:
                    size = os.fstat(f.fileno()).st_size
                    f.seek(max(0, size - 1))
                    if size == 0 or f.read(1) == b"\n":
                        continue
                    keep = _last_line_start(f, size)
                    f.truncate(keep)
            except OSError as exc:
                raise ResultsError(f"cannot repair {path}: {why(exc)}; {fix_for(exc)}, then {self.carry_on}") from exc
            notes.append(f"{name}: dropped a truncated last line ({size - keep} bytes) left by an interrupted run")
        return notes

    def cell_dir(self, cell_id: str) -> Path:
        """cells/<cell>/, made where missing; a link on the way is refused (RunFolderError). Where it
        cannot be made, its path: opening the server's log there fails the cell, naming why."""
        try:
            return safefs.ensure_dir(self.path, f"cells/{cell_id}")
        except OSError:
            return self.path / "cells" / cell_id

    def write_scenario(self, data: dict[str, Any]) -> None:
        """scenario.toml, with secrets taken out of its strings, not of its text: a secret that
        looks like a number ("1234") must not break the TOML that --resume compares."""
        self._write(SCENARIO, scenario_text(redact.scrub_values(data)), scrubbed=True)

    def read_scenario_text(self) -> str:
        return read_bounded(self.path / SCENARIO).decode("utf-8")

    def write_environment(self, env: dict[str, Any]) -> None:
        self._write(ENVIRONMENT, json.dumps(env, indent=2) + "\n")

    def write_node_environment(self, node: str, env: dict[str, Any]) -> None:
        """A Ray node's environment.json; `node` comes from the cluster, so it is made a safe name."""
        self._write(f"{NODES}/{node_folder(node)}/{ENVIRONMENT}", json.dumps(env, indent=2) + "\n")

    def node_environment(self, node: str | None) -> dict[str, Any]:
        """A node's environment.json where the run has one, else the run's own."""
        path = self.path / NODES / node_folder(node) / ENVIRONMENT if node else None
        if path is None or not path.is_file():
            return self.environment()
        env, notes = read_environment(path)
        self._note(notes)
        return env

    def _write(self, name: str, text: str, scrubbed: bool = False) -> None:
        try:
            safefs.write_inside(self.path, name, text if scrubbed else redact.scrub(text))
        except OSError as exc:
            raise ResultsError(f"cannot write to {self.path}: {why(exc)}; pass a writable --out") from exc

    def write_file(self, name: str, text: str) -> Path:
        """A file of the report (report/index.html), replaced whole, never through a link; an
        OSError is the caller's to word."""
        safefs.write_inside(self.path, name, text)
        return self.path / name

    def write_csv(self, name: str, frame: pd.DataFrame) -> Path:
        """A table (summary.csv, ...) as pandas writes it, replaced whole, never through a link; its
        text cells (a server's output in lossless.csv) with control characters shown."""
        with safefs.replacing(self.path, name) as f:
            shown_cells(frame).to_csv(f, index=False)
        return self.path / name

    def environment(self) -> dict[str, Any]:
        """environment.json; {} (and a warning) when it is not a JSON object."""
        env, notes = read_environment(self.path / ENVIRONMENT)
        self._note(notes)
        return env

    def _note(self, notes: list[str]) -> None:
        self.warnings.extend(n for n in notes if n not in self.warnings)

    def append_request(self, rec: RequestRecord) -> None:
        append_jsonl(self.path / REQUESTS, rec.line(), self.carry_on)

    def append_cell(self, rec: CellRecord) -> None:
        append_jsonl(self.path / CELLS, rec.line(), self.carry_on)

    def append_samples(self, cell_id: str, concurrency: int, rows: list[dict[str, Any]]) -> None:
        """One measured window's telemetry samples (telemetry/sampler.py), after the window ended:
        cells/<cell>/telemetry.jsonl, one line per sample, in one write."""
        folder = self.cell_dir(cell_id)
        text = "".join(json.dumps({"concurrency": concurrency, **_finite(r, [])}) + "\n" for r in rows)
        try:
            with safefs.open_append(self.path, f"cells/{cell_id}/{TELEMETRY}") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            raise ResultsError(f"cannot write {folder / TELEMETRY}: {why(exc)}; {fix_for(exc)}, then {self.carry_on}") from exc

    def write_server_log(self, cell_id: str, text: str, name: str = "server.log") -> None:
        """cells/<cell>/<name> (server.log, or server.b<k>.log of block k) of a cell whose server
        ran on another node (its tail)."""
        folder = self.cell_dir(cell_id)
        try:
            safefs.write_inside(self.path, f"cells/{cell_id}/{name}", redact.scrub(text))
        except OSError as exc:
            raise ResultsError(f"cannot write {folder / name}: {why(exc)}; {fix_for(exc)}, then {self.carry_on}") from exc

    def append_search(self, line: dict[str, Any]) -> None:
        append_jsonl(self.path / SEARCH, line, self.carry_on)

    def search_settings(self) -> dict[str, tuple[list[int], int, int | None, int]]:
        """Per engine, the depths, the climb's starts allowed, the whole search's (None where the
        line has none: a one-block search or an older orch) and the blocks of its depth search, from
        the newest valid line of search.jsonl (hostile: a line without a list of depths and a budget
        is skipped, with a warning); {} for a run that was no search."""
        out: dict[str, tuple[list[int], int, int | None, int]] = {}
        path = self.path / SEARCH
        if not path.is_file():
            return out
        bad: list[int] = []  # the first 20 line numbers
        skipped = 0  # and how many
        for n, raw in lines_of(path):
            try:
                if raw is None:
                    raise ValueError("longer than a line orch writes")
                obj = json.loads(raw.decode("utf-8"))
                engine, grid, budget = obj["engine"], obj["grid"], obj["budget"]
                if not (isinstance(engine, str) and engine and isinstance(grid, list) and 0 < len(grid) <= 1000
                        and all(_whole(k) and k < 1 << 20 for k in grid) and 0 in grid and _whole(budget)):
                    raise ValueError("no engine, list of depths and budget")
            except (ValueError, KeyError, TypeError, RecursionError, UnicodeDecodeError):
                skipped += 1
                bad += [n] if len(bad) < 20 else []
                continue
            allowed, blocks = obj.get("allowed"), obj.get("blocks", 1)
            allowed = allowed if _whole(allowed) and allowed < 1 << 20 else None  # an odd one: said as before
            blocks = blocks if _whole(blocks) and 0 < blocks <= 1000 else 1
            out[printable(engine)] = (sorted(set(grid)), budget, allowed, blocks)  # as the records' names are read back
        if bad:
            self._note([f"{path}: skipped {skipped} lines without an engine, its depths (0 among them) and its budget "
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


def shown_cells(frame: pd.DataFrame) -> pd.DataFrame:
    """`frame` with each text cell that holds a control character or a line break as
    common.show.printable writes it: CSV has no escapes of its own, and `cat` must obey none."""
    out = frame
    for col in frame.columns:
        if frame[col].dtype.kind in "iufcbmM":  # numbers, booleans and times hold no text
            continue
        shown = frame[col].map(lambda v: printable(v) if isinstance(v, str) else v)
        if not shown.equals(frame[col]):
            out = out.copy() if out is frame else out
            out[col] = shown
    return out


def check_out(out: Path, sweep_name: str) -> None:
    """--out, and the run folder's name in it, within what the filesystem takes: one line that
    names the option and the fix, not a traceback from deep inside."""
    for part in Path(out).parts:
        if safefs.too_long(part):
            raise RunFolderError(f"--out {shown(out)}: a folder name of {len(os.fsencode(part))} bytes, more than "
                                 f"the {safefs.NAME_MAX} a name may have; pass a shorter --out")
    name = f"{sweep_name}-YYYYmmdd-HHMMSS-NN"
    if safefs.too_long(name):
        raise RunFolderError(f"the run folder's name ({shown(name)}) would be {len(os.fsencode(name))} bytes, more "
                             f"than the {safefs.NAME_MAX} a name may have; shorten the scenario's name")
    room = 2 * safefs.NAME_MAX  # cells/<cell>/server.log below the run folder
    if len(os.fsencode(os.path.abspath(out))) + len(name) + room > safefs.PATH_MAX:
        raise RunFolderError(f"--out {shown(out)}: too long a path for the files of a run under it (at most "
                             f"{safefs.PATH_MAX} bytes in all); pass a shorter --out")


def shown(value: object) -> str:
    """A name as an error line shows it: a long one cut in the middle."""
    text = str(value)
    return text if len(text) <= 80 else f"{text[:40]}...{text[-20:]} ({len(text)} characters)"


def _last_line_start(f: IO[bytes], end: int) -> int:
    """Where the file's last line begins (just after its last newline; 0 if none), found by
    reading back from `end` in blocks: a 2 GB last line costs no more memory than a block."""
    pos = end
    while pos > 0:
        step = min(1 << 16, pos)
        f.seek(pos - step)
        hit = f.read(step).rfind(b"\n")
        if hit >= 0:
            return pos - step + hit + 1
        pos -= step
    return 0


def node_folder(node: str) -> str:
    """A node's name as one folder name: letters, digits, '.', '_' and '-' only, at most 64."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", node)[:64].lstrip(".")
    return safe or "node"


def _whole(v: object) -> bool:
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


def append_jsonl(path: Path, obj: dict[str, Any], carry_on: str = RESUME) -> None:
    obj = redact.scrub_values(obj)
    try:
        line = json.dumps(obj, ensure_ascii=False, allow_nan=False) + "\n"
    except ValueError:  # a NaN or infinity that got past the checks: null, and say where
        bad: list[str] = []
        line = json.dumps(_finite(obj, bad) | {"non_finite_fields": bad}, ensure_ascii=False) + "\n"
    line = escape_raw_controls(line)  # a server's C1 escapes as \u009b: `tail` of the file obeys none
    # One write per line and fsync: a kill leaves at most a truncated last line. Never through a link.
    try:
        with safefs.open_append(path.parent, path.name) as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        raise ResultsError(f"cannot write {path}: {why(exc)}; every line before this one is kept; "
                           f"{fix_for(exc)}, then {carry_on}") from exc


def _finite(obj: Any, bad: list[str], path: str = "") -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        bad.append(path)
        return None
    if isinstance(obj, dict):
        return {k: _finite(v, bad, f"{path}.{k}" if path else str(k)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v, bad, f"{path}[{i}]") for i, v in enumerate(obj)]
    return obj


def scenario_text(data: dict[str, Any]) -> str:
    return escape_raw_controls(tomli_w.dumps(_drop_none(data)))  # C1 as \u009b, as for the records


def _drop_none(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _drop_none(v) for k, v in obj.items() if v is not None}
    if isinstance(obj, list):
        return [_drop_none(v) for v in obj]
    return obj
