"""The sweep: one server per cell (engine x n_spec), warm-up, measured requests, stop."""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import os
import time
import traceback
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import AbstractSet, Protocol

from engines import ENGINES, Engine
from engines.installing import cache_root

from orchestrator.analysis.search import Decision, climb_budget, confirm_depths, ranked_depths, step
from orchestrator.analysis.stats import narrow_enough
from orchestrator.analysis.summary import measured_frame, summarize
from orchestrator.measure import server_metrics
from orchestrator.common import probe
from orchestrator.common import redact, safefs
from orchestrator.common.credentials import KeyProblem, auth_fix, bearer
from orchestrator.measure.driver import ENDPOINTS, RequestSpec, request_body, run_batch
from orchestrator.common.errors import AuthRefused, InstallError, OrchError, ResultsError, ServerError
from orchestrator.launch.launchers import LAUNCHERS, command_text, free_port, log_tail
from orchestrator.launch.shared import owner_labels
from orchestrator.setup.models import planned_model, resolve_model
from engines.plan import ResolvedModel, ServerPlan
from orchestrator.measure.prompts import WARMUP, Prompt, load_prompt_set
from orchestrator.types.records import CellPlacement, CellRecord, Measured, RequestRecord, Roofline
from orchestrator.results.rundir import RunDir, why
from orchestrator.sweep.environment import cpu_flags, gpus
from orchestrator.sweep.placement import Device, place
from orchestrator.telemetry import CellTelemetry
from orchestrator.telemetry.roofline import roofline_for
from orchestrator.types.scenario import EngineSpec, Scenario, cell_id


@dataclass(frozen=True)
class Cell:
    """One server start: an engine at one depth, in one block (workload.blocks)."""

    engine: EngineSpec
    n_spec: int
    block: int = 0

    @property
    def method(self) -> str:
        return self.engine.speculation.method if self.n_spec else "none"

    @property
    def id(self) -> str:
        return cell_id(self.engine.name, self.method, self.n_spec)

    @property
    def log_name(self) -> str:
        """The server's log in the cell's folder, one per block."""
        return f"server.b{self.block}.log" if self.block else "server.log"


def plan_cells(scenario: Scenario) -> list[Cell]:
    """Every server start of the sweep, in the order they run. One block: engine by engine, depth
    by depth, as listed. Several: each block starts every cell once in an order drawn from the
    workload's seed, except that each engine's n_spec 0 opens the first block and closes the last,
    so the baseline is measured at the start and the end of the run (analysis/drift.py)."""
    cells = [Cell(e, n) for e in scenario.engines for n in e.speculation.n_spec]
    blocks = scenario.workload.blocks
    if blocks == 1:
        return cells
    out: list[Cell] = []
    for b in range(blocks):
        order = [Cell(c.engine, c.n_spec, b) for c in cells]
        random.Random(f"{scenario.workload.seed}/block/{b}").shuffle(order)
        base = [c for c in order if c.n_spec == 0]
        rest = [c for c in order if c.n_spec != 0]
        order = base + rest if b == 0 else (rest + base if b == blocks - 1 else order)
        out += order
    return out


@dataclass
class Prepared:
    """What every cell of one engine needs: resolved once, before any server starts."""

    engine: Engine
    model: ResolvedModel
    draft: ResolvedModel | None
    not_ready: tuple[str, ...] = ()  # a dry run before `orch setup`: what it has not made yet


def prepare(scenario: Scenario, base_dir: Path, need_binaries: bool = True) -> dict[str, Prepared]:
    """Each engine's binary checked, its models resolved. need_binaries=False is a dry run: nothing
    need be installed or prepared yet, and what is not is listed in Prepared.not_ready."""
    prepared = {}
    for spec in scenario.engines:
        engine = ENGINES[spec.kind](spec)
        redact.remember_url(spec.url)
        if need_binaries:
            try:
                bearer(spec.api_key_env)
            except KeyProblem as exc:
                raise InstallError(f"engine {spec.name!r}: {exc}") from exc
        if need_binaries and spec.launcher == "docker":
            from orchestrator.launch.docker import client_for

            assert spec.docker is not None  # EngineSpec's validator: launcher "docker" has a docker table
            client_for(spec.docker.docker_host)  # unreachable: one line naming DOCKER_HOST, nothing started
        elif need_binaries and engine.needs_binary:
            _check_binary(spec, engine)
        prepared[spec.name] = _resolve(spec, engine, base_dir, need_binaries)
    return prepared


