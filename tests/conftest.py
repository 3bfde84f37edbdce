import shutil
from pathlib import Path

import pytest

from orchestrator.install import installed_llama_server

ROOT = Path(__file__).resolve().parent.parent


def llama_server_binary() -> str:
    found = shutil.which("llama-server") or installed_llama_server()
    if not found:
        pytest.fail("llama-server is not installed: run `orch engines install llama-server` "
                    "(the integration tests use the real server)")
    return str(found)


@pytest.fixture
def no_processes(monkeypatch):
    """Fail the test if anything tries to start a server process."""
    import orchestrator.launchers as launchers

    def refuse(*a, **k):
        raise AssertionError(f"a process was started: {a}")

    monkeypatch.setattr(launchers.subprocess, "Popen", refuse)
