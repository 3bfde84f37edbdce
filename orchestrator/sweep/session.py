"""One `orch sweep` or `orch bench` from start to exit code: the run folder opened (or resumed,
under the resume policy), the environment recorded, every cell run with Ctrl-C and SIGTERM turned
into a clean stop, and how it ended. The CLI parses, calls these, and prints."""

from __future__ import annotations

import json
import shlex
import signal
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from engines.endpoint import Endpoint

from orchestrator.analysis.search import climb_budget, default_budget, format_decision, opening
from orchestrator.common import probe, redact
from orchestrator.common.credentials import KeyProblem, auth_fix, bearer
from orchestrator.common.errors import AuthRefused, OrchError, RunFolderError, ScenarioError
from orchestrator.launch.launchers import command_text
from orchestrator.measure.prompts import load_prompt_set
from orchestrator.types.records import CellRecord
from orchestrator.results.rundir import RunDir, scenario_text
from orchestrator.sweep.environment import capture
from orchestrator.sweep.parallel import run_on_devices
from orchestrator.sweep.placement import unavailable
from orchestrator.sweep.runner import Cell, Sweep, command_for, engine_env, plan_cells, prepare, search_step
from orchestrator.sweep.scenario_file import build_scenario, devices, load_scenario, read_workload
from orchestrator.types.scenario import Scenario
from orchestrator.types.scenario import url_problem

EXIT_INTERRUPTED = 130  # Ctrl-C, as a shell reports it
EXIT_TERMINATED = 143  # SIGTERM


class Terminated(KeyboardInterrupt):
    """SIGTERM, unwound like Ctrl-C through every server's context manager."""


@dataclass
class Finished:
    run: RunDir
    cells: list[CellRecord]  # the cell records this call wrote
    interrupted: int | None = None  # the exit code of an interrupt, or None if every cell ran

    def exit_code(self, failed_requests: bool) -> int:
        """0 only if every cell and every request succeeded."""
        if self.interrupted is not None:
            return self.interrupted
        return 1 if failed_requests or any(c.status != "ok" for c in self.cells) else 0


@dataclass(frozen=True)
class SweepArgs:
    """`orch sweep`'s arguments, as given."""

    scenario: Path
    out: Path
    overrides: tuple[str, ...] = ()
    only: tuple[str, ...] = ()  # --engine NAME
    resume: bool = False
    search: bool = False
    search_starts: int | None = None
    cluster: str | None = None

    def resume_command(self) -> str:
        """How to carry on after an interrupt or a write error: the same command, with --resume."""
        return "continue with: " + shlex.join(
            ["orch", "sweep", str(self.scenario), *[a for o in self.overrides for a in ("--set", o)],
             *[a for e in self.only for a in ("--engine", e)], *(["--search"] if self.search else []),
             *(["--search-starts", str(self.search_starts)] if self.search_starts is not None else []),
             *(["--cluster", self.cluster] if self.cluster is not None else []), "--resume", "--out", str(self.out)])


@dataclass(frozen=True)
class PlannedSweep:
    """A sweep checked and ready to start: its scenario, the search's budgets (None: every cell)."""

    args: SweepArgs
    scenario: Scenario
    budgets: dict[str, int] | None

    @property
    def base_dir(self) -> Path:
        return self.args.scenario.parent  # relative paths in the scenario are read from its folder

    def dry_run_text(self) -> str:
        """Every cell (or the search's next cells) and its command line; nothing starts."""
        if self.budgets is not None:
            return search_dry_run_text(self.scenario, self.base_dir, self.budgets, self.args.out, self.args.resume)
        return dry_run_text(self.scenario, self.base_dir, str(self.args.scenario))


def plan_sweep(args: SweepArgs) -> PlannedSweep:
    """Load and check the scenario with the command's overrides: a bad one is one line and exit 2."""
    overrides = args.overrides
    if args.cluster is not None:
        overrides = (*overrides, f"placement.cluster={json.dumps(args.cluster)}")
    sc = load_scenario(args.scenario, overrides, args.only)
    check_placement(sc, str(args.scenario), args.search)
    budgets = search_budgets(sc, args.search_starts, str(args.scenario)) if args.search else None
    return PlannedSweep(args, sc, budgets)