def _resolve(spec: EngineSpec, engine: Engine, base_dir: Path, need_binaries: bool) -> Prepared:
    fmt, draft = engine.model_format, spec.speculation.draft_model
    if not engine.resolves_model:
        return Prepared(engine, ResolvedModel(spec.model, hf_ref=spec.model), None,
                        () if need_binaries else _not_installed(spec, engine))
    if need_binaries:
        return Prepared(engine, resolve_model(spec.model, base_dir, fmt),
                        resolve_model(draft, base_dir, fmt) if draft else None)
    model, missing = planned_model(spec.model, base_dir, fmt)
    drafted, draft_missing = planned_model(draft, base_dir, fmt) if draft else (None, None)
    return Prepared(engine, model, drafted, tuple(dict.fromkeys(
        m for m in (*_not_installed(spec, engine), missing, draft_missing) if m)))


def _not_installed(spec: EngineSpec, engine: Engine) -> tuple[str, ...]:
    local = engine.needs_binary and spec.launcher == "process"
    return (f"{spec.kind} is not installed yet",) if local and engine.binary() is None else ()


def engine_env(runner: "Sweep") -> dict:
    """environment.json's engines: each engine's binary, version and model, as resolved here."""
    return {name: {"kind": p.engine.kind, "binary": p.engine.binary(), "version": p.engine.version(),
                   "model": p.model.label, "model_path": str(p.model.path) if p.model.path else None}
            for name, p in runner.prepared.items()}


def _check_binary(spec: EngineSpec, engine: Engine) -> None:
    binary = engine.binary()
    if binary is None:
        raise InstallError(f"engine {spec.name!r}: {spec.kind} not found on PATH or in orch's cache; "
                           f"run `{engine.install_hint}` or set binary = \"/path/to/{spec.kind}\"")
    if not os.access(binary, os.X_OK):
        raise InstallError(f"engine {spec.name!r}: binary {binary} does not exist or is not executable; "
                           f"fix engines.binary or run `{engine.install_hint}`")


def command_for(cell: Cell, prep: Prepared, parallel: int, port: int | None = None,
                config_dir: Path | None = None) -> ServerPlan:
    """The cell's server plan; `config_dir`: where its engine's config files go (the cell's
    config/ folder), where it writes any."""
    return prep.engine.plan(cell.n_spec, prep.model, port or free_port(), parallel, prep.draft, config_dir)


def write_config_files(plan: ServerPlan, cell_dir: Path) -> None:
    """The engine's config files, into the cell's config/ folder (planned as plan.config_dir)
    before its server starts; a link planted there is refused (RunFolderError), not followed."""
    for f in plan.files:
        safefs.write_inside(cell_dir, f"config/{f.name}", f.text)


class CellOutput(Protocol):
    """What run_cell writes through: Output below, or sweep/parallel.py's Relay."""

    def cell_dir(self, cell_id: str) -> Path: ...
    def request(self, rec: RequestRecord) -> None: ...
    def samples(self, cell_id: str, concurrency: int, rows: list[dict]) -> None: ...
    def cell(self, rec: CellRecord) -> None: ...
    def phase(self, text: str) -> None: ...
    def warn(self, text: str) -> None: ...
    def serving(self, cell_id: str, server) -> None: ...


class Output:
    """Where one cell's records and words go: straight into the run folder and the progress
    display when cells run one at a time; sweep/parallel.py's Relay has the same methods and hands
    them to the sweep's one writer."""

    def __init__(self, run: RunDir, progress):
        self.run, self.progress = run, progress

    def cell_dir(self, cell_id: str) -> Path:
        return self.run.cell_dir(cell_id)

    def request(self, rec: RequestRecord) -> None:
        self.run.append_request(rec)
        self.progress.request_done(rec)

    def samples(self, cell_id: str, concurrency: int, rows: list[dict]) -> None:
        self.run.append_samples(cell_id, concurrency, rows)

    def cell(self, rec: CellRecord) -> None:
        self.run.append_cell(rec)

    def phase(self, text: str) -> None:
        self.progress.phase(text)

    def warn(self, text: str) -> None:
        self.progress.warn(text)

    def serving(self, cell_id: str, server) -> None:
        """The cell's server is up (a parallel sweep stops it from another thread on Ctrl-C)."""


