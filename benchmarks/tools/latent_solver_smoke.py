"""Planning smoke run of the latent solvers (latent-dps, psld, resample) on a latent prior: 2
validation images, SR x4 sigma 0.05: PSNR, residual ||y - A(x)|| / sqrt(m), seconds per image.

    python benchmarks/tools/latent_solver_smoke.py PRIOR.safetensors STEPS
"""
import sys
import time

import torch

from diffinv import load_prior
from diffinv.data import load_split
from diffinv.metrics import psnr
from diffinv.physics import make_operator, measure
from diffinv.seeding import image_generators
from diffinv.solvers import make_solver

torch.set_num_threads(1)
STEPS = int(sys.argv[2])
prior = load_prior(sys.argv[1])
x = load_split("fashion32", "valid").images[:2]
op = make_operator("sr-avgpool", factor=4)
m = measure(x, op, "gaussian:0.05", 1, [0, 1])
ys = op.adjoint(m.y, **m.params) * 16
print("A^+y-ish psnr", psnr(torch.nn.functional.interpolate(m.y, scale_factor=4), x).tolist())
for name, params in [("latent-dps", {"steps": STEPS}), ("psld", {"steps": STEPS}),
                     ("resample", {"steps": STEPS})]:
    s = make_solver(name, **params)
    t = time.time()
    r = s(m.y, m.public(), prior, seed=image_generators(7, [0, 1]))
    dt = (time.time() - t) / 2
    res = (m.y - op.forward(r.x, **m.params)).flatten(1).norm(dim=1) / m.y[0].numel() ** 0.5
    print(name, params, "psnr", [round(v, 2) for v in psnr(r.x, x).tolist()],
          "residual", [round(v, 4) for v in res.tolist()], f"{dt:.1f} s/image", flush=True)
