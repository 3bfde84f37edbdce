"""The single-stream decode limit: every weight is read once per generated token, so a model of
B bytes on memory of W bytes/s decodes at most W / B tokens per second, one stream, no
speculation. Speculation beats it by verifying several tokens per read; batching by sharing one
read among streams. A cell's decode tok/s as a share of this limit says how close plain decoding
runs to the hardware, and how far past it speculation takes it.

- Bytes: the tensors of the model file orch resolved (GGUF through the `gguf` package, the
  header of each .safetensors file), or a scenario's `roofline.weight_gb` for a hub model orch
  has not downloaded. Only the target's: a draft model's reads are part of what speculation costs.
- Bandwidth: a scenario's `roofline.bandwidth_gb_s`; else the GPU's datasheet figure
  (`KNOWN_GPUS`); else, on a CPU host, a copy benchmark measured at `orch setup` and cached.

Both measurements are cached under orch's cache (`roofline.json`), keyed by what they measured,
because reading a GGUF's tensor table takes seconds and the copy benchmark wants a quiet machine.
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
import threading
import time
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any

import numpy as np

from orchestrator.types.records import Roofline


@dataclass(frozen=True)
class Gpu:
    pattern: str  # matched against NVML's name, case-insensitively
    name: str
    tb_s: float
    source: str


# Peak memory bandwidth from each vendor's datasheet; the source names the page.
KNOWN_GPUS = [
    Gpu("RTX PRO 6000", "RTX PRO 6000 Blackwell", 1.792, "NVIDIA RTX PRO 6000 Blackwell datasheet: 1792 GB/s GDDR7"),
    Gpu("H200", "H200", 4.8, "NVIDIA H200 datasheet: 4.8 TB/s HBM3e"),
    Gpu("H100 PCIe", "H100 PCIe", 2.0, "NVIDIA H100 datasheet (PCIe): 2.0 TB/s HBM2e"),
    Gpu("H100 NVL", "H100 NVL", 3.9, "NVIDIA H100 datasheet (NVL): 3.9 TB/s HBM3"),
    Gpu("H100", "H100 SXM", 3.35, "NVIDIA H100 datasheet (SXM): 3.35 TB/s HBM3"),
    Gpu("B200", "B200", 8.0, "NVIDIA DGX B200 / HGX B200 datasheet: 8 TB/s HBM3e per GPU"),
    Gpu("A100-SXM4-80GB", "A100 80GB SXM", 2.039, "NVIDIA A100 datasheet: 2039 GB/s (80GB SXM)"),
    Gpu("A100 80GB PCIe", "A100 80GB PCIe", 1.935, "NVIDIA A100 datasheet: 1935 GB/s (80GB PCIe)"),
    Gpu("A100", "A100 40GB", 1.555, "NVIDIA A100 datasheet: 1555 GB/s (40GB)"),
    Gpu("L40S", "L40S", 0.864, "NVIDIA L40S datasheet: 864 GB/s GDDR6"),
    Gpu("L40", "L40", 0.864, "NVIDIA L40 datasheet: 864 GB/s GDDR6"),
    Gpu("L4", "L4", 0.3, "NVIDIA L4 datasheet: 300 GB/s GDDR6"),
    Gpu("A10G", "A10G", 0.6, "AWS G5 (A10G): 600 GB/s GDDR6"),
    Gpu("A10", "A10", 0.6, "NVIDIA A10 datasheet: 600 GB/s GDDR6"),
    Gpu("RTX 5090", "GeForce RTX 5090", 1.792, "NVIDIA GeForce RTX 5090 specifications: 1792 GB/s GDDR7"),
    Gpu("RTX 4090", "GeForce RTX 4090", 1.008, "NVIDIA GeForce RTX 4090 specifications: 1008 GB/s GDDR6X"),
]


def known_gpu(name: str) -> Gpu | None:
    """The table's entry for an NVML device name or a scenario's `roofline.gpu`: a name the table
    lists, else the first pattern found as whole words ("L4" is not "L40", "A100" not "RTX A1000",
    "H200" not "GH200")."""
    low = name.lower().strip()
    named = next((g for g in KNOWN_GPUS if g.name.lower() == low), None)
    return named or next((g for g in KNOWN_GPUS
                          if re.search(rf"(?<!\w){re.escape(g.pattern.lower())}(?!\w)", low)), None)


def limit_tok_s(weight_bytes: int, bandwidth_gb_s: float) -> float:
    return bandwidth_gb_s * 1e9 / weight_bytes


# -- bytes of weights ------------------------------------------------------------------------

class WeightsUnknown(Exception):
    pass


def weight_bytes(path: PurePath) -> tuple[int, str]:
    """(bytes of tensors, where from) of a GGUF file, a .safetensors file, or an HF folder."""
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.safetensors"))
        if not files:
            raise WeightsUnknown(f"no .safetensors file in {path}; set roofline.weight_gb")
        return sum(_safetensors_bytes(f) for f in files), f"{len(files)} safetensors file(s) in {path.name}"
    if path.suffix == ".safetensors":
        return _safetensors_bytes(path), f"safetensors {path.name}"
    shards = _shards(path)
    total = sum(_gguf_bytes(p) for p in shards)
    if total <= 0:
        raise WeightsUnknown(f"{path.name} holds no tensors")
    if len(shards) > 1:
        return total, f"GGUF tensors of {path.name} and its {len(shards) - 1} other shard(s)"
    return total, f"GGUF tensors of {path.name}"


SPLIT = re.compile(r"^(?P<stem>.+)-(?P<i>\d{5})-of-(?P<n>\d{5})\.gguf$")


def _shards(path: Path) -> list[Path]:
    """A split GGUF (llama.cpp's `-00001-of-00003.gguf`, whose first file llama.cpp loads with
    the rest): every shard, each of which must be there."""
    m = SPLIT.match(path.name)
    if not m:
        return [path]
    n = int(m["n"])
    shards = [path.with_name(f"{m['stem']}-{i:05d}-of-{n:05d}.gguf") for i in range(1, n + 1)]
    absent = [p.name for p in shards if not p.is_file()]
    if absent:
        raise WeightsUnknown(f"{path.name} is shard {int(m['i'])} of {n}, and {absent[0]} is not beside it")
    return shards


def _gguf_bytes(path: Path) -> int:
    import gguf  # llama.cpp's own reader; a few seconds for a 262k-token vocabulary, hence the cache

    try:
        reader = gguf.GGUFReader(str(path))
        return sum(int(t.n_bytes) for t in reader.tensors)
    except (ValueError, KeyError, IndexError, OSError, struct.error) as exc:
        raise WeightsUnknown(f"{path.name} is not a readable GGUF ({type(exc).__name__}: {str(exc)[:80]})") from exc


MAX_HEADER = 100 * 2**20  # safetensors' own limit on the JSON header


def _safetensors_bytes(path: Path) -> int:
    """Sum of the tensors' data spans in a .safetensors header (hostile: bounded, checked)."""
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > MAX_HEADER:
                raise WeightsUnknown(f"{path.name}: header of {n} bytes is past safetensors' limit")
            header = json.loads(f.read(n))
        spans = [v["data_offsets"] for k, v in header.items() if k != "__metadata__"]
        total = sum(int(b) - int(a) for a, b in spans)
    except (OSError, ValueError, struct.error, TypeError, KeyError, AttributeError, OverflowError,
            RecursionError) as exc:
        raise WeightsUnknown(f"{path.name} is not a readable .safetensors file ({type(exc).__name__})") from exc
    if total <= 0:
        raise WeightsUnknown(f"{path.name} holds no tensor data")
    return total


