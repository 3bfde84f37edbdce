"""One measured window's samples as figures: what the cell record keeps.

Counters (CPU seconds, joules) are cumulative; a window's figure is last minus first. Each
request gets its share of a counter: over every stretch of time, what the counter rose by is
split equally among the requests in flight then (at concurrency 1, a request's share is what the
counter rose by while it ran). What rose while no request ran (the gaps between requests) is the
window's only; so per-request joules per token leave idle power out, the window's total keeps it.
"""

from __future__ import annotations

import numpy as np

from orchestrator.types.records import GpuWindow, RequestCost, WindowTelemetry
from orchestrator.telemetry.sampler import Samples
from orchestrator.telemetry.sources import NO_GPU, UNREADABLE, UNSEEN

RAPL_SOURCE = "RAPL package energy"


def summarize_window(samples: Samples, spans: dict[str, tuple[float, float]],
                     gpu_names: dict[int, str] | None = None) -> WindowTelemetry:
    """`spans`: each measured request's key and its (t_start, t_end), on the samples' clock."""
    times = [r["t"] for r in samples.rows]
    seconds = times[-1] - times[0] if len(times) > 1 else 0.0
    cpu = _delta(samples, "cpu_s")
    gpu_energy = {i: _gpu_energy(samples, i) for i in _gpu_indices(samples)}  # each GPU's joules, once
    gpus = _gpus(samples, gpu_names or {}, gpu_energy)
    energy_t, energy, source = _energy(samples, gpus, gpu_energy)
    out = WindowTelemetry(seconds=round(seconds, 4), samples=len(times), interval_s=samples.interval_s,
                          sampler_cpu_s=round(samples.sampler_cpu_s, 4), missing=dict(samples.missing),
                          cpu_s=cpu, cpu_util=cpu / seconds if cpu is not None and seconds > 0 else None,
                          rss_peak_b=_peak(samples, "rss_b"), energy_source=source,
                          gpu=", ".join(f"{g.index}: {g.name}" for g in gpus) if gpus else _no_gpu(samples))
    if energy is not None:
        out.energy_j = float(energy[-1] - energy[0])
        span = energy_t[-1] - energy_t[0]  # the counter's own span: a source lost mid-window covers less
        out.power_mean_w = out.energy_j / span if span > 0 else None
    if gpus:
        out.gpus = gpus
    out.per_request = _per_request(samples, spans, energy_t, energy)
    return out


def _per_request(samples: Samples, spans, energy_t, energy) -> dict[str, RequestCost]:
    keys = list(spans)
    if not keys:
        return {}
    cpu_t, cpu = samples.series("cpu_s")
    slack = 1.5 * samples.interval_s
    cpu_share = _shares(cpu_t, cpu, [spans[k] for k in keys], slack)
    e_share = _shares(energy_t, energy, [spans[k] for k in keys], slack) if energy is not None else [None] * len(keys)
    return {k: RequestCost(cpu_s=cpu_share[i], energy_j=e_share[i]) for i, k in enumerate(keys)}


def _shares(times, cumulative, spans, slack: float) -> list[float | None]:
    """attribute(), and None for a request the counter's samples do not cover (a source lost
    before it ended, or read only after it began): its share is unknown, not zero."""
    if len(times) < 2:
        return [None] * len(spans)
    share = attribute(times, cumulative, spans)
    return [round(float(v), 6) if start >= times[0] - slack and end <= times[-1] + slack else None
            for v, (start, end) in zip(share, spans, strict=True)]


