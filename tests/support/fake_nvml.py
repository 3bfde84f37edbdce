"""A fake of nvidia-ml-py's interface, for machines without a GPU (test_telemetry, test_placement)."""

from __future__ import annotations


class FakeNvml:
    """nvidia-ml-py's functions used by orch, with its units: power in mW, energy in mJ since the
    driver loaded, memory in bytes. Each read advances time by one `step_s` at `power_w`."""

    NVML_CLOCK_SM = 1
    NVML_TEMPERATURE_GPU = 0

    class NVMLError(Exception):
        pass

    def __init__(self, count=2, power_w=300.0, energy=True, fail_init=None, names=None):
        self.count, self.power_w, self.energy, self.fail_init = count, power_w, energy, fail_init
        self.names = names or {i: f"NVIDIA H200 #{i}" for i in range(count)}
        self.mj = {i: 1_000_000 for i in range(count)}
        self.reads, self.broken = 0, set()

    def nvmlInit(self):
        if self.fail_init:
            raise self.NVMLError(self.fail_init)

    def nvmlShutdown(self):
        pass

    def nvmlDeviceGetCount(self):
        return self.count

    def nvmlDeviceGetHandleByIndex(self, i):
        return i

    def nvmlDeviceGetName(self, h):
        return self.names[h]

    def nvmlDeviceGetMemoryInfo(self, h):
        if h in self.broken:
            raise self.NVMLError("GPU is lost")
        return type("Mem", (), {"used": (10 + h) * 2**30, "total": 141 * 2**30})()

    def nvmlDeviceGetPowerUsage(self, h):
        if h in self.broken:
            raise self.NVMLError("GPU is lost")
        return int(self.power_w * 1000)

    def nvmlDeviceGetClockInfo(self, h, kind):
        assert kind == self.NVML_CLOCK_SM
        return 1980

    def nvmlDeviceGetUtilizationRates(self, h):
        return type("Util", (), {"gpu": 97, "memory": 60})()

    def nvmlDeviceGetTemperature(self, h, sensor):
        return 61

    def nvmlDeviceGetTotalEnergyConsumption(self, h):
        if not self.energy:
            raise self.NVMLError("Not Supported")
        self.mj[h] += int(self.power_w * 1000 * 0.1)  # 0.1 s at power_w per read
        return self.mj[h]
