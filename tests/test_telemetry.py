"""Telemetry: the sources against independent truth where this machine has it (a real process
tree that burns a known amount of CPU and holds a known amount of memory), and against fakes
where it cannot: this machine has no GPU and no RAPL, so NVML is a fake module (`FakeNvml`) and
RAPL a fake powercap folder. Both fakes follow the real interfaces (nvidia-ml-py's function
names and units: mW, mJ, bytes; powercap's energy_uj and max_energy_range_uj)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from orchestrator.launch.shared import Watch, visible_gpus
from orchestrator.types.records import CellRecord
from orchestrator.telemetry import CellTelemetry
from orchestrator.telemetry.sampler import Sampler, Samples
from orchestrator.telemetry.sources import Nvml, ProcessTree, Rapl, SmiStream, Unavailable, parse_smi_line, smi_command
from orchestrator.telemetry.window import attribute, summarize_window

from .support.fake_nvml import FakeNvml


# -- a real process tree -------------------------------------------------------------------------

BURN = textwrap.dedent("""
    import os, subprocess, sys, time
    if sys.argv[1] == "parent":
        # the parent sleeps; its child burns one core and holds 200 MB: the tree is what counts
        child = subprocess.Popen([sys.executable, "-c", sys.argv[2], "child"])
        child.wait()
    else:
        block = bytearray(200 * 2**20)
        for i in range(0, len(block), 4096):
            block[i] = 1
        t0 = time.process_time()
        while time.process_time() - t0 < 1.5:
            pass
        print(time.process_time(), flush=True)
        time.sleep(0.5)