def run_sweep(sc: Scenario, base_dir: Path, out: Path, resume: bool, carry_on: str, progress,
              opened: Callable[[RunDir, list[str]], None], search: dict[str, int] | None = None) -> Finished:
    """Run every cell not yet done, or with `search` (starts allowed per engine) the depth search.
    `carry_on` says how to carry on after an interrupt or a write error; `opened(run, warnings)` is
    called once the run folder exists, before any server starts."""
    runner = Sweep(sc, base_dir, progress)  # resolves engines and models: nothing starts if one is missing
    execute = _executor(runner, progress)  # a cluster is reached before there is a run folder
    run, warnings = open_run(sc, out, resume, carry_on)  # held (run.lock) until the cells are done
    try:
        run.write_environment(capture(engine_env(runner), runner.host))
        opened(run, warnings)
        with _signals_stop_the_sweep():
            try:
                with progress:
                    return Finished(run, runner.search(run, search) if search else execute(run))
            except KeyboardInterrupt as exc:
                return Finished(run, [], EXIT_TERMINATED if isinstance(exc, Terminated) else EXIT_INTERRUPTED)
    finally:
        run.unlock()  # the report that follows replaces its files whole: it needs no hold


def _executor(runner: Sweep, progress) -> Callable[[RunDir], list[CellRecord]]:
    """How the cells will run: one at a time, or side by side where the scenario names devices or
    a cluster (connected to here, so that an unreachable one is one line and no run folder)."""
    placed = runner.scenario.placement
    if placed.cluster:
        from orchestrator.sweep.cluster import check_offered, connect, run_on_cluster  # ray: only for sweeps that use it

        ray = connect(placed.cluster)
        check_offered(ray, placed)
        return lambda run: run_on_cluster(ray, runner, run, placed, progress.side_by_side())
    if placed.gpus or placed.cores:
        return lambda run: run_on_devices(runner, run, devices(placed), progress.side_by_side())
    return runner.execute


def check_placement(sc: Scenario, where: str, search: bool) -> None:
    """One line, before anything starts, if the scenario's devices cannot be used here."""
    placed = sc.placement
    if search and (placed.cluster or placed.gpus or placed.cores):
        raise ScenarioError(where, "placement", "the depth search starts one cell at a time, each chosen from "
                                                "the last; drop --search or the [placement] table")
    problem = unavailable(devices(placed))
    if problem:
        raise ScenarioError(where, f"placement.{problem[0]}", problem[1])


class _signals_stop_the_sweep:
    """SIGINT and SIGTERM raise KeyboardInterrupt (Terminated) in the main thread. Not Python's own
    SIGINT handler: asyncio.run replaces that one with "cancel the main task", and a cancellation
    that the HTTP stack absorbs mid-read lets the sweep run on after Ctrl-C."""

    def __enter__(self):
        signal.signal(signal.SIGTERM, _sigterm)
        signal.signal(signal.SIGINT, _sigint)

    def __exit__(self, *exc):
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _sigint(signum, frame):
    raise KeyboardInterrupt


def _sigterm(signum, frame):
    raise Terminated()


def open_run(sc: Scenario, out: Path, resume: bool, carry_on: str) -> tuple[RunDir, list[str]]:
    """A new run folder, or with `resume` the latest of this sweep, if its scenario is the same
    and this orch can read its records; returns it and what repairing it dropped."""
    resolved = sc.model_dump(mode="json")
    for engine in resolved["engines"]:
        engine["url"] = redact.public_url(engine["url"])  # the scenario as run, less any password
    if not resume:
        new = RunDir.create(out, sc.name, carry_on)
        with new.locked():  # before scenario.toml, without which no --resume picks the folder
            new.write_scenario(resolved)
        return new, []
    run = RunDir.latest(out, sc.name)
    if run is None:
        raise OrchError(f"--resume: no earlier run of {sc.name!r} under {out}; drop --resume to start one")
    run.carry_on = carry_on
    with run.locked():  # a second sweep or --resume of this folder stops here, in one line (exit 2)
        run.schema_version()  # one line, and nothing appended, if this orch cannot read the run
        try:
            theirs = run.read_scenario_text()
        except (OSError, UnicodeDecodeError) as exc:
            why = getattr(exc, "strerror", None) or "not UTF-8 text"
            raise RunFolderError(f"--resume: {run.path}/scenario.toml: {why}; drop --resume to start a new run") from exc
        ours = scenario_text(redact.scrub_values(resolved))
        mine, saved = _measured_settings(ours), _measured_settings(theirs)
        if mine != saved or mine is None and ours != theirs:
            raise OrchError(f"--resume: {run.path}/scenario.toml differs from this scenario (with --set); "
                            "resume with the same settings or start a new run")
        notes = run.repair()
        run.write_schema()
    return run, notes


