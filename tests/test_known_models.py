"""Known models that orch makes rather than fetches: requantized GGUFs (llama-quantize, from the
shipped file) and Hugging Face folders (gguf_to_hf.py), as orch finds, refuses and makes them."""

from __future__ import annotations

import ast
import json
import subprocess
from pathlib import Path

import pytest

from engines import QUANTIZER
from orchestrator.common.errors import ModelError
from orchestrator.setup import models
from orchestrator.setup.models import KNOWN_MODELS, check_model_ref, prepare_model, resolve_model

ROOT = Path(__file__).resolve().parents[1]


def test_the_converter_version_orch_checks_is_the_one_the_script_writes():
    tree = ast.parse((ROOT / "orchestrator" / "setup" / "gguf_to_hf.py").read_text())
    (value,) = [n.value.value for n in tree.body if isinstance(n, ast.Assign) and n.targets[0].id == "CONVERTER"]
    assert value == models.CONVERTER


def test_a_folder_from_the_old_converter_is_not_prepared(tmp_path, monkeypatch):
    monkeypatch.setenv("ORCH_CACHE", str(tmp_path))
    folder = KNOWN_MODELS["smollm2-135m"].hf_dir("smollm2-135m")
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "orch-model.json").write_text(json.dumps({"dtype": "bfloat16"}))  # no "converter": made before BOS was kept
    with pytest.raises(ModelError, match="older orch: run `orch models prepare smollm2-135m --format hf`"):
        resolve_model("smollm2-135m", fmt="hf")
    (folder / "orch-model.json").write_text(json.dumps({"converter": models.CONVERTER}))
    assert resolve_model("smollm2-135m", fmt="hf").path == folder


@pytest.mark.parametrize("junk", ["", "[]", "not json", '{"converter": "2"}'])
def test_a_broken_model_note_means_not_prepared(tmp_path, monkeypatch, junk):
    monkeypatch.setenv("ORCH_CACHE", str(tmp_path))
    folder = KNOWN_MODELS["smollm2-135m"].hf_dir("smollm2-135m")
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "orch-model.json").write_text(junk)
    assert models.hf_folder("smollm2-135m") is None


def test_a_requantized_model_is_a_gguf_only():
    assert check_model_ref("gemma-3-270m-f16", fmt="gguf") is None
    problem = check_model_ref("gemma-3-270m-f16", fmt="hf")
    assert "GGUF for llama.cpp" in problem and "'gemma-3-270m'" in problem


def test_a_requantized_model_not_made_yet_names_the_command(tmp_path, monkeypatch):
    monkeypatch.setenv("ORCH_CACHE", str(tmp_path))
    with pytest.raises(ModelError, match=r"run `orch models prepare gemma-3-270m-q8_0`"):
        resolve_model("gemma-3-270m-q8_0")


@pytest.mark.integration
@pytest.mark.parametrize("name, qtype", [("gemma-3-270m-q8_0", "Q8_0"), ("gemma-3-270m-f16", "F16")])
def test_llama_quantize_makes_a_target_llama_cpp_loads_as_its_type(name, qtype):
    if QUANTIZER.installed() is None:
        pytest.fail("llama-server and llama-quantize are not built: run `orch engines install llama-server`")
    path, _ = prepare_model(name)
    assert path == KNOWN_MODELS[name].gguf_path(name) and path.is_file()
    # Independent truth: llama.cpp's own loader names the file's type as it loads it.
    proc = subprocess.Popen([str(QUANTIZER.tool("llama-server")), "-m", str(path), "--port", "0", "-c", "256", "-lv", "4",
                             "-t", "1"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if "file type" in line or len(lines) > 400:
                break
    finally:
        proc.kill()
        proc.wait(30)
    (found,) = [ln for ln in lines if "file type" in ln]
    assert found.split("=", 1)[1].split()[0] == qtype, found
