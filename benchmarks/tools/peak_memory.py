"""Wall time and peak memory of one call, for the benchmark scripts (not part of the package).

``timed``. CPU: the largest growth of the process's resident set over its size before the call,
sampled every 2 ms by a thread (allocations freed within 2 ms can be missed; memory the C allocator
kept from earlier calls is reused without growth, so small problems read 0: a lower bound). GPU:
``torch.cuda.max_memory_allocated`` over the allocation before the call.

``peak_tensor_mib``: exact on CPU. The call runs under ``torch.profiler`` with ``profile_memory``;
every tensor allocation and free it records (size, time) is replayed in time order and the peak of
the running sum is returned: the most bytes of torch tensors alive at once that the call created
(tensors that existed before it are not counted; Python objects and the allocator's slack are not
tensors). It costs about twice the plain run time, so the benchmarks take it on one image.
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


def peak_tensor_mib(call: Callable[[], Any]) -> tuple[Any, float]:
    """``call()`` and the peak MiB of tensor memory it allocated (module docstring)."""
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = call()
    steps = []
    stack = list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        event = stack.pop()
        if event.typed[0] == _EventType.Allocation:
            steps.append((event.start_time_ns, event.typed[1].alloc_size))
        stack.extend(event.children)
    live = peak = 0
    for _, size in sorted(steps):
        live += size
        peak = max(peak, live)
    return out, peak / 2**20
