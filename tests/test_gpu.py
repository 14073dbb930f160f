"""On a CUDA device every solver gives the CPU's answer to float rounding: the same embedded
prior, measurement and per-image seeds (CPU generators in both cases), so a device-dependent
bug (a tensor left on the CPU, a generator drawn on the wrong device, a dtype that differs)
shows up as a failure or a disagreement. Skipped without CUDA (CI has none); on a lent GPU:
``pytest -m gpu``.

Agreement is asked as PSNR(x_cuda, x_cpu) >= 40 dB per image (images in [-1, 1]): the rounding
of fp32 convolutions differs between the backends (cuDNN, TF32 off) and compounds over the
steps, but stays far below what any real difference in the algorithm would give (the Table 5
units agree to 0.045 dB after 2,000 DMPlug iterations: benchmarks/dmplug_noise_devices.md).
The cases are well conditioned on the CPU: a 1e-6 change of y moves their output by far less
(noise-matched DPS on random inpainting is not: there a 1e-6 change of y alone moves an image
by 13-40 dB of PSNR, so it is left out; sr-avgpool under Poisson noise moves by < 1e-6).
"""

from __future__ import annotations

import pytest
import torch

from diffinv import load_prior
from diffinv.metrics import psnr
from diffinv.physics import make_operator, measure
from diffinv.seeding import image_generators
from diffinv.solvers import make_solver

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

# (solver, operator, operator kwargs, noise, solver params, blind)
CASES = [
    ("dps", "sr-avgpool", {}, "gaussian:0.02", {"steps": 50}, False),
    ("dps", "rotation-blur", {}, "gaussian:0.02", {"steps": 50}, False),
    ("dps", "zoom-blur", {}, "gaussian:0.02", {"steps": 50}, False),
    ("dps", "nonlinear-blur", {}, "gaussian:0.02", {"steps": 50}, False),
    ("dps-nll", "sr-avgpool", {}, "poisson:30", {"steps": 50}, False),
    ("mcg", "inpaint-random", {}, "gaussian:0.02", {"steps": 50}, False),
    ("ilvr", "sr-avgpool", {}, "gaussian:0.02", {"steps": 50}, False),
    ("dmps", "gaussian-blur", {}, "gaussian:0.02", {"steps": 50}, False),
    ("pigdm", "sr-avgpool", {}, "gaussian:0.02", {"steps": 20}, False),
    ("ddrm", "motion-blur", {}, "gaussian:0.02", {}, False),
    ("admm-pnp", "inpaint-box", {}, "gaussian:0.02", {"iters": 10}, False),
    ("dmplug", "nonlinear-blur", {}, "gaussian:0.02", {"iterations": 100}, False),
    ("dmplug", "blind-motion-blur", {}, "gaussian:0.02", {"iterations": 100}, True),
    ("dmplug", "blind-rotation-blur", {}, "gaussian:0.02", {"iterations": 100}, True),
]


def _images() -> torch.Tensor:
    """Two smooth test images in [-1, 1] (no data set needed)."""
    u = torch.linspace(-1, 1, 32)
    a = torch.tanh(3 * (u[None, :] ** 2 + u[:, None] ** 2 - 0.4))
    b = torch.sin(4 * u[None, :]) * torch.cos(3 * u[:, None])
    return torch.stack([a, b]).unsqueeze(1).clamp(-1, 1)


def _solve(device: str, case) -> torch.Tensor:
    name, op, kw, noise, params, blind = case
    x = _images()
    m = measure(x, make_operator(op, **kw), noise, seed=3)
    prior = load_prior("fashion32", device=device)
    solver = make_solver(name, preset=None, operator=m.operator, **params,
                         **({"blind": True} if blind else {}))
    solver.progress = False
    pub = m.public()
    pub.params = {k: v.to(device) for k, v in m.params.items()}
    out = solver(m.y.to(device), pub, prior, seed=image_generators(5, range(len(x))))
    assert out.x.device.type == torch.device(device).type
    assert torch.isfinite(out.x).all()
    return out.x.detach().cpu()


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-{c[1]}")
def test_cuda_gives_the_cpu_answer(case):
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    on_cpu, on_cuda = _solve("cpu", case), _solve("cuda", case)
    agreement = psnr(on_cuda.clamp(-1, 1), on_cpu.clamp(-1, 1))
    print(case[0], case[1], [round(float(v), 1) for v in agreement])
    assert (agreement >= 40).all(), agreement
