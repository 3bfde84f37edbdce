"""What the sampler reads, one source per kind of counter. Each `read()` returns a flat dict of
numbers (cumulative counters and instantaneous gauges) or raises `Unavailable`; a source that
cannot exist on this host says why in `unavailable`, in words a report can print.

- `ProcessTree`: CPU seconds and resident memory of the server's process and all its children
  (psutil), the CPU host's cost.
- `Rapl`: package energy from Linux's powercap (RAPL), where /sys/class/powercap is readable.
- `Nvml`: per GPU memory, power, SM clock, utilization, temperature and the energy counter, with
  NVIDIA's own binding (nvidia-ml-py). `nvml` is injectable: tests hand it a fake, since no GPU
  exists on the machine that runs them.
- `SmiStream`: the same GPU figures from `nvidia-smi` run inside the engine's container, for a
  container on a remote Docker host, whose GPUs this process cannot open.
"""

from __future__ import annotations

import math
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pynvml  # imported with orch, not as a cell starts: a cold import would land in a cell's timed phases

POWERCAP = Path("/sys/class/powercap")
NO_GPU = "no GPU"
UNREADABLE = "GPU not readable"
UNSEEN = "GPU not visible to orch"


class Unavailable(Exception):
    """A source that cannot be read now (its process gone, a counter unreadable)."""


class ProcessTree:
    name = "process"
    RELIST_S = 5.0  # a server forks its workers before it is ready, not during a window

    def __init__(self, pid: int):
        self.pid = pid
        self.unavailable = None
        try:
            self.proc = psutil.Process(pid)
        except psutil.Error as exc:
            self.proc, self.unavailable = None, f"server process {pid} not readable ({type(exc).__name__})"
        self._gone: dict[int, float] = {}  # CPU seconds of children seen before they exited
        self._tree: list = []
        self._listed = -1e9

    def _members(self) -> list:
        """The process and its descendants, listed again at most every RELIST_S: psutil lists
        children by reading every process's parent, the costly part of a sample."""
        now = time.monotonic()
        if now - self._listed >= self.RELIST_S:
            try:
                self._tree = [self.proc, *self.proc.children(recursive=True)]
            except psutil.Error as exc:
                raise Unavailable(f"server process {self.pid} gone ({type(exc).__name__})") from exc
            self._listed = now
        return self._tree

    def read(self) -> dict:
        if self.proc is None:
            raise Unavailable(self.unavailable)
        cpu, rss, seen = 0.0, 0, {}
        for p in self._members():
            try:
                with p.oneshot():
                    t = p.cpu_times()
                    seen[p.pid] = t.user + t.system
                    rss += p.memory_info().rss
            except psutil.Error:
                continue  # exited between listing and reading: its last seconds stay in _gone
        # A child that exited takes its CPU seconds with it unless its parent waited for it;
        # keep the last reading so the cumulative counter never goes backwards.
        for pid, last in list(self._gone.items()):
            if pid not in seen:
                cpu += last
        self._gone.update(seen)
        cpu += sum(seen.values())
        return {"cpu_s": cpu, "rss_b": rss}


class Rapl:
    """Package energy (joules, cumulative) summed over the CPU packages, wrap-around undone."""

    name = "rapl"

    def __init__(self, root: Path = POWERCAP):
        # Top-level zones that are packages: Intel client machines also have "psys", the whole
        # platform, which already holds the package; adding it would count energy twice.
        self.zones = sorted(p for p in Path(root).glob("intel-rapl:*") if p.name.count(":") == 1 and _package(p))
        self.unavailable = None
        self._last: dict[Path, int] = {}
        self._total = 0.0
        if not self.zones:
            self.unavailable = f"no RAPL package zone under {root} (not exposed on this host or VM)"
            return
        try:
            self._range = {z: int((z / "max_energy_range_uj").read_text()) for z in self.zones}
            self._raw()
        except (OSError, ValueError) as exc:
            self.unavailable = f"RAPL energy_uj under {root} not readable ({type(exc).__name__}: needs root on most kernels)"

    def _raw(self) -> dict[Path, int]:
        return {z: int((z / "energy_uj").read_text()) for z in self.zones}

    def read(self) -> dict:
        if self.unavailable:
            raise Unavailable(self.unavailable)
        try:
            now = self._raw()
        except (OSError, ValueError) as exc:
            raise Unavailable(f"RAPL read failed ({type(exc).__name__})") from exc
        for zone, uj in now.items():
            last = self._last.get(zone, uj)
            step = uj - last if uj >= last else uj + self._range[zone] - last  # the counter wrapped
            self._total += step / 1e6
        self._last = now
        return {"energy_j": self._total}


