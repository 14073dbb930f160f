"""Wall time and peak memory of one call, for the benchmark scripts (not part of the package).

CPU: the largest growth of the process's resident set over its size before the call, sampled every
2 ms by a thread (allocations freed within 2 ms can be missed; a lower bound). GPU:
``torch.cuda.max_memory_allocated`` over the allocation before the call.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any


def rss_bytes() -> int:
    """The resident set size of this process (Linux ``/proc/self/statm``)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def timed(call: Callable[[], Any], device: str = "cpu") -> tuple[Any, float, float]:
    """``call()``, its wall seconds and its peak memory growth in MiB (module docstring)."""
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        t0 = time.perf_counter()
        out = call()
        torch.cuda.synchronize()
        return out, time.perf_counter() - t0, (torch.cuda.max_memory_allocated() - base) / 2**20
    base, peak, done = rss_bytes(), [0], threading.Event()

    def watch() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], rss_bytes())
            time.sleep(0.002)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    t0 = time.perf_counter()
    try:
        out = call()
    finally:
        dt = time.perf_counter() - t0
        done.set()
        watcher.join()
    return out, dt, max(peak[0] - base, 0) / 2**20
