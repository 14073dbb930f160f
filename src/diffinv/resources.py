"""Resource bounds: refuse, before allocating anything, work that cannot fit in memory.

Each bounded entry point estimates the bytes its largest allocation needs and compares them with
the memory the machine has *available* now (:func:`available_memory`: ``MemAvailable`` of
``/proc/meminfo``, else ``psutil`` if installed, else unknown, and then nothing is refused; on a
CUDA device, its free memory). An estimate above that raises :class:`~diffinv.errors.ResourceError`
naming the estimate, the memory available and what to change. The estimates are deliberately
rough (the measured peaks below, rounded up): their job is to stop a request
that is hopeless by orders of magnitude (``prior.sample(10**9)``, ``measure --size 60000``) with
one line instead of a swapping machine, not to budget memory to the last byte.

Where the numbers come from (peak resident memory above the idle process, CPU, float32):

* **Sampling** (:func:`sample_bytes`): per image, ``4 * H * W * max(C, width) *``
  :data:`ACTIVATION_FACTOR` bytes, ``width`` being the channel count of the network's first
  convolution. The shipped 32x32 priors (``fashion32``, ``mnist32``: 1 channel, width 32) peaked
  at 1.8-2.2 MiB per image for batches of 256, 1024 and 2048 (DDIM and DDPM, two steps, one
  thread; 2.9 MiB at 64, where fixed costs dominate): about 16 bytes per element of
  ``H x W x width`` (2 MiB per image), i.e. about 512 times the 4 KiB of the image itself. The
  activations of a UNet scale with its width and the pixel count, not with the image's channels,
  hence the width (attention's quadratic term is not modelled).
* **Measuring** (:func:`measure_bytes`): the image batch's float32 bytes times a per-operator
  factor (:data:`MEASURE_FACTORS`, :data:`DEFAULT_MEASURE_FACTOR` for the others), measured with
  ``diffinv measure IMAGE --size 1024/2048``: 4.5 (super-resolution), 8-11 (identity, Gaussian
  and motion blur, inpainting), 21-23 (phase retrieval, non-uniform blur), 58 (rotation and zoom
  blur, which keep nine warped copies and their grids); ``bkse-blur`` (a network) is unmeasured
  and takes the default.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from diffinv.errors import ResourceError

#: bytes per element of ``H x W x max(C, width)`` one image needs while a prior samples it
#: (float32 activations and what the sampler keeps; measured on the shipped 32x32 priors)
ACTIVATION_FACTOR = 16
#: ``measure``'s peak memory as a multiple of the image batch's float32 bytes, per operator
MEASURE_FACTORS = {
    "identity": 12, "blur": 12, "gaussian-blur": 12, "motion-blur": 12,
    "blind-gaussian-blur": 12, "blind-motion-blur": 12, "inpaint-random": 12, "inpaint-box": 12,
    "sr-avgpool": 8, "sr-bicubic": 8, "phase-retrieval": 32, "nonlinear-blur": 32,
    "rotation-blur": 64, "zoom-blur": 64, "blind-rotation-blur": 64, "blind-zoom-blur": 64,
}
#: the factor of an operator not in :data:`MEASURE_FACTORS` (the costliest measured one)
DEFAULT_MEASURE_FACTOR = 64


def format_bytes(n: float) -> str:
    """``1536`` -> ``"1.5 KiB"``."""
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.3g} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024  # the value is in kB (KiB)
    except (OSError, ValueError, IndexError):
        pass
    return None


def available_memory(device: Any = None) -> int | None:
    """Bytes of memory available for new allocations on ``device`` (default: the CPU), or None
    when this machine does not say (then no estimate is refused).

    CPU (and MPS, whose memory is the machine's): ``MemAvailable`` of ``/proc/meminfo``, else
    ``psutil.virtual_memory().available`` if psutil is installed. CUDA: the device's free memory.
    """
    if device is not None:
        import torch

        dev = torch.device(device)
        if dev.type == "cuda":
            try:
                return int(torch.cuda.mem_get_info(dev)[0])
            except (RuntimeError, AssertionError):
                return None
    found = _meminfo_available()
    if found is not None:
        return found
    try:
        import psutil
    except ImportError:
        return None
    return int(psutil.virtual_memory().available)


def check_memory(nbytes: float, what: str, *, device: Any = None, hint: str = "") -> None:
    """Raise :class:`ResourceError` when ``what`` (an estimated ``nbytes``) exceeds the memory
    available on ``device``; ``hint`` says what to change. Allocates nothing."""
    avail = available_memory(device)
    if avail is None or nbytes <= avail:
        return
    where = "this machine has" if device is None or str(device).startswith(("cpu", "mps")) \
        else f"{device} has"
    raise ResourceError(f"{what} needs about {format_bytes(nbytes)} of memory, but {where} "
                        f"{format_bytes(avail)} available" + (f": {hint}" if hint else ""))


def check_disk(nbytes: float, path: str | os.PathLike, what: str) -> None:
    """Raise :class:`ResourceError` when writing ``nbytes`` to ``path`` exceeds the free space of
    its file system (the nearest existing folder is asked). Writes nothing."""
    folder = Path(path).absolute().parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return
    if nbytes > free:
        raise ResourceError(f"{what} needs {format_bytes(nbytes)} of disk, but {folder} has "
                            f"{format_bytes(free)} free")


# ---------------------------------------------------------------------------------- estimates
def network_width(network: Any) -> int | None:
    """The output channels of ``network``'s first 2-D convolution (a UNet's base width)."""
    from torch import nn

    for m in network.modules():
        if isinstance(m, nn.Conv2d):
            return int(m.out_channels)
    return None


def sample_bytes(prior: Any, n: int) -> int:
    """Estimated peak bytes of sampling ``n`` images at once with ``prior`` (module docstring)."""
    c, h, w = (int(s) for s in prior.image_shape)
    width = network_width(prior.network) or c
    return int(n) * 4 * h * w * max(c, width) * ACTIVATION_FACTOR


def measure_bytes(n: int, channels: int, height: int, width: int, operator: str | None) -> int:
    """Estimated peak bytes of measuring ``n`` images (C, H, W) with ``operator`` (a name)."""
    factor = MEASURE_FACTORS.get(str(operator), DEFAULT_MEASURE_FACTOR)
    return int(n) * int(channels) * int(height) * int(width) * 4 * factor


def cap_threads(requested: int) -> tuple[int, int | None]:
    """``(threads to use, this machine's cores)``: ``requested`` capped at ``os.cpu_count()``."""
    cores = os.cpu_count()
    if cores is None:
        return requested, None
    return min(requested, cores), cores


__all__ = ["ACTIVATION_FACTOR", "DEFAULT_MEASURE_FACTOR", "MEASURE_FACTORS", "available_memory",
           "cap_threads", "check_disk", "check_memory", "format_bytes", "measure_bytes",
           "network_width", "sample_bytes"]