class Nvml:
    """GPUs by index, read through NVML. `nvml` defaults to nvidia-ml-py's `pynvml`."""

    name = "nvml"

    def __init__(self, indices: list[int] | None, nvml=None):
        nvml = pynvml if nvml is None else nvml
        self.nvml, self.unavailable, self.handles, self.names = nvml, None, {}, {}
        try:
            nvml.nvmlInit()
        except nvml.NVMLError as exc:
            self.unavailable = f"{NO_GPU} (NVML: {exc})"
            return
        try:
            count = nvml.nvmlDeviceGetCount()
            wanted = list(range(count)) if indices is None else [i for i in indices if 0 <= i < count]
            if not wanted:
                self.unavailable = NO_GPU if count == 0 else f"{NO_GPU}: GPU ids {indices} not among NVML's {count}"
            else:
                self.handles = {i: nvml.nvmlDeviceGetHandleByIndex(i) for i in wanted}
                self.names = {i: _text(nvml.nvmlDeviceGetName(h)) for i, h in self.handles.items()}
                self._energy_ok = {i: self._energy(h) is not None for i, h in self.handles.items()}
        except nvml.NVMLError as exc:
            self.unavailable = f"{UNREADABLE} (NVML: {exc})"
        if self.unavailable:
            self.handles = {}
            self._shutdown()

    def _energy(self, handle) -> float | None:
        try:
            return self.nvml.nvmlDeviceGetTotalEnergyConsumption(handle) / 1000.0  # mJ since driver load
        except self.nvml.NVMLError:
            return None  # before Volta: energy is integrated from power samples instead

    FIELDS = (("mem", lambda n, h: n.nvmlDeviceGetMemoryInfo(h)),
              ("power_w", lambda n, h: n.nvmlDeviceGetPowerUsage(h) / 1000.0),  # mW
              ("sm_mhz", lambda n, h: float(n.nvmlDeviceGetClockInfo(h, n.NVML_CLOCK_SM))),
              ("util_pct", lambda n, h: float(n.nvmlDeviceGetUtilizationRates(h).gpu)),
              ("temp_c", lambda n, h: float(n.nvmlDeviceGetTemperature(h, n.NVML_TEMPERATURE_GPU))))

    def read(self) -> dict:
        """Each field on its own: a field this GPU does not support (utilization under MIG, say)
        is left out; a GPU whose memory and power both fail is not read at all."""
        if self.unavailable:
            raise Unavailable(self.unavailable)
        out, failed = {}, []
        for i, h in self.handles.items():
            got: dict[str, Any] = {}  # "mem" is NVML's memory struct, the rest floats
            for name, get in self.FIELDS:
                try:
                    got[name] = get(self.nvml, h)
                except self.nvml.NVMLError as exc:
                    failed.append(f"GPU {i} {name}: {exc}")
            if "mem" not in got and "power_w" not in got:
                raise Unavailable(f"NVML read of GPU {i} failed ({'; '.join(failed)})")
            mem = got.pop("mem", None)
            if mem is not None:
                got["mem_b"], got["mem_total_b"] = float(mem.used), float(mem.total)
            out.update({f"gpu{i}.{k}": v for k, v in got.items()})
            if self._energy_ok[i]:
                energy = self._energy(h)
                if energy is not None:
                    out[f"gpu{i}.energy_j"] = energy
        self.partial = failed  # kept for the window's `missing`
        return out

    def close(self) -> None:
        if not self.unavailable:
            self._shutdown()

    def _shutdown(self) -> None:
        try:
            self.nvml.nvmlShutdown()
        except self.nvml.NVMLError:
            pass


