import shutil
from pathlib import Path

import pytest

from engines.llama_server import Build

ROOT = Path(__file__).resolve().parent.parent


def llama_server_binary() -> str:
    found = shutil.which("llama-server") or Build().installed()
    if not found:
        pytest.fail("llama-server is not installed: run `orch engines install llama-server` "
                    "(the integration tests use the real server)")
    return str(found)


@pytest.fixture
def no_processes(monkeypatch):
    """Fail the test if anything tries to start a server process."""
    import orchestrator.launch.launchers as launchers

    def refuse(*a, **k):
        raise AssertionError(f"a process was started: {a}")

    monkeypatch.setattr(launchers.subprocess, "Popen", refuse)


def real_scenario(name: str, *, prompts: str = "repeat", max_tokens: int = 24, repeats: int = 2,
                  method: str = "ngram-mod", n_spec: str = "[0, 4]", api: str = "completions",
                  extra_args: tuple[str, ...] = (), draft_model: str | None = None) -> str:
    """A scenario TOML for the real llama-server and Gemma 3 270M."""
    args = ", ".join(f'"{a}"' for a in ("-c", "2048", "-t", "2", *extra_args))
    draft = f'draft_model = "{draft_model}"\n' if draft_model else ""
    return (f'name = "{name}"\n[workload]\nprompts = ["{prompts}"]\nmax_tokens = {max_tokens}\n'
            f'warmup = 1\nrepeats = {repeats}\n'
            f'[[engines]]\nname = "llamacpp"\nkind = "llama-server"\nmodel = "gemma-3-270m"\n'
            f'api = "{api}"\nbinary = "{llama_server_binary()}"\nargs = [{args}]\nready_timeout_s = 120\n'
            f'[engines.speculation]\nmethod = "{method}"\nn_spec = {n_spec}\n{draft}')


def make_run(folder: Path, rows: list[dict], engines: dict) -> Path:
    """A run folder from synthetic request rows, as orch writes it."""
    import json

    folder.mkdir(parents=True)
    (folder / "requests.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cells = {r["cell_id"]: {"cell_id": r["cell_id"], "engine": r["engine"], "method": r["method"],
                            "n_spec": r["n_spec"], "status": "ok"} for r in rows}
    (folder / "cells.jsonl").write_text("".join(json.dumps(c) + "\n" for c in cells.values()))
    (folder / "scenario.toml").write_text(f'name = "{folder.name}"\n')
    (folder / "environment.json").write_text(json.dumps({"engines": engines, "cpu": "Test CPU", "cpu_count": 2}))
    return folder


ORCH = [__import__("sys").executable, "-c", "from orchestrator.cli import main; main()"]


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


def workload_scenario(tmp_path: Path, name: str, engines: str, max_tokens: int = 16, repeats: int = 1,
                      timeout: float = 300) -> Path:
    """A scenario file over the `repeat` prompts with the given [[engines]] tables."""
    path = tmp_path / f"{name}.toml"
    path.write_text(f'name = "{name}"\n[workload]\nprompts = ["repeat"]\nmax_tokens = {max_tokens}\nwarmup = 1\n'
                    f'repeats = {repeats}\nrequest_timeout_s = {timeout}\n' + engines)
    return path


def jsonl_rows(path: Path) -> list[dict]:
    import json

    return [json.loads(ln) for ln in path.read_text().splitlines()] if path.is_file() else []


def requests_of(rows: list[dict]):
    """Request rows typed as a run folder's requests.jsonl is read back (checked, invalid ones salvaged)."""
    from orchestrator.results.records import RequestRecord, validate

    return [validate(RequestRecord, r)[0] for r in rows]


def cells_of(rows: list[dict]):
    from orchestrator.results.records import CellRecord, validate

    return [validate(CellRecord, c)[0] for c in rows]
