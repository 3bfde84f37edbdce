"""Telemetry: what a cell's server costs while it is measured, and the hardware's limit.

`CellTelemetry` opens a cell's sources once (its process tree, RAPL, its GPUs) from the
launcher's `Watch`; `window()` samples one measured window (sampler.py); `summarize_window`
(window.py) turns the samples into the cell record's figures; roofline.py the decode limit.
"""

from __future__ import annotations

from orchestrator.telemetry.sampler import Sampler, Samples
from orchestrator.telemetry.sources import NO_GPU, UNSEEN, Nvml, ProcessTree, Rapl, SmiStream, smi_command
from orchestrator.telemetry.window import summarize_window

__all__ = ["CellTelemetry", "Samples", "summarize_window"]


class CellTelemetry:
    """The sources of one cell, opened when its server is ready and closed when it stops.
    `nvml` and `rapl_root` are injectable (tests: a fake NVML, a fake powercap folder)."""

    def __init__(self, watch, interval_s: float = 0.1, nvml=None, rapl_root=None):
        self.interval_s, self.unseen, self.watch = interval_s, list(watch.unseen), watch
        self.sources: list[ProcessTree | Rapl | Nvml | SmiStream] = []
        if watch.pid is not None:
            self.sources.append(ProcessTree(watch.pid))
            self.sources.append(Rapl(rapl_root) if rapl_root else Rapl())
        self.gpu: Nvml | SmiStream | None = None
        if watch.smi_lines is not None:
            self.gpu = SmiStream(watch.smi_lines(smi_command(interval_s)), interval_s)
        elif watch.gpus:
            self.gpu = Nvml(watch.gpu_ids, nvml)
        if self.gpu is not None:
            self.sources.append(self.gpu)

    @property
    def gpu_names(self) -> dict[int, str]:
        return dict(getattr(self.gpu, "names", {}) or {}) if self.gpu is not None else {}

    @property
    def on_host_cpu(self) -> bool:
        """The server runs on this host with no GPU: no GPU given, or none that NVML finds (a
        GPU that is there but unreadable is not "none")."""
        local = self.watch.pid is not None and self.watch.smi_lines is None
        no_gpu = self.gpu is None or (isinstance(self.gpu, Nvml) and str(self.gpu.unavailable).startswith(NO_GPU))
        return local and no_gpu

    def window(self) -> Sampler:
        sampler = Sampler(self.sources, self.interval_s)
        if not self.watch.visible:
            sampler.samples.missing.setdefault("nvml", UNSEEN + " (an external server)")
        elif self.gpu is None:
            sampler.samples.missing.setdefault("nvml", NO_GPU + " given to this server")
        for note in self.unseen:
            sampler.samples.missing.setdefault("process", note)
        return sampler

    def summarize(self, samples: Samples, spans: dict):
        return summarize_window(samples, spans, self.gpu_names)

    def close(self) -> None:
        if isinstance(self.gpu, Nvml):
            self.gpu.close()
