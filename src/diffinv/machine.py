"""A short description of the machine a result was computed on: stored in every benchmark row
(:mod:`diffinv.bench`) and in the cards of trained networks (:mod:`diffinv.learn`)."""

from __future__ import annotations

import platform
from functools import lru_cache
from pathlib import Path
from typing import Any


@lru_cache(maxsize=1)
def cpu_model() -> str:
    """The CPU model name (``/proc/cpuinfo`` on Linux, ``platform`` elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def machine_info(device: str) -> dict[str, Any]:
    """CPU model, logical CPU count, GPU name (when ``device`` is a CUDA device), torch version,
    torch's intra-op thread count, Python version."""
    import os

    import torch

    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
    }
    dev = torch.device(device)
    if dev.type == "cuda" and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(dev)
        info["cuda"] = torch.version.cuda
    elif dev.type == "mps":
        info["gpu"] = "Apple MPS"
    return info


def describe_machine(info: dict[str, Any]) -> str:
    """One line for a report header."""
    parts = []
    if info.get("gpu"):
        parts.append(f"GPU {info['gpu']}" + (f" (CUDA {info['cuda']})" if info.get("cuda") else ""))
    parts.append(f"CPU {info.get('cpu', '?')}" + (f" x{info['cpus']}" if info.get("cpus") else ""))
    parts.append(f"torch {info.get('torch', '?')}")
    threads = info.get("threads", "?")
    parts.append(f"{threads} thread" + ("" if threads == 1 else "s"))
    return ", ".join(parts)