# -- CPU memory bandwidth ----------------------------------------------------------------------

def copy_bandwidth(mib: int = 512, repeats: int = 5, threads: int | None = None) -> float:
    """GB/s of a STREAM-style copy (bytes read + bytes written), best of `repeats`, one numpy
    copy per thread over its share of a buffer larger than any cache. numpy releases the GIL in
    copyto, so the threads copy in parallel, as an engine's threads read weights."""
    threads = threads or len(os.sched_getaffinity(0))
    n = mib * 2**20 // 8
    src, dst = np.ones(n), np.empty(n)
    parts = np.array_split(np.arange(n), threads)
    bounds = [(int(p[0]), int(p[-1]) + 1) for p in parts if len(p)]

    def one(a: int, b: int) -> None:
        np.copyto(dst[a:b], src[a:b])

    best = float("inf")
    for _ in range(repeats):
        workers = [threading.Thread(target=one, args=ab) for ab in bounds]
        t0 = time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        best = min(best, time.perf_counter() - t0)
    return 2 * n * 8 / best / 1e9


# -- the cache ---------------------------------------------------------------------------------

def _cache_path(cache: Path) -> Path:
    return Path(cache) / "roofline.json"


def _load(cache: Path) -> dict:
    """The cache, hostile: anything but {"cpu": {...}, "weights": {...}} is read as empty."""
    try:
        data = json.loads(_cache_path(cache).read_text())
    except (OSError, ValueError, RecursionError):
        data = {}
    data = data if isinstance(data, dict) else {}
    return {k: data[k] if isinstance(data.get(k), dict) else {} for k in ("cpu", "weights")}


