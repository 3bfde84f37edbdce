"""`orch doctor`: what this host can launch (Docker, the NVIDIA runtime, GPUs, disk, local engines),
and the command that fixes each missing piece."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from engines import ENGINES

from orchestrator.common.show import printable


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""


def run_checks(docker_host: str | None = None) -> list[Check]:
    checks = _docker_checks(docker_host)
    checks.append(_gpus())
    checks.append(_disk())
    return checks + [_local_engine(cls()) for cls in ENGINES.values() if cls.installer]


def _local_engine(engine) -> Check:
    """An engine that runs as a local process: found on PATH or in orch's cache, or how to get it."""
    found = engine.default_binary()
    name = engine.installer.name
    return Check(f"{name} (local)", bool(found), str(found or "not installed"), "" if found else engine.install_hint)


def _docker_checks(docker_host: str | None) -> list[Check]:
    from orchestrator.launch.docker import DockerUnavailable, client_for

    try:
        client = client_for(docker_host)
    except DockerUnavailable as exc:
        return [Check("docker", False, str(exc).split(";")[0],
                      "start dockerd (sudo systemctl start docker), or set DOCKER_HOST=ssh://user@gpu-host")]
    info = client.info()
    runtimes = sorted(info.get("Runtimes", {}))
    nvidia = "nvidia" in runtimes
    return [Check("docker", True, f"server {client.version().get('Version', '?')} at "
                  f"{docker_host or os.environ.get('DOCKER_HOST') or 'the local socket'}"),
            Check("nvidia container runtime", nvidia, f"runtimes: {', '.join(runtimes)}",
                  "" if nvidia else "install nvidia-container-toolkit, then nvidia-ctk runtime configure "
                                    "--runtime=docker and restart dockerd")]


def _gpus() -> Check:
    if not shutil.which("nvidia-smi"):
        return Check("GPUs", False, "nvidia-smi not found on this host",
                     "install the NVIDIA driver, or run GPU scenarios with DOCKER_HOST pointing at a GPU host")
    out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20)
    gpus = [ln for ln in out.stdout.splitlines() if ln.strip()]
    return Check("GPUs", bool(gpus), "; ".join(gpus) or out.stderr.strip()[:120],
                 "" if gpus else "check the NVIDIA driver (nvidia-smi)")


def _disk() -> Check:
    cache = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface"))
    probe = cache if cache.exists() else Path.home()
    free_gb = shutil.disk_usage(probe).free / 1e9
    ok = free_gb >= 50
    return Check("disk for the model cache", ok, f"{free_gb:.0f} GB free under {probe}",
                 "" if ok else "free space or set HF_HOME to a larger disk (a 31B FP8 model needs ~35 GB)")


def format_checks(checks: list[Check]) -> str:
    lines = []
    for c in checks:
        # detail: the Docker engine's, nvidia-smi's or an exception's words, one line each
        lines.append(f"{'ok ' if c.ok else 'MISSING'} {c.name}: {printable(c.detail)}")
        if c.fix:
            lines.append(f"        fix: {c.fix}")
    return "\n".join(lines)


def doctor_text(docker_host: str | None = None) -> str:
    """`orch doctor`: every check run, one line each with its fix."""
    return format_checks(run_checks(docker_host))
