"""What a run was measured on, written to environment.json."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from importlib import metadata

from orchestrator import __version__


def capture(engines: dict[str, dict], host: tuple[dict[str, bool] | None, list[str]] | None = None) -> dict:
    """environment.json; `host`: (cpu_flags(), gpus()) when the caller has read them already."""
    flags, gpu = host if host is not None else (cpu_flags(), gpus())
    return {
        "orch_version": __version__,
        "python": sys.version.split()[0],
        "os": platform.platform(),
        "cpu": cpu_model(),
        "cpu_flags": flags,
        "cpu_count": os.cpu_count(),
        "memory_gib": _memory_gib(),
        "gpu": gpu,
        "engines": engines,
        "packages": {p: _version(p) for p in ("aiohttp", "httpx", "pandas", "matplotlib", "pydantic")},
    }


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# The instruction sets engines' CPU kernels are chosen by: vLLM's CPU path is built for AVX-512
# (and AMX on Sapphire Rapids and later); ggml picks AVX2 or AVX-512 kernels at build time.
CPU_FLAGS = ("avx2", "fma", "f16c", "avx_vnni", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16",
             "amx_tile", "amx_bf16", "amx_int8")


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> dict[str, bool] | None:
    """Which of CPU_FLAGS the first CPU reports; None where /proc/cpuinfo says nothing (not Linux)."""
    try:
        with open(cpuinfo, encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    have = set(line.split(":", 1)[-1].split())
                    return {flag: flag in have for flag in CPU_FLAGS}
    except OSError:
        pass
    return None


def gpus() -> list[str]:
    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [ln.strip() for ln in out.stdout.splitlines() if ln.strip()]


def _memory_gib() -> float | None:
    try:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        return round(pages * size / 2**30, 1)
    except (ValueError, OSError):
        return None


def _version(pkg: str) -> str | None:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return None