class Sweep:
    """Resolves engines, binaries and models at construction, so nothing starts if one is missing."""

    def __init__(self, scenario: Scenario, base_dir: Path, progress, prompts: list[Prompt] | None = None):
        """`prompts`: the workload's prompts as loaded already (on a Ray node: by the orch process)."""
        self.scenario, self.workload, self.progress, self.base_dir = scenario, scenario.workload, progress, base_dir
        self.run_name = ""  # the run folder's name, for the owner labels of containers
        self.prompts: list[Prompt] = prompts if prompts is not None else [
            p for ref in self.workload.prompts for p in load_prompt_set(ref, base_dir)]
        self.parallel = max(self.workload.concurrency)
        self.prepared = prepare(scenario, base_dir)
        self.host = (cpu_flags(), gpus())  # for the engines' host_warnings
        self._rooflines: dict[str, Roofline] = {}

    def execute(self, run: RunDir) -> list[CellRecord]:
        """Run every cell not already done in `run`; return the cell records written."""
        self.run_name = run.path.name
        order = [(c.id, c.block) for c in plan_cells(self.scenario)]
        records = []
        for cell, todo in self.cells_to_run(run):
            self.progress.cell_started(order.index((cell.id, cell.block)) + 1, len(order), self._label(cell), len(todo))
            rec = self.run_cell(cell, todo, Output(run, self.progress))
            records.append(rec)
            self.progress.cell_finished(rec.status, rec.error or rec.prompt_check or "")
        return records

    def cells_to_run(self, run: RunDir, block: int | None = None) -> list[tuple[Cell, list[RequestSpec]]]:
        """Every cell not already done in `run` (in one block, if given), with the measured
        requests it still needs."""
        done_cells = {(c.cell_id, c.block or 0) for c in run.cell_records() if c.status == "ok"}
        done_keys = {(r.cell_id, r.key) for r in run.request_records() if r.phase == "measured" and r.ok}
        return [(cell, [s for s in self.measured_specs(cell.block) if (cell.id, s.key) not in done_keys])
                for cell in plan_cells(self.scenario)
                if (cell.id, cell.block) not in done_cells and block in (None, cell.block)]

    def search(self, run: RunDir, budgets: dict[str, int]) -> list[CellRecord]:
        """The depth search (analysis/search.py), engine by engine: decide from the records so far,
        log the decision in search.jsonl, start the one cell it asks for, until it stops. With
        workload.blocks >= 2 the climb runs in block 0 on half the starts, and the rest confirm
        its best depths in block 1 (search.confirm_depths); what to run then judges every record
        with the grid's rule. A resumed search decides from the records it finds, so it carries
        on where it stopped; a cell that did not end ok before the resume runs again."""
        self.run_name = run.path.name
        self._ran: set[str] = set()
        records = []
        blocks = self.workload.blocks
        for spec in self.scenario.engines:
            budget = budgets[spec.name]
            climb = climb_budget(budget, blocks)
            while True:
                decision = replace(search_step(run, spec, climb, self._ran), allowed=budget, blocks=blocks)
                run.append_search(decision.line())
                if not decision.next:
                    break
                records.append(self._search_cell(run, Cell(spec, decision.next[0]), decision.starts + 1, budget))
            if blocks >= 2:
                records += self._confirm(run, spec, budget)
        return records

    def _confirm(self, run: RunDir, spec: EngineSpec, budget: int) -> list[CellRecord]:
        done = {(c.cell_id, c.block or 0) for c in run.cell_records() if c.engine == spec.name and c.status == "ok"}
        starts = run.server_starts().get(spec.name, 0)
        summary = summarize(run.request_records(), run.cell_records())
        mine = summary[(summary["engine"] == spec.name) & (summary["n_spec"] > 0)].dropna(subset=["speedup"])
        todo = [Cell(spec, k, 1) for k in confirm_depths(ranked_depths(mine), budget - starts, spec.speculation.n_spec)]
        return [self._search_cell(run, cell, starts + i + 1, budget) for i, cell in enumerate(todo)
                if (cell.id, 1) not in done]

    def _search_cell(self, run: RunDir, cell: Cell, number: int, budget: int) -> CellRecord:
        done = {r.key for r in run.request_records() if r.cell_id == cell.id and r.phase == "measured" and r.ok}
        todo = [s for s in self.measured_specs(cell.block) if s.key not in done]
        self.progress.cell_started(number, budget, self._label(cell), len(todo))
        rec = self.run_cell(cell, todo, Output(run, self.progress))
        self._ran.add(cell.id)
        self.progress.cell_finished(rec.status, rec.error or rec.prompt_check or "")
        return rec

    def measured_specs(self, block: int = 0) -> list[RequestSpec]:
        return [RequestSpec(p, "measured", c, r, block)
                for c in self.workload.concurrency
                for r in range(self.workload.repeats)
                for p in self.prompts]

    def warmup_specs(self, block: int = 0) -> list[RequestSpec]:
        return [RequestSpec(WARMUP[i % len(WARMUP)], "warmup", 1, i, block) for i in range(self.workload.warmup)]

    def _label(self, cell: Cell) -> str:
        """The cell as progress names it: its id, and its block where there are several."""
        blocks = self.workload.blocks
        return f"{cell.id} (block {cell.block + 1}/{blocks})" if blocks > 1 else cell.id

    def run_cell(self, cell: Cell, todo: list[RequestSpec], out: CellOutput, device: Device | None = None,
                 placement: CellPlacement | None = None) -> CellRecord:
        """Run one cell (on `device`, where the sweep has them) and append its record to `out`,
        whatever happens to it; only a failure to write records (ResultsError) or an interrupt
        leaves here as an exception."""
        prep = self.prepared[cell.engine.name]
        started = time.monotonic()
        rec = CellRecord(cell_id=cell.id, engine=cell.engine.name, kind=cell.engine.kind,
                         launcher=cell.engine.launcher, method=cell.method, n_spec=cell.n_spec,
                         status="running", started_at=round(time.time(), 3))
        if self.workload.blocks > 1:
            rec.set(block=cell.block)
        if placement is not None:
            rec.set(placement=placement)
        try:
            self._serve(cell, prep, rec, todo, started, out, device)
        except (KeyboardInterrupt, SystemExit):
            rec.set(status="interrupted", error="interrupted", seconds=round(time.monotonic() - started, 3))
            out.cell(rec)
            raise
        except ResultsError:
            raise  # the records themselves cannot be kept
        except Exception as exc:  # noqa: BLE001 - one cell's failure, of any kind, must not end the sweep
            rec.set(**_failed(exc, cell.engine))
        rec.set(seconds=round(time.monotonic() - started, 3))
        out.cell(rec)
        return rec

    def _serve(self, cell: Cell, prep: Prepared, rec: CellRecord, todo: list[RequestSpec], started: float,
               out: CellOutput, device: Device | None) -> None:
        cell_dir = out.cell_dir(cell.id)
        plan = place(command_for(cell, prep, self.parallel, config_dir=cell_dir / "config"), device, prep.engine)
        write_config_files(plan, cell_dir)
        if plan.container is not None:
            plan.container.labels.update(owner_labels(self.scenario.name, cell.id, self.run_name))
        rec.set(**self._cell_base(cell, prep, plan))
        for note in prep.engine.host_warnings(*self.host):
            out.warn(note)
        log = cell_dir / cell.log_name
        marks = {"start": started}  # where the cell's wall time goes: see _phases
        headers = bearer(cell.engine.api_key_env)
        with LAUNCHERS[cell.engine.launcher](plan, log, cell.engine.ready_timeout_s) as server:
            marks["launched"] = time.monotonic()
            out.serving(cell.id, server)
            rec.set(ready_s=round(server.wait_ready(headers), 3))
            marks["ready"] = time.monotonic()
            rec.set(**server.describe())
            rec.set(template=self._template(cell, server.base_url, headers))
            tele = self._telemetry(server, out)
            try:
                sampled = tele if self.scenario.telemetry.enabled else None
                results, windows, repeats, costs = self._drive(cell, server, todo, marks, headers, out, sampled)
                # after the windows: a remote container's GPU names come with its first readings
                rec.set(roofline=self._roofline(cell, prep, tele))
            finally:
                if tele is not None:
                    tele.close()
            rec.set(server_metrics=windows, **_judge(results, todo, server.alive(), cell.engine))
            if costs:
                rec.set(telemetry=costs)
            if repeats:
                rec.set(repeats=repeats)
            if rec.status != "ok":
                rec.set(log_tail=log_tail(log))
            marks["driven"] = time.monotonic()
        marks["stopped"] = time.monotonic()
        rec.set(phases=_phases(marks))

    def _telemetry(self, server, out: CellOutput) -> CellTelemetry | None:
        """The cell's telemetry sources, or None where they failed to open (said once as a
        warning; telemetry never fails a cell). Opened even with telemetry off: the roofline
        asks them which GPUs the server has."""
        try:
            return CellTelemetry(server.watch(), self.scenario.telemetry.interval_s)
        except Exception as exc:  # noqa: BLE001 - e.g. a broken NVML install: measure without it
            out.warn(f"telemetry off for this cell: {type(exc).__name__}: {str(exc)[:160]}")
            return None

    def _roofline(self, cell: Cell, prep: Prepared, tele: CellTelemetry | None) -> Roofline:
        """The engine's decode limit, kept for its later cells once found (the GGUF's tensor
        table is cached too); never an error that fails the cell."""
        if cell.engine.name in self._rooflines:
            return self._rooflines[cell.engine.name]
        r = cell.engine.roofline
        names = list(tele.gpu_names.values()) if tele else []
        try:
            found = roofline_for(prep.model.path, names, cache_root(), r.weight_gb, r.bandwidth_gb_s, r.gpu,
                                 on_host_cpu=bool(tele and tele.on_host_cpu))
        except Exception as exc:  # noqa: BLE001 - an unreadable cache or model file: the limit is unknown
            found = Roofline(unknown=f"roofline not found: {type(exc).__name__}: {str(exc)[:160]}")
        if found.limit_tok_s:
            self._rooflines[cell.engine.name] = found
        return found

    def _cell_base(self, cell: Cell, prep: Prepared, plan) -> dict:
        return dict(model=prep.model.label, api=cell.engine.api, argv=plan.argv, command=command_text(plan),
                    endpoint=ENDPOINTS[cell.engine.api], cache=prep.engine.cache_setting(self.workload))

    def _drive(self, cell: Cell, server, todo: list[RequestSpec], marks: dict,
               headers: dict, out: CellOutput, tele: CellTelemetry | None = None) -> tuple[list[RequestRecord], dict, dict, dict]:
        """Warm-up, then the measured requests per concurrency level; returns the measured
        records, the /metrics deltas of each level's window, and (with workload.target_ci) the
        repeats each level took. `headers` carry the API key. With `tele`, each level's window
        is sampled: its samples go to the cell's telemetry.jsonl, and its figures are returned
        last, by concurrency level."""
        batches = _Batches(self, cell, server.base_url, headers, out)
        batches.alive = server.alive
        engine = self.prepared[cell.engine.name].engine
        prefix, counters, path = engine.metrics_prefix, engine.metric_counters, engine.metrics_path
        costs = {}
        warm = self.warmup_specs(cell.block)
        if warm:
            out.phase("warm-up")
            _raise_if_refused(batches.send(warm, 1))
        marks["warmed"] = time.monotonic()
        results: list[RequestRecord] = []
        windows, measuring = {}, 0.0
        for conc in self.workload.concurrency:
            out.phase(f"measuring, concurrency {conc}")
            before = server_metrics.scrape(server.base_url, headers, prefix, counters, path)
            t0 = time.monotonic()
            planned = [s for s in todo if s.concurrency == conc]
            with tele.window() if tele else nullcontext() as samples:
                level = batches.send(planned, conc)
                if planned:  # a level a resumed cell had finished took its repeats then
                    level += self._until_narrow(batches, conc, level)
            if tele is not None and level:
                costs.update(self._keep_window(cell, conc, tele, samples, level, out))
            results += level
            measuring += time.monotonic() - t0
            window = server_metrics.delta(before, server_metrics.scrape(server.base_url, headers, prefix, counters, path))
            if window is not None:
                windows[str(conc)] = window
            if not server.alive() or _refused(results):
                break
        marks["measuring_s"] = measuring
        return results, windows, batches.repeats, costs

    def _keep_window(self, cell: Cell, conc: int, tele: CellTelemetry, samples, level: list[RequestRecord],
                     out: CellOutput) -> dict:
        """The window's samples written, and {level: its figures} ({} where they cannot be made)."""
        spans = {r.key: (r.t_start, r.t_end) for r in level if r.t_start is not None and r.t_end is not None}
        out.samples(cell.id, conc, samples.rows)  # the raw samples are kept whatever follows
        try:
            return {str(conc): tele.summarize(samples, spans)}
        except ValueError as exc:  # a reading out of range (pydantic's ValidationError is one): said, not fatal
            out.warn(f"{cell.id}: telemetry of concurrency {conc} not summarized: {str(exc)[:200]}")
            return {}

    def _until_narrow(self, batches: "_Batches", conc: int, level: list[RequestRecord]) -> list[RequestRecord]:
        """With workload.target_ci: more repeats of every prompt, one at a time, until the median's
        interval is narrow enough or the cap is reached; the cell record says how many it took."""
        w = self.workload
        more: list[RequestRecord] = []
        repeats = w.repeats
        while w.target_ci is not None and repeats < w.repeat_cap and not _narrow(level + more, w.target_ci,
                                                                                   len(self.prompts)):
            if _refused(level + more) or not batches.server_alive():
                break
            batch = batches.send([RequestSpec(p, "measured", conc, repeats, batches.cell.block)
                                  for p in self.prompts], conc)
            more += batch
            repeats += 1
            if not any(r.ok for r in batch):
                break  # every request of a repeat failed: more of them would measure nothing
        if w.target_ci is not None:
            batches.repeats[str(conc)] = repeats
        return more

    def _template(self, cell: Cell, base_url: str, headers: dict) -> str:
        if cell.engine.api == "completions":
            return "none: raw prompt to /v1/completions"
        path = self.prepared[cell.engine.name].engine.props_path
        if path is None:
            return "unknown (the engine reports no settings)"
        try:
            props = json.loads(probe.get(base_url, path, headers))
        except (probe.ProbeFailed, ValueError, RecursionError):
            return f"unknown (no {path})"
        tpl = props.get("chat_template") if isinstance(props, dict) else None
        if not isinstance(tpl, str):
            return f"unknown (no chat_template in {path})"
        first = tpl.strip().splitlines()[0][:60] if tpl.strip() else ""
        return f"server chat template sha1:{hashlib.sha1(tpl.encode(errors='replace')).hexdigest()[:12]} {first!r}"