SMI_FIELDS = ("index", "name", "memory.used", "memory.total", "power.draw", "clocks.sm", "utilization.gpu", "temperature.gpu")
SMI_UNITS = {"memory.used": ("mem_b", 1024 * 1024), "memory.total": ("mem_total_b", 1024 * 1024), "power.draw": ("power_w", 1.0), "clocks.sm": ("sm_mhz", 1.0),
             "utilization.gpu": ("util_pct", 1.0), "temperature.gpu": ("temp_c", 1.0)}


def smi_command(interval_s: float) -> list[str]:
    """Every GPU the container sees (inside it they are numbered from 0), every interval_s."""
    return ["nvidia-smi", f"--query-gpu={','.join(SMI_FIELDS)}", "--format=csv,noheader,nounits",
            f"--loop-ms={max(1, round(interval_s * 1000))}"]


def parse_smi_line(line: str) -> tuple[int, str, dict]:
    """One CSV line of `nvidia-smi --query-gpu` as (index, name, fields); hostile: a line that is
    not SMI_FIELDS raises ValueError. "[N/A]" (a field this GPU does not report) is left out."""
    parts = [p.strip() for p in line.split(",")]
    if len(parts) != len(SMI_FIELDS) or not parts[0].isdecimal() or len(parts[0]) > 3:
        raise ValueError(f"not an nvidia-smi --query-gpu line: {line[:80]!r}")
    out = {}
    for field, text in zip(SMI_FIELDS[2:], parts[2:], strict=False):
        if text.startswith("[") or text in ("N/A", ""):
            continue
        value = float(text)
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{field} {text!r} is not a reading")
        stem, scale = SMI_UNITS[field]
        out[f"gpu{int(parts[0])}.{stem}"] = value * scale
    return int(parts[0]), parts[1][:100], out


class SmiStream:
    """The latest `nvidia-smi` readings from a stream of its lines (a `docker exec` in the engine's
    container). A reader thread parses lines as they come; `read()` returns the newest per GPU.
    nvidia-smi reports no energy counter in CSV, so energy is integrated from power."""

    name = "nvml"

    STALE_S = 1.0  # a reading older than this (or 3 intervals) is no reading

    def __init__(self, lines, interval_s: float = 0.1, clock=time.monotonic):
        self.unavailable: str | None = None
        self.names: dict[int, str] = {}
        self.clock = clock
        self.stale_s = max(self.STALE_S, 3 * interval_s)
        self._latest: dict[str, float] = {}
        self._at: float | None = None
        self._bad = 0
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._pump, args=(lines,), daemon=True, name="orch-smi")
        self._thread.start()

    def _pump(self, chunks) -> None:
        """Chunks of the exec's output, which may end mid-line: whole lines are parsed, the rest
        waits for the next chunk (bounded, so a stream with no newline cannot grow it)."""
        rest = ""
        try:
            for raw in chunks:
                text = rest + (raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw))
                *lines, rest = text.split("\n")
                if len(rest) > 4096:
                    self._bad, rest = self._bad + 1, ""
                for line in lines:
                    try:
                        index, name, fields = parse_smi_line(line)
                    except ValueError:
                        self._bad += 1
                        continue
                    with self._lock:
                        self._latest.update(fields)
                        self._at = self.clock()
                        self.names.setdefault(index, name)
        except Exception as exc:  # noqa: BLE001 - the exec's stream failing ends the readings, not the cell
            self.unavailable = f"nvidia-smi stream failed ({type(exc).__name__})"
        finally:
            self.unavailable = self.unavailable or f"nvidia-smi stream ended ({self._bad} unreadable lines)"

    def read(self) -> dict:
        """The newest readings, unless they are stale: a stream that ended or stalled gives none,
        so that power is never integrated from a last value held forever."""
        with self._lock:
            latest, at = dict(self._latest), self._at
        if not latest:
            raise Unavailable(f"{UNREADABLE}: nvidia-smi in the container printed no reading "
                              f"({self._bad} unreadable lines{'; ' + self.unavailable if self.unavailable else ''})")
        if self.clock() - at > self.stale_s:
            raise Unavailable(f"nvidia-smi's last reading is {self.clock() - at:.1f} s old"
                              + (f" ({self.unavailable})" if self.unavailable else ""))
        return latest


def _package(zone: Path) -> bool:
    try:
        return (zone / "name").read_text().strip().startswith("package")
    except OSError:
        return True  # no name file: a kernel that names no zones has packages only


def _text(value) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)