def _measured_settings(text: str) -> dict | None:
    """A scenario as resume compares it (None: not TOML, so the texts are compared): [placement]
    only by kind, since where the cells run may change (a cluster reached by another address,
    fewer devices; each cell record says where it ran), but not from one at a time to side by
    side or back, which would leave cells measured alone and beside others unmarked."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        return None
    placed = data.pop("placement", {})
    data["placement"] = "cluster" if placed.get("cluster") else "devices" if placed.get("gpus") or placed.get(
        "cores") else "one at a time"
    return data


def dry_run_text(sc: Scenario, base_dir: Path, source: str = "SCENARIO") -> str:
    """Every cell and its command line, and what is not set up yet; nothing is started or set up."""
    prepared = prepare(sc, base_dir, need_binaries=False)
    cells = plan_cells(sc)
    w = sc.workload
    prompts = sum(len(load_prompt_set(ref, base_dir)) for ref in w.prompts)
    lines = [f"sweep {sc.name}: {len(cells)} cells; per cell {w.warmup} warm-up and "
             f"{prompts} prompts x {w.repeats} repeats x concurrency {w.concurrency} measured requests",
             "(ports are picked free when each cell starts)"]
    if w.blocks > 1:
        lines.append(f"{w.blocks} blocks: every cell started {w.blocks} times, each block in a seeded order, n_spec 0 "
                     "first in the run and last")
    placed = sc.placement
    if placed.cluster:
        lines.append(f"cells run as Ray tasks on the cluster at {placed.cluster}, each asking for "
                     + (f"one {placed.resource!r}" if placed.resource else "one GPU"))
    elif placed.gpus or placed.cores:
        lines.append("cells run side by side, one per device: " + "; ".join(d.name for d in devices(placed))
                     + " (a server pinned to cores gets as many threads)")
    lines += [f"engine {name}: not set up yet: {'; '.join(p.not_ready)} (`orch setup {source}` does it)"
              for name, p in prepared.items() if p.not_ready]
    for k, cell in enumerate(cells, 1):
        plan = command_for(cell, prepared[cell.engine.name], max(w.concurrency), config_dir=_dry_config(cell))
        block = f" (block {cell.block + 1}/{w.blocks})" if w.blocks > 1 else ""
        lines += [f"cell {k}/{len(cells)} {cell.id}{block} [{cell.engine.launcher}, {cell.engine.api}]",
                  f"  {command_text(plan)}"]
        lines += [f"  writes {plan.config_dir}/{f.name} ({len(f.text.encode())} bytes) before it starts"
                  for f in plan.files]
    return "\n".join(lines)


def _dry_config(cell: Cell) -> Path:
    """Where a dry run says a cell's config files would go: no run folder exists yet."""
    return Path("<run folder>") / "cells" / cell.id / "config"


def search_budgets(sc: Scenario, starts: int | None, where: str) -> dict[str, int]:
    """The starts allowed per engine of a depth search (half its grid unless `starts` is given);
    a scenario whose depths cannot be searched is refused in one line."""
    out = {}
    for e in sc.engines:
        grid = e.speculation.n_spec
        if 0 not in grid or len(set(grid)) < 3:
            raise ScenarioError(where, f"engines.{e.name}.speculation.n_spec",
                                f"the depth search needs 0 (the baseline) and at least two other depths "
                                f"(got {grid}); list them, or drop --search")
        out[e.name] = starts if starts is not None else default_budget(grid, sc.workload.blocks)
        if out[e.name] < 2:
            raise ScenarioError("orch sweep", "--search-starts", "at least 2 (the baseline and the deepest depth)")
    return out


