"""What a running sweep or build says while it runs.

On a terminal: a live bar (cell k of n, requests done, the latest tok/s). Anywhere else (`nohup`,
CI, `| tee log`) a live bar prints nothing until it ends, so the same calls print plain lines
instead: a cell's start, every EVERY_REQUESTS requests or EVERY_S seconds its median tok/s so far,
its end with status and time, and an estimate of what remains. `sweep_progress(console)` and
`build_progress(console)` pick one as rich does for its live display: `console.is_interactive`.
"""

from __future__ import annotations

import time

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from orchestrator.analysis import stats
from orchestrator.common import redact
from orchestrator.common.show import printable

EVERY_REQUESTS = 10  # a plain progress line after this many measured requests ...
EVERY_S = 30.0  # ... or this many seconds, whichever comes first


def sweep_progress(console: Console | None = None):
    console = console or Console(stderr=True)
    return SweepProgress(console) if console.is_interactive else PlainSweepProgress(console)


def build_progress(console: Console | None = None):
    console = console or Console(stderr=True)
    return BuildProgress(console) if console.is_interactive else PlainBuildProgress(console)


class SweepProgress:
    def __init__(self, console: Console | None = None):
        self.console = console or Console(stderr=True)
        self._bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                             TextColumn("{task.fields[latest]}"), TimeElapsedColumn(),
                             console=self.console, transient=False)
        self._task: TaskID | None = None
        self._cell = ""

    def side_by_side(self) -> "ParallelProgress":
        """The display for cells that run side by side (sweep/parallel.py)."""
        return ParallelProgress(self.console)

    def __enter__(self):
        self._bar.__enter__()
        return self

    def __exit__(self, *exc):
        self._bar.__exit__(*exc)

    def cell_started(self, k: int, n: int, cell_id: str, requests: int) -> None:
        self._cell = f"cell {k}/{n} {cell_id}"
        self._task = self._bar.add_task(f"{self._cell}: starting server", total=requests, latest="")

    def _current(self) -> TaskID:
        assert self._task is not None  # the sweep calls cell_started before a cell's other calls
        return self._task

    def phase(self, text: str) -> None:
        self._bar.update(self._current(), description=f"{self._cell}: {text}")

    def request_done(self, rec) -> None:
        """`rec`: a types.records.RequestRecord just written."""
        if rec.phase != "measured":
            return
        latest = f"{rec.e2e_tok_s:.1f} tok/s" if rec.e2e_tok_s else "error"
        self._bar.update(self._current(), advance=1, latest=f"latest {latest}")

    def warn(self, text: str) -> None:
        self.console.print(f"  {self._cell}: warning: {escape(printable(redact.scrub(text)))}")

    def cell_finished(self, status: str, note: str = "") -> None:
        self._bar.update(self._current(), description=f"{self._cell}: {status}")
        if note:  # a server's words: no secret, no rich markup ("[/x]" would raise), no escape or line break
            self.console.print(f"  {self._cell}: {escape(printable(redact.scrub(note)))}")


class PlainSweepProgress:
    """The same calls as SweepProgress, as plain lines stamped with the sweep's elapsed time."""

    def __init__(self, console: Console, clock=time.monotonic):
        self.console, self.clock = console, clock
        self._t0 = clock()
        self._cell, self._k, self._n, self._total = "", 0, 0, 0
        self._cell_t0 = self._last = self._t0
        self._rates: list[float] = []
        self._errors = self._empty = 0
        self._cell_s: list[float] = []  # seconds of each finished cell, for the estimate

    def side_by_side(self) -> "ParallelProgress":
        """The display for cells that run side by side (sweep/parallel.py)."""
        return ParallelProgress(self.console)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None

    def _say(self, text: str) -> None:
        self._last = self.clock()
        # markup off: a cell id or a server's words are printed as they are, less any secret, escapes shown
        line = printable(redact.scrub(f"{_stamp(self._last - self._t0)} {self._cell}: {text}"))
        self.console.print(line, markup=False, highlight=False, soft_wrap=True)

    def cell_started(self, k: int, n: int, cell_id: str, requests: int) -> None:
        self._cell, self._k, self._n, self._total = f"cell {k}/{n} {cell_id}", k, n, requests
        self._cell_t0 = self._last = self.clock()
        self._rates, self._errors, self._empty = [], 0, 0
        self._say(f"starting server ({requests} requests to measure)")

    def phase(self, text: str) -> None:
        self._say(text)

    def warn(self, text: str) -> None:
        self._say(f"warning: {text}")

    def request_done(self, rec) -> None:
        if rec.phase != "measured":
            return
        if not getattr(rec, "ok", rec.e2e_tok_s is not None):
            self._errors += 1
        elif rec.e2e_tok_s:
            self._rates.append(rec.e2e_tok_s)
        else:
            self._empty += 1  # ok, but no tokens to rate
        done = len(self._rates) + self._errors + self._empty
        if done % EVERY_REQUESTS == 0 or self.clock() - self._last >= EVERY_S or done == self._total:
            so_far = f"median {stats.median(self._rates):.1f} tok/s so far" if self._rates else "no successful request yet"
            errors = f", {self._errors} failed" if self._errors else ""
            self._say(f"{done}/{self._total} requests, {so_far}{errors}")

    def cell_finished(self, status: str, note: str = "") -> None:
        took = self.clock() - self._cell_t0
        self._cell_s.append(took)
        left = self._n - self._k
        estimate = (f"; about {_minutes(stats.mean(self._cell_s) * left)} left for {left} more cell(s) "
                    f"at this pace" if left > 0 else "")
        self._say(f"{status} in {took:.0f} s{estimate}")
        if note:
            self._say(note)