def attribute(times, cumulative, spans: list[tuple[float, float]]) -> np.ndarray:
    """Each span's share of a cumulative counter, split equally among the spans in flight over
    every stretch between samples and span ends (the counter linear between samples)."""
    times, cumulative = np.asarray(times, float), np.asarray(cumulative, float)
    starts = np.array([s for s, _ in spans], float)
    ends = np.array([e for _, e in spans], float)
    edges = np.unique(np.clip(np.concatenate([times, starts, ends]), times[0], times[-1]))
    rise = np.diff(np.interp(edges, times, cumulative))
    mids = (edges[:-1] + edges[1:]) / 2
    inflight = (starts[None, :] <= mids[:, None]) & (mids[:, None] < ends[None, :])
    n = inflight.sum(axis=1)
    share = np.divide(rise, n, out=np.zeros_like(rise), where=n > 0)
    return (inflight * share[:, None]).sum(axis=0)


def _delta(samples: Samples, name: str) -> float | None:
    _, values = samples.series(name)
    return round(values[-1] - values[0], 6) if len(values) > 1 else None


def _peak(samples: Samples, name: str) -> float | None:
    _, values = samples.series(name)
    return max(values) if values else None


def _mean(values) -> float | None:
    return float(np.mean(values)) if values else None


def _gpu_indices(samples: Samples) -> list[int]:
    return sorted({int(k[3:].split(".")[0]) for k in samples.fields() if k.startswith("gpu")})


def _gpus(samples: Samples, names: dict[int, str], gpu_energy: dict) -> list[GpuWindow]:
    out = []
    for i, (_, e) in gpu_energy.items():
        pre = f"gpu{i}."
        col = {stem: samples.series(pre + stem)[1]
               for stem in ("mem_b", "mem_total_b", "power_w", "sm_mhz", "util_pct", "temp_c")}
        g = GpuWindow(index=i, name=names.get(i, f"GPU {i}"), mem_peak_b=max(col["mem_b"], default=None),
                      mem_total_b=max(col["mem_total_b"], default=None),
                      power_mean_w=_mean(col["power_w"]), power_peak_w=max(col["power_w"], default=None),
                      sm_mhz_mean=_mean(col["sm_mhz"]), util_pct_mean=_mean(col["util_pct"]),
                      temp_c_peak=max(col["temp_c"], default=None))
        if e is not None:
            g.energy_j, g.energy_source = float(e[-1] - e[0]), ("NVML energy counter" if pre + "energy_j" in
                                                                 samples.fields() else "power integrated")
        out.append(g)
    return out


def _gpu_energy(samples: Samples, i: int) -> tuple[list[float], np.ndarray | None]:
    """GPU i's cumulative joules: NVML's counter where it has one, else power integrated."""
    t, e = samples.series(f"gpu{i}.energy_j")
    if len(t) > 1:
        return t, np.asarray(e)
    t, p = samples.series(f"gpu{i}.power_w")
    if len(t) < 2:
        return t, None
    steps = np.diff(t) * (np.asarray(p[1:]) + np.asarray(p[:-1])) / 2
    return t, np.concatenate([[0.0], np.cumsum(steps)])


def _energy(samples: Samples, gpus: list[GpuWindow], gpu_energy: dict):
    """(times, cumulative joules, source): the GPUs' together where there are GPUs, else RAPL."""
    if gpus:
        series = [(t, e) for t, e in gpu_energy.values() if e is not None]
        if series:
            grid = np.asarray(series[0][0])
            total = sum(np.interp(grid, t, e) for t, e in series)
            sources = sorted({g.energy_source for g in gpus if g.energy_source})
            return list(grid), total, f"GPU {'+'.join(str(g.index) for g in gpus)}: {', '.join(sources)}"
    t, e = samples.series("energy_j")
    if len(t) > 1:
        return t, np.asarray(e), RAPL_SOURCE
    why = samples.missing.get("rapl") or "no energy counter sampled"
    return [], None, f"unavailable: {why}"


def _no_gpu(samples: Samples) -> str:
    """Why the window has no GPU readings: "no GPU ..." only where there is none; a GPU that
    could not be read, or could not be seen, says so."""
    why = samples.missing.get("nvml")
    if not why:
        return NO_GPU
    return why if why.startswith((NO_GPU, UNREADABLE, UNSEEN)) else f"{UNREADABLE}: {why}"