def search_dry_run_text(sc: Scenario, base_dir: Path, budgets: dict[str, int], out: Path, resume: bool) -> str:
    """The search's plan; nothing is started. With `resume`, the next step decided from the latest
    run's records: what the search would start now, and what it has skipped and why."""
    prepared = prepare(sc, base_dir, need_binaries=False)
    lines = []
    run = RunDir.latest(out, sc.name) if resume else None
    if resume and run is None:
        raise OrchError(f"--resume: no earlier run of {sc.name!r} under {out}; drop --resume to see the plan")
    for e in sc.engines:
        grid, budget = sorted(set(e.speculation.n_spec)), budgets[e.name]
        if run is None:
            first = opening(grid)
            blocks = sc.workload.blocks
            full = len(grid) * blocks
            confirm = "" if blocks < 2 else (
                f"; with {blocks} blocks it climbs on {climb_budget(budget, blocks)} starts in block 1, then starts "
                "n_spec 0 and the best depths it measured again in block 2 with the rest")
            lines.append(f"{e.name}: depth search over n_spec {', '.join(map(str, grid))}: at most {budget} of "
                         f"{full} server starts; it opens with n_spec {', '.join(map(str, first))}, fits the "
                         "speedup model, then starts the predicted best and the best measured depth's neighbours "
                         "one at a time, refitting after each" + confirm)
        else:
            decision = search_step(run, e, budget)
            first = decision.next
            lines.append(format_decision(decision))
            if not first:
                lines.append(f"  {e.name}: nothing left to start")
        for k in first:
            plan = command_for(Cell(e, k), prepared[e.name], max(sc.workload.concurrency),
                               config_dir=_dry_config(Cell(e, k)))
            lines += [f"  next: {Cell(e, k).id} [{e.launcher}, {e.api}]", f"    {command_text(plan)}"]
    return "\n".join(lines)


# ---------------------------------------------------------------- orch bench


@dataclass(frozen=True)
class BenchTarget:
    """What `orch bench` is pointed at: a server that is already running."""

    url: str
    model: str | None
    api: str
    api_key_env: str | None
    label: str | None
    method: str
    n_spec: int


def bench_scenario(target: BenchTarget, scenario_file: Path | None, overrides) -> tuple[Scenario, Path]:
    """The one-cell scenario of a bench run, and the folder its prompt files are relative to."""
    label = Endpoint.kind if target.label is None else target.label  # "" is refused below, as a name
    problem = url_problem(target.url)
    if problem:
        raise ScenarioError("orch bench", "--url", problem)
    if not label:
        raise ScenarioError("orch bench", "--label", "empty; name the server, or leave --label out")
    if len(label) > 58:  # the run folder is bench-LABEL-STAMP, and names stop at 64 characters
        raise ScenarioError("orch bench", "--label", f"at most 58 characters (got {len(label)}); shorten it")
    redact.remember_url(target.url)
    raw = {"name": f"bench-{label}", "workload": read_workload(scenario_file) if scenario_file else {},
           "engines": [{"name": label, "kind": Endpoint.kind, "launcher": "external", "url": target.url,
                        "model": target.model or "?", "api": target.api, "api_key_env": target.api_key_env,
                        "speculation": {"method": target.method, "n_spec": [target.n_spec]}}]}
    sc = build_scenario(raw, scenario_file or Path("orch bench"), overrides)
    if sc.placement != type(sc.placement)():
        raise ScenarioError(scenario_file or "orch bench", "placement", "orch bench measures a server that is "
                            "already running where it is; drop the [placement] settings")
    if target.model is None:  # asked only once the rest is known to be valid, with the key the requests will carry
        sc.engines[0].model = served_model(target.url, target.api_key_env)
    return sc, scenario_file.parent if scenario_file else Path.cwd()


def served_model(url: str, api_key_env: str | None) -> str:
    """The first model a running server lists at /v1/models."""
    shown = f"{redact.public_url(url.rstrip('/'))}/v1/models"
    try:
        headers = bearer(api_key_env)
    except KeyProblem as exc:
        raise OrchError(f"--api-key-env: {exc}") from exc
    try:
        name = json.loads(probe.get(url.rstrip("/"), "/v1/models", headers, timeout_s=10))["data"][0]["id"]
    except AuthRefused as exc:
        raise OrchError(f"{shown}: {exc}; {auth_fix(api_key_env)}") from exc
    except (probe.ProbeFailed, ValueError, KeyError, IndexError, TypeError, RecursionError):
        name = None
    if not isinstance(name, str) or not name:
        raise OrchError(f"could not read the model name from {shown}; pass --model NAME")
    return name