def _positive(value) -> bool:
    return type(value) in (int, float) and math.isfinite(value) and value > 0


def _save(cache: Path, data: dict) -> None:
    path = _cache_path(cache)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    tmp.replace(path)


def host_key() -> str:
    """What a copy benchmark measured: this CPU model, the cores this process may use, its memory."""
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**30
    return f"{model} | {len(os.sched_getaffinity(0))} cores | {mem} GiB"


def cpu_bandwidth(cache: Path, measure: bool = True) -> tuple[float | None, str]:
    """(GB/s, source) of this host, measured once and cached; (None, why) when not measured and
    `measure` is False."""
    data, key = _load(cache), host_key()
    entry = data["cpu"].get(key)
    if isinstance(entry, dict) and _positive(entry.get("gb_s")):
        return float(entry["gb_s"]), f"copy benchmark at orch setup, {str(entry.get('when', '?'))[:10]}"
    if not measure:
        return None, "this host's memory bandwidth is not measured yet: run `orch setup`"
    gb_s = round(copy_bandwidth(), 2)
    data["cpu"][key] = {"gb_s": gb_s, "when": time.strftime("%Y-%m-%d")}
    _save(cache, data)
    return gb_s, f"copy benchmark at orch setup, {time.strftime('%Y-%m-%d')}"


def model_bytes(path: PurePath, cache: Path) -> tuple[int, str]:
    """weight_bytes(path), cached by path, size and modification time."""
    st = Path(path).stat()
    key = f"{Path(path).resolve()}|{st.st_size}|{st.st_mtime_ns}"
    data = _load(cache)
    hit = data["weights"].get(key)
    if isinstance(hit, list) and len(hit) == 2 and type(hit[0]) is int and hit[0] > 0:
        return hit[0], str(hit[1])[:200]
    n, source = weight_bytes(path)
    data["weights"][key] = [n, source]
    _save(cache, data)
    return n, source


# -- one cell ----------------------------------------------------------------------------------

def roofline_for(path: PurePath | None, gpu_names: list[str], cache: Path, weight_gb: float | None = None,
                 bandwidth_gb_s: float | None = None, gpu: str | None = None, on_host_cpu: bool = False) -> Roofline:
    """A cell's roofline from its model file (or `weight_gb`) and its hardware: `bandwidth_gb_s`,
    else `gpu` or the first sampled GPU's name in KNOWN_GPUS, else, for a server on this host
    with no GPU, the copy benchmark `orch setup` cached (never measured mid-sweep)."""
    out: dict[str, Any] = {}  # Roofline's fields, of several types, validated at the end
    try:
        if weight_gb is not None:
            out.update(weight_bytes=int(weight_gb * 1e9), weight_source="scenario roofline.weight_gb")
        elif path is not None:
            out["weight_bytes"], out["weight_source"] = model_bytes(path, cache)
        else:
            out["unknown"] = "the model is a hub name orch has not downloaded: set roofline.weight_gb"
    except (WeightsUnknown, OSError) as exc:
        out["unknown"] = str(exc)
    if out.get("weight_bytes", 1) <= 0:
        out = {"unknown": "no bytes of weights: set roofline.weight_gb"}
    gb_s, source = _bandwidth(gpu_names, cache, bandwidth_gb_s, gpu, on_host_cpu)
    out.update(bandwidth_gb_s=gb_s, bandwidth_source=source)
    if gb_s is None:
        out["unknown"] = out.get("unknown") or source
    if out.get("weight_bytes") and gb_s:
        out["limit_tok_s"] = round(limit_tok_s(out["weight_bytes"], gb_s), 3)
    return Roofline.model_validate(out)


def _bandwidth(gpu_names: list[str], cache: Path, override: float | None, gpu: str | None, on_host_cpu: bool):
    if override is not None:
        return override, "scenario roofline.bandwidth_gb_s"
    for name in ([gpu] if gpu else gpu_names):
        found = known_gpu(name)
        if found:
            return found.tb_s * 1000, found.source
    if gpu or gpu_names:
        return None, (f"GPU {(gpu or gpu_names[0])!r} is not in orch's table of known GPUs: "
                      "set roofline.bandwidth_gb_s")
    if not on_host_cpu:
        return None, ("the server's hardware is not known here (an external server, a remote container "
                      "without GPU readings, or a GPU NVML could not read): set roofline.gpu or roofline.bandwidth_gb_s")
    return cpu_bandwidth(cache, measure=False)
