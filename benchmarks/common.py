"""What every benchmark prints first: the machine it ran on (figures mean nothing without).

Imported by the scripts beside it (``python benchmarks/X.py`` puts this folder on
``sys.path``); no project code and no torch import at module level, so the Serve
benchmark can use it without loading a model.
"""

from __future__ import annotations

import os
import platform
import sys
import threading


def cpu_model() -> str:
    """``model name`` from ``/proc/cpuinfo`` (Linux), else what :mod:`platform` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device: str | None = None) -> str:
    """One line: host, CPU model and cores, torch version and threads (if torch is loaded),
    the GPU for a CUDA ``device``, and the 1-minute load average (shared boxes)."""
    out = f"{platform.node()} | CPU {cpu_model()}, {os.cpu_count()} cores"
    torch = sys.modules.get("torch")
    if torch is not None:
        out += f" | torch {torch.__version__}, {torch.get_num_threads()} threads"
        if str(device or "").startswith("cuda") and torch.cuda.is_available():
            out += f" | GPU {torch.cuda.get_device_name(torch.device(device))}"
    try:
        out += f" | load avg {os.getloadavg()[0]:.1f}"
    except OSError:
        pass
    return out


class PeakMemory:
    """Peak process RSS (CPU, sampled every 5 ms) or peak CUDA allocation."""

    def __init__(self, device):  # a torch.device
        self.device, self.peak, self._stop = device, 0, threading.Event()

    def __enter__(self):
        import torch

        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            import psutil

            proc = psutil.Process()
            self.peak = proc.memory_info().rss

            def sample():
                while not self._stop.wait(0.005):
                    self.peak = max(self.peak, proc.memory_info().rss)

            self._thread = threading.Thread(target=sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device)
        else:
            self._stop.set()
            self._thread.join()

    @property
    def gib(self) -> float:
        return self.peak / 2**30
