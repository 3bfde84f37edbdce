"""The published GPU setups, checked flag by flag against ../shared/reference/README.md
(copied to orchestrator/analysis/reference_data/PROVENANCE.md). Dry runs only: no GPU here."""

import json
import re

import pytest

from .support.dry_runs import cells, docker_opts, flags, split

VLLM_LIMITS = {"--max-model-len": "3000", "--tensor-parallel-size": "1", "--gpu-memory-utilization": "0.45",
               "--max-num-seqs": "1", "--limit-mm-per-prompt": '{"image":0,"audio":0}'}


@pytest.mark.parametrize("name, model, n_specs, extra", [
    ("gemma4-31b-mtp-vllm.toml", "RedHatAI/gemma-4-31B-it-FP8-block", [0, 2, 3, 4, 5], {}),
    ("qwen36-27b-mtp-vllm.toml", "Qwen/Qwen3.6-27B-FP8", [0, 4, 5], {"--reasoning-parser": "qwen3"}),
])
def test_vllm_setups_match_the_published_flags(name, model, n_specs, extra):
    found = cells(name)
    assert sorted(int(c.rsplit("-n", 1)[1]) for c in found) == n_specs
    for cell, cmd in found.items():
        opts, argv = split(cmd, "vllm/vllm-openai:nightly")
        assert docker_opts(opts)["volume"].endswith(":/root/.cache/huggingface")
        assert argv[0] == model
        f = flags(argv)
        for flag, value in {**VLLM_LIMITS, **extra}.items():
            assert f[flag] == [value], (cell, flag)
        assert f["--no-enable-prefix-caching"] == [""]  # exactly once
        assert f["--port"] == ["8000"] and f["--host"] == ["0.0.0.0"]
        n = int(cell.rsplit("-n", 1)[1])
        if n == 0:
            assert "--speculative-config" not in f
        else:
            config = json.loads(f["--speculative-config"][0])
            expected = {"method": "mtp", "num_speculative_tokens": n}
            if "gemma" in name:
                expected["model"] = "google/gemma-4-31B-it-assistant"
            assert config == expected


def test_llamacpp_setup_matches_the_published_flags():
    found = cells("qwen36-27b-mtp-llamacpp.toml")
    assert sorted(int(c.rsplit("-n", 1)[1]) for c in found) == [0, 2, 3, 4, 5]
    for cell, cmd in found.items():
        opts, argv = split(cmd, "ghcr.io/ggml-org/llama.cpp:server-cuda13")
        docker_opts(opts)
        f = flags(argv)
        assert f["-hf"] == ["unsloth/Qwen3.6-27B-MTP-GGUF"] and f["--hf-file"] == ["Qwen3.6-27B-Q8_0.gguf"]
        assert f["-ngl"] == ["-1"] and f["-c"] == ["3000"] and f["-fa"] == ["on"]
        assert f["--parallel"] == ["1"] and f["--metrics"] == [""]  # -np 1 --metrics
        n = int(cell.rsplit("-n", 1)[1])
        if n == 0:
            assert "--spec-type" not in f
        else:
            assert f["--spec-type"] == ["draft-mtp"] and f["--spec-draft-n-max"] == [str(n)]
        assert not {"--draft-max", "--draft-min"} & set(f)


GEMMA4_12B = {  # engine -> (-hf, -hfd, depths), as the scenario's comments say where each comes from
    "q4km": ("ggml-org/gemma-4-12B-it-GGUF:Q4_K_M", None, [0]),
    "q4km-mtp": ("ggml-org/gemma-4-12B-it-GGUF:Q4_K_M", "cortexist/gemma-4-12B-it-assistant-MTP-GGUF", [0, 2, 3, 4]),
    "qat-mtp": ("google/gemma-4-12B-it-qat-q4_0-gguf", "Janvitos/gemma-4-12B-it-qat-assistant-MTP-Q8_0-GGUF",
                [0, 2, 3, 4]),
}


def test_gemma4_12b_three_variants_flag_by_flag():
    found = cells("gemma4-12b-mtp-qat-llamacpp.toml")
    depths: dict[str, list[int]] = {}
    for cell, cmd in found.items():
        engine, n = re.fullmatch(r"(q4km|q4km-mtp|qat-mtp)-(?:none-|draft-mtp-)?n(\d+)", cell).groups()
        depths.setdefault(engine, []).append(int(n))
        opts, argv = split(cmd, "ghcr.io/ggml-org/llama.cpp:server-cuda13")
        assert docker_opts(opts)["volume"].endswith(":/root/.cache/llama.cpp")
        f = flags(argv)
        hf, hfd, _ = GEMMA4_12B[engine]
        assert f["-hf"] == [hf] and f["-ngl"] == ["-1"] and f["-c"] == ["4096"] and f["-fa"] == ["on"]
        assert f["--parallel"] == ["1"] and f["--metrics"] == [""]
        if int(n) == 0:
            assert not {"--spec-type", "--spec-draft-n-max", "-hfd", "-md"} & set(f)
        else:  # MTP from the separate head GGUF: the type must be named, llama.cpp does not detect it
            assert f["--spec-type"] == ["draft-mtp"] and f["--spec-draft-n-max"] == [n] and f["-hfd"] == [hfd]
        assert not {"--draft-max", "--draft-min", "--draft"} & set(f)
    assert {e: sorted(d) for e, d in depths.items()} == {e: v[2] for e, v in GEMMA4_12B.items()}


@pytest.mark.parametrize("name", ["gemma4-12b-mtp-qat-llamacpp.toml", "qwen36-27b-mtp-llamacpp.toml"])
def test_every_flag_of_the_llamacpp_gpu_scenarios_is_live_in_the_real_binary(name, llama_help):
    live, removed, types = llama_help
    for cell, cmd in cells(name).items():
        _, argv = split(cmd, "ghcr.io/ggml-org/llama.cpp:server-cuda13")
        used = {a for a in argv if a.startswith("-") and not re.fullmatch(r"-\d+", a)}
        assert used <= live and not used & removed, (cell, sorted(used - live))
        if "--spec-type" in argv:
            assert argv[argv.index("--spec-type") + 1] in types