def search_step(run: RunDir, spec: EngineSpec, budget: int, ran: AbstractSet[str] = frozenset()) -> Decision:
    """The search's next step for one engine from the run's records; a cell that failed before a
    resume (not in `ran`) is started again, once."""
    return step(spec.name, spec.speculation.n_spec, budget, measured_frame(run.request_records()),
                run.cell_records(), set(ran), run.server_starts().get(spec.name, 0))


class _Batches:
    """Sends one cell's requests with its engine's settings and writes each request's record,
    stamped with its cell, as it ends."""

    def __init__(self, sweep: Sweep, cell: Cell, base_url: str, headers: dict, out: CellOutput):
        self.sweep, self.cell, self.base_url, self.headers, self.out = sweep, cell, base_url, headers, out
        self.prep = sweep.prepared[cell.engine.name]
        self.extra = self.prep.engine.request_fields(sweep.workload)
        self.written: list[RequestRecord] = []  # in the order the requests ended
        self.repeats: dict[str, int] = {}  # per concurrency level, the repeats a target_ci run took
        self.alive = lambda: True  # the server's liveness, set by the runner

    def server_alive(self) -> bool:
        return self.alive()

    def send(self, specs: list[RequestSpec], concurrency: int) -> list[RequestRecord]:
        first, engine = len(self.written), self.prep.engine
        asyncio.run(run_batch(self.base_url, self.cell.engine.api, specs, concurrency, self._body,
                              self.sweep.workload.request_timeout_s, self._record, self.headers,
                              engine.tokenize_path, engine.stream_counts,
                              redirects=self.sweep.workload.follow_redirects))
        return self.written[first:]

    def _body(self, spec: RequestSpec) -> dict:
        return request_body(self.cell.engine.api, spec.prompt.text, self.prep.model.label, self.sweep.workload,
                            self.extra)

    def _record(self, measured: Measured) -> None:
        cell = self.cell
        stamp = {"block": cell.block} if self.sweep.workload.blocks > 1 else {}
        rec = RequestRecord.of(measured, cell_id=cell.id, engine=cell.engine.name, method=cell.method,
                               n_spec=cell.n_spec, endpoint=ENDPOINTS[cell.engine.api],
                               prompt_tokens_low=_prompt_tokens_low(measured, self.sweep.prompts), **stamp)
        self.written.append(rec)
        self.out.request(rec)


