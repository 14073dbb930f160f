"""How much one image's restoration moves with the batch size it is solved in.

    python benchmarks/tools/batch_size_sensitivity.py benchmarks/tasks/linear.toml \\
        --only method=dps --only task=inpaint-box --image 1 --sizes 1 3 10

Recomputes image ``--image`` of the one cell ``--only`` selects exactly as ``diffinv bench``
computed its row (same measurement, same per-image solver generator), in a batch of each size
(the image first, then the cell's next images as filler), and prints its PSNR for each, beside the
table's row when the run has one. The random draws of an image never depend on the batch; the
float rounding of a batched network call does, and long stochastic solvers amplify it.
"""

from __future__ import annotations

import argparse

from diffinv.bench.gallery import restore_context, row_psnr_by_key
from diffinv.bench.kinds import restore
from diffinv.bench.plan import load_plan, select_cells
from diffinv.metrics import psnr


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("task", help="a restore task file")
    ap.add_argument("--only", action="append", required=True, help="AXIS=NAME selecting one cell")
    ap.add_argument("--image", type=int, default=0)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1, 3, 10])
    args = ap.parse_args()
    plan = load_plan(args.task)
    cells = select_cells(plan.cells, args.only)
    if len(cells) != 1:
        raise SystemExit(f"--only selects {len(cells)} cells; select exactly one")
    cell = cells[0]
    if not 0 <= args.image < cell.target or min(args.sizes) < 1:
        raise SystemExit(f"--image must be in 0..{cell.target - 1} and every size >= 1")
    ctx, resolved = restore_context(plan, cells)
    row = row_psnr_by_key(plan).get(plan.unit_key(cell, args.image, plan.cell_identity(cell, resolved)))
    print(f"{'/'.join(cell.labels)} image {args.image}"
          + (f": the table's row {row[0]:.3f} dB (batch of {row[1]})" if row else ": no row"))
    for size in args.sizes:
        filler = [j for j in range(cell.target) if j != args.image][: size - 1]
        batch = restore.restore_batch(ctx, cell, [args.image, *filler])
        value = float(psnr(batch.result.x[:1].detach().cpu(), batch.x[:1].cpu())[0])
        print(f"  batch of {len(filler) + 1:3d}: {value:.3f} dB", flush=True)


if __name__ == "__main__":
    main()
