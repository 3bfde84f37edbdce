"""Fixtures; the helpers themselves are in tests/support/."""

import pytest

from .support.llama_help import help_options
from .support.runs import ORCH, llama_server_binary


@pytest.fixture(scope="module")
def llama_help():
    """(live options, removed options, --spec-type values) of the real llama-server's --help, read
    once per test module."""
    return help_options(llama_server_binary())


@pytest.fixture
def no_processes(monkeypatch):
    """Fail the test if anything tries to start a server process."""
    import orchestrator.launch.launchers as launchers

    def refuse(*a, **k):
        raise AssertionError(f"a process was started: {a}")

    monkeypatch.setattr(launchers.subprocess, "Popen", refuse)


@pytest.fixture
def spawn_orch():
    """Start `orch ...` as a real process; whatever the test does, it is stopped afterwards
    (SIGTERM first, so it stops its own servers and containers)."""
    import signal
    import subprocess

    procs = []

    def start(*args, **kwargs):
        proc = subprocess.Popen([*ORCH, *args], **kwargs)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
