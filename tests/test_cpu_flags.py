"""The CPU's instruction sets in environment.json, read from /proc/cpuinfo, and the warning an
engine gives where its speed depends on one the host lacks."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from engines import ENGINES
from orchestrator.sweep.environment import CPU_FLAGS, cpu_flags
from orchestrator.types.scenario import EngineSpec

EPYC = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC
flags\t\t: fpu vme sse sse2 avx avx2 fma f16c bmi2
processor\t: 1
flags\t\t: fpu avx512f
"""


def test_flags_of_the_first_cpu(tmp_path):
    f = tmp_path / "cpuinfo"
    f.write_text(EPYC)
    flags = cpu_flags(str(f))
    assert set(flags) == set(CPU_FLAGS)
    assert [k for k, v in flags.items() if v] == ["avx2", "fma", "f16c"]


def test_no_cpuinfo_is_unknown_not_an_error(tmp_path):
    assert cpu_flags(str(tmp_path / "missing")) is None
    (tmp_path / "noflags").write_bytes(b"\xff\xfe garbage\nmodel name: x\n")
    assert cpu_flags(str(tmp_path / "noflags")) is None


@pytest.mark.skipif(not Path("/proc/cpuinfo").is_file(), reason="Linux only: no /proc/cpuinfo")
def test_this_machine_agrees_with_lscpu():
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    line = next(ln for ln in lscpu.splitlines() if ln.startswith("Flags:"))
    have = set(line.split(":", 1)[1].split())
    assert cpu_flags() == {f: f in have for f in CPU_FLAGS}


def vllm(docker=None):
    spec = EngineSpec(name="v", kind="vllm", model="smollm2-135m", speculation={"method": "ngram", "n_spec": [0, 4]},
                      **({"launcher": "docker", "docker": docker} if docker else {}))
    return ENGINES["vllm"](spec)


AVX2 = {f: f in ("avx2", "fma") for f in CPU_FLAGS}
AVX512 = {**AVX2, "avx512f": True}


def test_vllm_on_a_cpu_without_avx512_says_so():
    (note,) = vllm().host_warnings(AVX2, [])
    assert note.startswith("vLLM on a CPU without AVX-512:")
    assert vllm().host_warnings(AVX512, []) == []
    assert vllm().host_warnings(AVX2, ["GPU 0: NVIDIA H200"]) == []  # a GPU build, not the CPU path
    assert vllm().host_warnings(None, []) == []  # unknown: no claim


def test_llama_server_has_nothing_to_warn_about():
    spec = EngineSpec(name="l", kind="llama-server", model="gemma-3-270m", speculation={"method": "ngram-mod", "n_spec": [0]})
    assert ENGINES["llama-server"](spec).host_warnings(AVX2, []) == []