""")


def burn_tree():
    return subprocess.Popen([sys.executable, "-c", BURN, "parent", BURN], stdout=subprocess.PIPE, text=True)


def test_the_process_tree_counts_a_childs_cpu_seconds_and_memory():
    proc = burn_tree()
    tree = ProcessTree(proc.pid)
    tree.RELIST_S = 0.0  # list the child as soon as it exists
    with Sampler([tree], interval_s=0.05) as samples:
        child_cpu = float(proc.stdout.readline())  # the child's own process_time after its burn
        time.sleep(0.2)
    proc.wait()
    t, cpu = samples.series("cpu_s")
    _, rss = samples.series("rss_b")
    assert cpu[-1] - cpu[0] == pytest.approx(child_cpu, abs=0.25)  # the child's seconds, seen from outside
    assert max(rss) > 200 * 2**20  # the child's 200 MB block, plus two interpreters
    assert all(b >= a for a, b in zip(cpu, cpu[1:], strict=False))  # cumulative: never backwards


def test_a_process_that_is_gone_is_unavailable_not_zero():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    tree = ProcessTree(proc.pid)
    with pytest.raises(Unavailable):
        tree.read()
    assert "not readable" in tree.unavailable


def test_the_sampler_thread_states_its_own_cpu_time():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1.5)"])
    with Sampler([ProcessTree(proc.pid)], interval_s=0.02) as samples:
        time.sleep(1.0)
    proc.kill()
    assert len(samples.rows) >= 10
    assert 0 < samples.sampler_cpu_s < 1.0


# -- RAPL (no powercap on this machine: a fake folder) -------------------------------------------

def powercap(tmp_path, energy_uj: int, max_uj: int = 1000_000_000):
    zone = tmp_path / "intel-rapl:0"
    zone.mkdir(exist_ok=True)
    (zone / "energy_uj").write_text(str(energy_uj))
    (zone / "max_energy_range_uj").write_text(str(max_uj))
    sub = tmp_path / "intel-rapl:0:0"  # a core sub-zone: inside the package, never added to it
    sub.mkdir(exist_ok=True)
    (sub / "energy_uj").write_text("5")
    (sub / "max_energy_range_uj").write_text(str(max_uj))
    return zone


def test_rapl_sums_package_energy_and_undoes_wrap_around(tmp_path):
    zone = powercap(tmp_path, 999_000_000)
    rapl = Rapl(tmp_path)
    first = rapl.read()["energy_j"]
    (zone / "energy_uj").write_text("1_000_000".replace("_", ""))  # wrapped: 1000 J past 999 J of 1000 J
    assert rapl.read()["energy_j"] - first == pytest.approx(2.0)  # 1 J to the wrap, 1 J after it


def test_rapl_that_is_absent_or_unreadable_says_why(tmp_path):
    assert "no RAPL package zone" in Rapl(tmp_path).unavailable
    zone = powercap(tmp_path, 10)
    (zone / "energy_uj").unlink()
    (zone / "energy_uj").mkdir()  # reading it fails as an unreadable file does
    assert "not readable" in Rapl(tmp_path).unavailable


# -- NVML (no GPU can exist on this machine: a fake of nvidia-ml-py's interface) ------------------


def test_nvml_reads_the_gpus_a_server_was_given():
    nvml = FakeNvml(count=4)
    gpu = Nvml([1, 3], nvml)
    row = gpu.read()
    assert gpu.names == {1: "NVIDIA H200 #1", 3: "NVIDIA H200 #3"}
    assert row["gpu1.mem_b"] == 11 * 2**30 and row["gpu3.power_w"] == 300.0
    assert row["gpu1.sm_mhz"] == 1980 and row["gpu1.util_pct"] == 97 and row["gpu3.temp_c"] == 61
    assert not any(k.startswith(("gpu0.", "gpu2.")) for k in row)


def test_no_driver_or_no_device_says_no_gpu_not_zero():
    missing = Nvml(None, FakeNvml(fail_init="NVML Shared Library Not Found"))
    assert missing.unavailable == "no GPU (NVML: NVML Shared Library Not Found)"
    assert Nvml(None, FakeNvml(count=0)).unavailable == "no GPU"
    assert "not among NVML's 2" in Nvml([5], FakeNvml(count=2)).unavailable
    with pytest.raises(Unavailable):
        missing.read()


def window_of(nvml, interval=0.1, spans=None, reads=6):
    """A window of `reads` samples 0.1 s apart, on a clock the test controls."""
    clock = iter(np.arange(reads) * 0.1)
    gpu = Nvml(None, nvml)
    sampler = Sampler([gpu], interval, clock=lambda: next(clock))
    for _ in range(reads):
        sampler._tick()
    return summarize_window(sampler.samples, spans or {}, gpu.names)


def test_energy_per_window_from_nvmls_counter():
    w = window_of(FakeNvml(count=2, power_w=300.0), spans={"a": (0.0, 0.5)})
    assert [g.energy_source for g in w.gpus] == ["NVML energy counter"] * 2
    assert w.energy_j == pytest.approx(2 * 300.0 * 0.5)  # two GPUs, 5 steps of 0.1 s at 300 W
    assert w.power_mean_w == pytest.approx(600.0)
    assert w.per_request["a"].energy_j == pytest.approx(300.0)
    assert w.gpu == "0: NVIDIA H200 #0, 1: NVIDIA H200 #1"
    assert w.gpus[1].mem_peak_b == 11 * 2**30 and w.gpus[0].temp_c_peak == 61
    assert w.gpus[0].mem_total_b == 141 * 2**30


def test_energy_integrated_from_power_where_the_gpu_has_no_counter():
    w = window_of(FakeNvml(count=1, power_w=250.0, energy=False))
    assert w.gpus[0].energy_source == "power integrated"
    assert w.energy_j == pytest.approx(250.0 * 0.5)


def test_a_gpu_lost_mid_window_is_recorded_missing_and_the_window_goes_on():
    nvml = FakeNvml(count=1)
    gpu = Nvml(None, nvml)
    with Sampler([gpu], 0.01) as samples:
        time.sleep(0.05)
        nvml.broken.add(0)
        time.sleep(0.05)
    assert "GPU is lost" in samples.missing["nvml"]
    assert samples.rows[-1].keys() == {"t"}


def test_cuda_visible_devices_picks_nvml_indices():
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "2,3"}) == [2, 3]
    assert visible_gpus({}) is None
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "GPU-6f1c2e3a"}) is None  # UUIDs: every GPU


def test_a_cell_with_no_gpu_says_so_in_its_record(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(2)"])
    tele = CellTelemetry(Watch(pid=proc.pid, gpus=False), 0.02, rapl_root=tmp_path)
    with tele.window() as samples:
        time.sleep(0.1)
    proc.kill()
    w = tele.summarize(samples, {})
    assert w.gpu == "no GPU given to this server" and w.gpus is None
    assert w.energy_source.startswith("unavailable: no RAPL package zone")
    assert w.energy_j is None and w.cpu_s is not None


# -- nvidia-smi inside a remote container (its output is hostile input) --------------------------

def test_smi_lines_parse_with_their_units_and_na_left_out():
    index, name, row = parse_smi_line("1, NVIDIA H100 80GB HBM3, 40960, 81559, 312.45, 1980, 99, 64")
    assert (index, name) == (1, "NVIDIA H100 80GB HBM3")
    assert row == {"gpu1.mem_b": 40960 * 2**20, "gpu1.mem_total_b": 81559 * 2**20, "gpu1.power_w": 312.45,
                   "gpu1.sm_mhz": 1980.0, "gpu1.util_pct": 99.0, "gpu1.temp_c": 64.0}
    assert "gpu0.power_w" not in parse_smi_line("0, Tesla T4, 100, 15360, [N/A], 585, 0, 40")[2]


@pytest.mark.parametrize("line", ["", "garbage", "0, A, 1, 9, 2, 3, 4", "0, A, 1, 9, nan, 3, 4, 5",
                                  "0, A, 1, 9, -5, 3, 4, 5", "99999, A, 1, 9, 2, 3, 4, 5", "0, A, 1, 9, inf, 3, 4, 5",
                                  "x, A, 1, 9, 2, 3, 4, 5", "0, A, B, C, 1, 9, 2, 3, 4, 5"])
def test_smi_lines_that_are_not_readings_are_refused(line):
    with pytest.raises(ValueError):
        parse_smi_line(line)


def test_the_smi_stream_joins_lines_split_across_chunks_and_skips_bad_ones():
    chunks = [b"0, NVIDIA H200, 1024, 143771, 30", b"0.5, 1980, 50, 40\nnot a line\n",
              b"0, NVIDIA H200, 2048, 143771, 40", b"0.0, 1980, 90, 41\n" + b"x" * 10000]
    stream = SmiStream(iter(chunks))
    stream._thread.join(2)
    row = stream.read()
    assert row["gpu0.mem_b"] == 2048 * 2**20 and row["gpu0.power_w"] == 400.0
    assert stream.names == {0: "NVIDIA H200"} and stream._bad == 2  # "not a line", the 10 kB line
    assert smi_command(0.1)[-1] == "--loop-ms=100"


def test_a_stream_with_no_reading_is_unavailable():
    stream = SmiStream(iter([b"nvidia-smi: command not found\n"]))
    stream._thread.join(2)
    with pytest.raises(Unavailable, match="GPU not readable: nvidia-smi in the container printed no reading"):
        stream.read()


# -- each request's share ------------------------------------------------------------------------

def test_sequential_requests_get_what_rose_while_each_ran_and_the_gap_is_nobodys():
    t = np.arange(0, 3.01, 0.1)
    counter = 10 * t  # 10 units per second
    share = attribute(t, counter, [(0.0, 1.0), (1.5, 2.5)])
    assert share == pytest.approx([10.0, 10.0])  # the 0.5 s gaps at 1.0-1.5 and 2.5-3.0 are idle


def test_overlapping_requests_split_what_rose_while_both_ran():
    t = np.arange(0, 2.01, 0.1)
    share = attribute(t, 10 * t, [(0.0, 2.0), (1.0, 2.0)])
    assert share == pytest.approx([15.0, 5.0])  # alone for 1 s (10), then half of 10
    assert share.sum() == pytest.approx(20.0)  # nothing counted twice


def test_window_telemetry_reads_back_as_hostile_input(tmp_path):
    from orchestrator.results.readback import read_records

    good = CellRecord(cell_id="a-n0", engine="a", method="none", n_spec=0, status="ok").line()
    bad = dict(good, telemetry={"1": {"seconds": -1, "samples": 3, "interval_s": 0.1}})
    keyed = dict(good, telemetry={"x" * 5000: {"seconds": 1, "samples": 3, "interval_s": 0.1}})
    path = tmp_path / "cells.jsonl"
    import json

    path.write_text("\n".join(json.dumps(x) for x in (good, bad, keyed)) + "\n")
    recs, warnings = read_records(path, CellRecord)
    assert len(recs) == 3 and all(r.telemetry is None for r in recs)  # the bad field dropped, the cell kept
    assert warnings


def test_samples_series_only_where_a_field_was_read():
    s = Samples(0.1, ["x"], rows=[{"t": 0.0, "a": 1.0}, {"t": 0.1}, {"t": 0.2, "a": 3.0}])
    assert s.series("a") == ([0.0, 0.2], [1.0, 3.0])


# -- regressions from a hostile review of the first version ------------------------------------

def test_a_field_the_gpu_does_not_support_leaves_out_that_field_only():
    class Mig(FakeNvml):  # utilization is "Not Supported" on a MIG-enabled board
        def nvmlDeviceGetUtilizationRates(self, h):
            raise self.NVMLError("Not Supported")

    w = window_of(Mig(count=1))
    assert w.gpus[0].util_pct_mean is None and w.gpus[0].power_mean_w == 300.0 and w.energy_j > 0
    assert "util_pct: Not Supported" in w.missing["nvml fields"] and w.gpu == "0: NVIDIA H200 #0"


def test_a_request_after_the_gpu_was_lost_has_no_share_not_zero():
    nvml = FakeNvml(count=1, power_w=300.0)
    gpu = Nvml(None, nvml)
    clock = iter(np.arange(20) * 0.1)
    sampler = Sampler([gpu], 0.1, clock=lambda: next(clock))
    for i in range(20):
        if i == 10:
            nvml.broken.add(0)
        sampler._tick()
    w = summarize_window(sampler.samples, {"before": (0.0, 0.9), "after": (1.2, 1.9)}, gpu.names)
    assert w.per_request["before"].energy_j == pytest.approx(270.0) and w.per_request["after"].energy_j is None
    assert w.power_mean_w == pytest.approx(300.0)  # over the counter's own 0.9 s, not the window's 1.9 s
    assert "GPU is lost" in w.missing["nvml"]


def test_rapl_counts_packages_not_the_platform_zone_that_holds_them(tmp_path):
    zone = powercap(tmp_path, 1_000_000)
    (zone / "name").write_text("package-0\n")
    psys = tmp_path / "intel-rapl:1"
    psys.mkdir()
    (psys / "name").write_text("psys\n")
    (psys / "energy_uj").write_text("5000000")
    (psys / "max_energy_range_uj").write_text("1000000000")
    rapl = Rapl(tmp_path)
    first = rapl.read()["energy_j"]
    (zone / "energy_uj").write_text("11000000")
    (psys / "energy_uj").write_text("30000000")
    assert rapl.read()["energy_j"] - first == pytest.approx(10.0)


def test_an_external_server_is_not_seen_which_is_not_no_gpu():
    from orchestrator.analysis.cost import _window_figures

    tele = CellTelemetry(Watch(gpus=False, visible=False, unseen=["an external server"]), 0.05)
    with tele.window() as samples:
        time.sleep(0.06)
    w = tele.summarize(samples, {})
    assert w.gpu == "GPU not visible to orch (an external server)" and not tele.on_host_cpu
    assert "gpu_power_w_mean" not in _window_figures(w)  # empty in summary.csv, not "no GPU"


def test_nvidia_smi_readings_that_stopped_are_stale_not_held():
    now = [0.0]
    stream = SmiStream(iter([b"0, NVIDIA H200, 1024, 143771, 300.0, 1980, 90, 41\n"]), 0.1, clock=lambda: now[0])
    stream._thread.join(2)
    assert stream.read()["gpu0.power_w"] == 300.0
    now[0] = 5.0
    with pytest.raises(Unavailable, match="last reading is 5.0 s old .*stream ended"):
        stream.read()


def test_nvml_that_fails_after_init_is_shut_down_and_cpu_telemetry_stays():
    class Flaky(FakeNvml):
        shutdowns = 0

        def nvmlDeviceGetHandleByIndex(self, i):
            raise self.NVMLError("Unknown Error")

        def nvmlShutdown(self):
            Flaky.shutdowns += 1

    gpu = Nvml(None, Flaky(count=1))
    assert gpu.unavailable == "GPU not readable (NVML: Unknown Error)" and Flaky.shutdowns == 1
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(2)"])
    tele = CellTelemetry(Watch(pid=proc.pid), 0.02, nvml=Flaky(count=1))
    with tele.window() as samples:
        time.sleep(0.1)
    proc.kill()
    w = tele.summarize(samples, {})
    assert w.cpu_s is not None and w.gpu.startswith("GPU not readable") and not tele.on_host_cpu


def test_a_roofline_with_a_limit_but_no_basis_is_dropped_on_reading_back(tmp_path):
    import json

    from orchestrator.analysis.summary import summarize
    from orchestrator.results.readback import read_records

    from .support.runs import req, requests_of

    line = CellRecord(cell_id="e-n0", engine="e", method="none", n_spec=0, status="ok").line()
    (tmp_path / "cells.jsonl").write_text(json.dumps(dict(line, roofline={"limit_tok_s": 50})) + "\n")
    (cell,), warnings = read_records(tmp_path / "cells.jsonl", CellRecord)
    assert cell.roofline is None and warnings
    summarize(requests_of([req("e-n0", 0, 40, key="a")]), [cell])  # no crash
