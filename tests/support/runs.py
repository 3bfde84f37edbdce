"""Helpers the tests share: the real llama-server binary, scenario files, run folders made from
synthetic rows, and rows typed as orch reads them back."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from engines.llama_server import Build

ORCH = [sys.executable, "-c", "from orchestrator.cli import main; main()"]


def llama_server_binary() -> str:
    found = shutil.which("llama-server") or Build().installed()
    if not found:
        pytest.fail("llama-server is not installed: run `orch engines install llama-server` "
                    "(the integration tests use the real server)")
    return str(found)


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
    folder.mkdir(parents=True)
    (folder / "requests.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cells = {r["cell_id"]: {"cell_id": r["cell_id"], "engine": r["engine"], "method": r["method"],
                            "n_spec": r["n_spec"], "status": "ok"} for r in rows}
    (folder / "cells.jsonl").write_text("".join(json.dumps(c) + "\n" for c in cells.values()))
    (folder / "scenario.toml").write_text(f'name = "{folder.name}"\n')
    (folder / "environment.json").write_text(json.dumps({"engines": engines, "cpu": "Test CPU", "cpu_count": 2}))
    return folder


def workload_scenario(tmp_path: Path, name: str, engines: str, max_tokens: int = 16, repeats: int = 1,
                      timeout: float = 300) -> Path:
    """A scenario file over the `repeat` prompts with the given [[engines]] tables."""
    path = tmp_path / f"{name}.toml"
    path.write_text(f'name = "{name}"\n[workload]\nprompts = ["repeat"]\nmax_tokens = {max_tokens}\nwarmup = 1\n'
                    f'repeats = {repeats}\nrequest_timeout_s = {timeout}\n' + engines)
    return path


def jsonl_rows(path: Path) -> list[dict]:
    return [json.loads(ln) for ln in path.read_text().splitlines()] if path.is_file() else []


def requests_of(rows: list[dict]):
    """Request rows typed as a run folder's requests.jsonl is read back (checked, invalid ones salvaged)."""
    from orchestrator.results.readback import validate
    from orchestrator.types.records import RequestRecord

    return [validate(RequestRecord, r)[0] for r in rows]


def cells_of(rows: list[dict]):
    from orchestrator.results.readback import validate
    from orchestrator.types.records import CellRecord

    return [validate(CellRecord, c)[0] for c in rows]


def req(cell, n_spec, e2e, ok=True, phase="measured", key=None, prompt_set="seeds", drafts=(None, None)):
    return {"cell_id": cell, "engine": "e", "method": "ngram-mod" if n_spec else "none", "n_spec": n_spec,
            "concurrency": 1, "prompt_set": prompt_set, "phase": phase, "ok": ok, "key": key or f"k{e2e}",
            "e2e_tok_s": e2e if ok else None, "decode_tok_s": e2e * 1.1 if ok else None, "ttft_s": 0.1,
            "completion_tokens": 100, "t_start": 0.0, "t_end": 100 / e2e if ok and e2e else 1.0,
            "timings_draft_n": drafts[0], "timings_draft_n_accepted": drafts[1],
            "prompt_id": key or f"k{e2e}", "repeat": 0, "text": "same"}


def timed(cell, n_spec, prompt, tokens, seconds, ok=True, repeat=0, prompt_set="seeds", concurrency=1):
    """A measured request whose rate is tokens / seconds, as the driver records it."""
    return {"cell_id": cell, "engine": "e", "method": "ngram-mod" if n_spec else "none", "n_spec": n_spec,
            "concurrency": concurrency, "prompt_set": prompt_set, "phase": "measured", "ok": ok,
            "key": f"measured/c{concurrency}/r{repeat}/{prompt_set}/{prompt}", "prompt_id": prompt,
            "repeat": repeat, "t_start": 100.0, "t_end": 100.0 + seconds, "t_first_token": 100.05,
            "completion_tokens": tokens if ok else None, "e2e_tok_s": tokens / seconds if ok else None,
            "error": None if ok else "HTTP 500", "text": "same"}


CELLS = [{"cell_id": "e-n0", "engine": "e", "method": "none", "n_spec": 0, "status": "ok"},
         {"cell_id": "e-n4", "engine": "e", "method": "ngram-mod", "n_spec": 4, "status": "ok"},
         {"cell_id": "e-n8", "engine": "e", "method": "ngram-mod", "n_spec": 8, "status": "failed"}]