def _narrow(records: list[RequestRecord], target: float, fewest: int) -> bool:
    """Whether the successful requests' e2e median is known within +-target (stats.narrow_enough)."""
    return narrow_enough([r.e2e_tok_s for r in records if r.ok and r.e2e_tok_s is not None], target, fewest)


def _refused(records: list[RequestRecord]) -> RequestRecord | None:
    return next((r for r in records if r.http_status in AuthRefused.STATUSES), None)


def _raise_if_refused(records: list[RequestRecord]) -> None:
    refused = _refused(records)
    if refused is not None:
        raise _auth_refused(refused)


def _auth_refused(rec: RequestRecord) -> AuthRefused:
    # _refused picked it for its 401/403, and _Batches._record stamps every record's endpoint.
    assert rec.endpoint is not None and rec.http_status is not None
    return AuthRefused(rec.endpoint, rec.http_status)


def _phases(m: dict) -> dict:
    """Seconds per phase of one cell. `orch_s` is what orch itself spent between them: the
    /metrics scrapes, the template probe, bookkeeping."""
    out = {"start_s": m["launched"] - m["start"], "ready_s": m["ready"] - m["launched"],
           "warmup_s": m["warmed"] - m["ready"], "measured_s": m["measuring_s"],
           "teardown_s": m["stopped"] - m["driven"]}
    out["orch_s"] = (m["stopped"] - m["start"]) - sum(out.values())
    return {k: round(v, 4) for k, v in out.items()}


