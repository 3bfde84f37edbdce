"""The live display: cell k of n, requests done, the latest tok/s."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from orchestrator.common import redact


class SweepProgress:
    def __init__(self, console: Console | None = None):
        self.console = console or Console(stderr=True)
        self._bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                             TextColumn("{task.fields[latest]}"), TimeElapsedColumn(),
                             console=self.console, transient=False)
        self._task = None
        self._cell = ""

    def __enter__(self):
        self._bar.__enter__()
        return self

    def __exit__(self, *exc):
        self._bar.__exit__(*exc)

    def cell_started(self, k: int, n: int, cell_id: str, requests: int) -> None:
        self._cell = f"cell {k}/{n} {cell_id}"
        self._task = self._bar.add_task(f"{self._cell}: starting server", total=requests, latest="")

    def phase(self, text: str) -> None:
        self._bar.update(self._task, description=f"{self._cell}: {text}")

    def request_done(self, rec) -> None:
        """`rec`: a results.records.RequestRecord just written."""
        if rec.phase != "measured":
            return
        latest = f"{rec.e2e_tok_s:.1f} tok/s" if rec.e2e_tok_s else "error"
        self._bar.update(self._task, advance=1, latest=f"latest {latest}")

    def cell_finished(self, status: str, note: str = "") -> None:
        self._bar.update(self._task, description=f"{self._cell}: {status}")
        if note:  # a server's words: no secret, and no rich markup ("[/x]" would raise)
            self.console.print(f"  {self._cell}: {escape(redact.scrub(note))}")


class BuildProgress:
    """Steps and the compiler's percentage while an engine builds."""

    def __init__(self, console: Console | None = None):
        self.console = console or Console(stderr=True)
        self._bar = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                             TimeElapsedColumn(), console=self.console, transient=True)
        self._task = None

    def __enter__(self):
        self._bar.__enter__()
        self._task = self._bar.add_task("preparing", total=100)
        return self

    def __exit__(self, *exc):
        self._bar.__exit__(*exc)

    def step(self, text: str) -> None:
        text = escape(text)  # "llama-cpp-python[server]" is not rich markup
        self._bar.update(self._task, description=text)
        self.console.print(text)

    def percent(self, value: int) -> None:
        self._bar.update(self._task, completed=value)