class ParallelProgress:
    """Plain lines for cells that run side by side (sweep/parallel.py), on a terminal too: one
    live bar per cell would redraw over the others. Each line names its cell and where it runs."""

    def __init__(self, console: Console, clock=time.monotonic):
        self.console, self.clock = console, clock
        self._t0 = clock()
        self._where: dict[str, str] = {}
        self._rates: dict[str, list[float]] = {}
        self._errors: dict[str, int] = {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None

    def _say(self, text: str) -> None:
        self.console.print(printable(redact.scrub(f"{_stamp(self.clock() - self._t0)} {text}")), markup=False,
                           highlight=False, soft_wrap=True)

    def cell_started(self, cell_id: str, node: str | None, device: str | None, k: int, n: int) -> None:
        self._where[cell_id] = " ".join(filter(None, [node, device]))
        self._rates[cell_id], self._errors[cell_id] = [], 0
        self._say(f"cell {k}/{n} {cell_id} on {self._where[cell_id]}: starting server")

    def request_done(self, rec) -> None:
        if rec.phase != "measured":
            return
        if rec.ok and rec.e2e_tok_s:
            self._rates.setdefault(rec.cell_id, []).append(rec.e2e_tok_s)
        elif not rec.ok:
            self._errors[rec.cell_id] = self._errors.get(rec.cell_id, 0) + 1
        done = len(self._rates.get(rec.cell_id, [])) + self._errors.get(rec.cell_id, 0)
        if done % EVERY_REQUESTS == 0:
            rates = self._rates.get(rec.cell_id) or [0.0]
            self._say(f"{rec.cell_id}: {done} requests, median {stats.median(rates):.1f} tok/s so far"
                      + (f", {self._errors[rec.cell_id]} failed" if self._errors.get(rec.cell_id) else ""))

    def warn(self, text: str) -> None:
        self._say(f"warning: {text}")

    def cell_finished(self, cell_id: str, status: str, note: str, seconds: float | None) -> None:
        took = f" in {seconds:.0f} s" if seconds is not None else ""
        self._say(f"{cell_id} on {self._where.get(cell_id, '?')}: {status}{took}" + (f"; {note}" if note else ""))


class _SingleLane:
    """`step` and `percent` without a lane: a single install (`orch engines install`) has one."""

    _one = None

    def lane(self, steps=()):
        raise NotImplementedError

    def step(self, text: str) -> None:
        self._one = self._one or self.lane()
        self._one.step(text)

    def percent(self, value: int) -> None:
        self._one = self._one or self.lane()
        self._one.percent(value)


class BuildProgress(_SingleLane):
    """Steps and the compiler's percentage while an engine builds: one bar per lane of set-up
    (`lane`), or one bar for a single install (`step`, `percent`)."""

    def __init__(self, console: Console | None = None):
        self.console = console or Console(stderr=True)
        self._bar = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                             TimeElapsedColumn(), console=self.console, transient=True)

    def __enter__(self):
        self._bar.__enter__()
        return self

    def __exit__(self, *exc):
        self._bar.__exit__(*exc)

    def lane(self, steps=()) -> "_BarLane":
        return _BarLane(self, self._bar.add_task("preparing", total=100), _label(steps))



class _BarLane:
    def __init__(self, owner: BuildProgress, task, label: str):
        self.owner, self.task, self.label = owner, task, label

    def step(self, text: str) -> None:
        text = escape(printable(f"{self.label}{text}"))  # "llama-cpp-python[server]" is not rich markup
        self.owner._bar.update(self.task, description=text, completed=0)
        self.owner.console.print(text)

    def percent(self, value: int) -> None:
        self.owner._bar.update(self.task, completed=value)


class PlainBuildProgress(_SingleLane):
    """Steps as lines, and the compiler's percentage every 10% (a log shows the build is alive)."""

    def __init__(self, console: Console, clock=time.monotonic):
        self.console, self.clock = console, clock
        self._t0 = clock()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None

    def lane(self, steps=()) -> "_PlainLane":
        return _PlainLane(self, _label(steps))

    def say(self, text: str) -> None:
        self.console.print(printable(f"{_stamp(self.clock() - self._t0)} {text}"), markup=False, highlight=False,
                           soft_wrap=True)



class _PlainLane:
    def __init__(self, owner: PlainBuildProgress, label: str):
        self.owner, self.label = owner, label
        self._shown = -1

    def step(self, text: str) -> None:
        self._shown = -1
        self.owner.say(f"{self.label}{text}")

    def percent(self, value: int) -> None:
        if value // 10 > self._shown:
            self._shown = value // 10
            self.owner.say(f"{self.label}{value}%")


def _label(steps) -> str:
    """"llama-server: " before a lane's lines, when set-up runs lanes side by side."""
    names = [name.split(":")[0] for _, name in steps]
    return f"{', '.join(dict.fromkeys(names))}: " if names else ""


def _stamp(seconds: float) -> str:
    """"[02:05]": minutes and seconds since the sweep or set-up began."""
    s = int(seconds)
    return f"[{s // 60:02d}:{s % 60:02d}]"


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"