def _failed(exc: BaseException, spec: EngineSpec) -> dict:
    """A cell that could not run, as a record: the cause in words, never a traceback on screen."""
    if isinstance(exc, AuthRefused):
        return {"status": "failed", "error": _refusal(exc, spec), "log_tail": exc.log_tail}
    if isinstance(exc, ServerError):
        return {"status": "failed", "error": str(exc), "log_tail": exc.log_tail}
    if isinstance(exc, OrchError):  # e.g. Docker gone mid-sweep: this cell's record says so
        return {"status": "failed", "error": str(exc)}
    if isinstance(exc, OSError):  # the cell's folder or log, the server binary, a port
        where = f" {exc.filename}" if exc.filename else ""
        return {"status": "failed", "error": f"cannot run the cell:{where}: {why(exc)}"}
    return {"status": "failed", "error": f"internal error: {type(exc).__name__}: {exc}",
            "traceback": traceback.format_exc(limit=8)}


def _refusal(exc: AuthRefused, spec: EngineSpec) -> str:
    return f"{exc}; {auth_fix(spec.api_key_env)}"


def _judge(results: list[RequestRecord], todo: list[RequestSpec], alive: bool, spec: EngineSpec) -> dict:
    failed = sum(not r.ok for r in results)
    low = sum(bool(r.prompt_tokens_low) for r in results)
    sent = {r.key for r in results}  # target_ci's extra repeats are sent beyond the plan
    out: dict[str, int | str] = {"requests_ok": len(results) - failed, "requests_failed": failed,
           "requests_not_sent": sum(s.key not in sent for s in todo)}
    if low:
        out["prompt_check"] = (f"{low} of {len(results)} requests reported fewer prompt tokens than half the "
                               "prompt's words: the chat template may drop the text; try api = \"completions\"")
    refused = _refused(results)
    if refused is not None:
        out.update(status="failed", error=_refusal(_auth_refused(refused), spec))
    elif not alive:
        out.update(status="failed", error="server exited during the measured requests")
    elif results and failed == len(results):
        out.update(status="failed", error=f"all {failed} measured requests failed: {results[0].error}")
    else:
        out["status"] = "partial" if failed else "ok"
    return out


def _prompt_tokens_low(rec: Measured, prompts: list[Prompt]) -> bool:
    n = rec.prompt_tokens
    text = next((p.text for p in prompts if p.id == rec.prompt_id and p.set == rec.prompt_set), "")
    return n is not None and n < 0.5 * len(text.split())
