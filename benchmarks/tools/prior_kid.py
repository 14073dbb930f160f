"""KID with intervals for the rows of a prior-quality table, and paired differences between rows.

    python benchmarks/tools/prior_kid.py benchmarks/flow_small_data_cpu.jsonl \\
        --a n500-full -o benchmarks/flow_small_data_cpu_kid.md

FID at 2,000 samples has no interval and a bias that depends on the prior; KID
(:mod:`diffinv.metrics.kid`) is unbiased, and its sampling spread can be measured. For each row of
the table (a prior x sampler evaluation of ``diffinv bench``, kind ``prior-quality``) this reads
the Inception features the bench keeps beside its cached samples (``features.safetensors`` in the
row's ``extra.sample_cache``; rerun the bench on this machine if they are missing: the samples
are cached there too) and the reference features (the table's reference split, images 0..N-1,
computed once and cached under ``$DIFFINV_CACHE/prior-quality/reference/``), and reports

* ``KID x 1000``: the estimate from all N samples against all N reference images, ± 1.96 times
  the standard deviation of the estimates over ``--subsets`` random half-samples (N/2 samples
  against N/2 reference images, drawn without replacement). For a mean, half-sampling without
  replacement has the variance of the full-sample estimate, (sigma^2 / (N/2)) (1 - 1/2) =
  sigma^2 / N: so this is an approximate 95% interval for the sampling noise of the samples and
  of the reference set (not for the training seed of the prior, which one run cannot show);
* each row minus the ``--a`` row: the same, for the difference, with the same half-sample
  indices for both rows (sample i of every prior comes from the same seed), and "below" /
  "above" / "level" as the interval excludes 0 or not (below is better: KID is a distance).

Nothing is selected with the reference images: they are the table's own.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch


def read_rows(paths: list[Path]) -> list[dict]:
    """The evaluated rows (those with cached samples) of the table's files."""
    from diffinv.bench.records import read_records

    return [r for p in paths for r in read_records(p)[0]
            if "metrics" in r and "sample_cache" in (r.get("extra") or {})]


def label(row: dict) -> str:
    return " / ".join(row["cell"][axis]["label"] for axis in ("prior", "sampler") if axis in row["cell"])


def sample_features(row: dict) -> torch.Tensor:
    from safetensors.torch import load_file

    path = Path(row["extra"]["sample_cache"]) / "features.safetensors"
    if not path.is_file():
        raise SystemExit(f"{label(row)}: no {path}; rerun `diffinv bench` on this machine for this "
                         f"row (its samples are cached; the features are then written beside them)")
    return load_file(str(path))["features"]


def reference_features(domain: str, split: str, n: int) -> torch.Tensor:
    from diffinv.bench.kinds.prior_quality import reference_cache_dir
    from diffinv.data import load_split
    from diffinv.metrics.fid import cached_features

    path = reference_cache_dir() / f"{domain}-{split}-{n}-features.safetensors"
    return cached_features(load_split(domain, split).images[:n], path, progress=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", type=Path, nargs="+", help="prior-quality .jsonl files")
    ap.add_argument("--a", required=True, help="the row the others are compared with (its prior label)")
    ap.add_argument("--domain", default="fashion32")
    ap.add_argument("--reference", default="test", help="the table's reference split")
    ap.add_argument("--subsets", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("-o", "--output", type=Path, required=True)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from diffinv.metrics.kid import kid_subsets, mmd2_unbiased

    rows = read_rows(args.files)
    by_label = {label(r): r for r in rows}  # a later row (a rerun) replaces an earlier one
    base = [k for k, r in by_label.items() if r["cell"]["prior"]["label"] == args.a]
    if len(base) != 1:
        raise SystemExit(f"--a {args.a!r}: {len(base)} rows match; labels: {sorted(by_label)}")
    feats = {k: sample_features(r) for k, r in by_label.items()}
    n = min(len(f) for f in feats.values())
    ref = reference_features(args.domain, args.reference, n)
    half = n // 2
    full, spread = {}, {}
    for k, f in feats.items():
        full[k] = mmd2_unbiased(f[:n], ref)
        spread[k] = kid_subsets(f[:n], ref, subset_size=half, subsets=args.subsets, seed=args.seed)
        print(f"{k}: KID x 1000 = {1000 * full[k]:.3f}", flush=True)

    command = "python benchmarks/tools/prior_kid.py " + " ".join(
        [str(p) for p in args.files] + [f"--a {args.a!r}", f"--subsets {args.subsets}",
                                         f"--seed {args.seed}", f"-o {args.output}"])
    title = f"# KID of {', '.join(by_label)} (reference: {args.domain} {args.reference} images 0..{n - 1})"
    lines = [title, "",
             f"- Made by: `{command}`",
             f"- KID x 1000 from all {n} samples against all {n} reference images, ± 1.96 x the standard "
             f"deviation over {args.subsets} half-samples ({half} + {half}, without replacement, seed "
             f"{args.seed}): an approximate 95% interval for sampling noise (samples and reference), "
             "not for the training seed. Lower is better.",
             f"- Differences: each row minus {base[0]}, the same half-sample indices for both rows "
             "(sample i of each prior from the same seed): below = better than it beyond the interval.",
             "", "| row | KID x 1000 | minus " + base[0] + " | 95% interval | vs " + base[0] + " |",
             "|---|--:|--:|--:|---|"]
    for k in by_label:
        sd = float(spread[k].std())
        cell = f"{1000 * full[k]:.2f} ± {1000 * 1.96 * sd:.2f}"
        if k == base[0]:
            lines.append(f"| {k} | {cell} | – | – | – |")
            continue
        d = full[k] - full[base[0]]
        h = 1.96 * float((spread[k] - spread[base[0]]).std())
        verdict = "below" if d + h < 0 else "above" if d - h > 0 else "level"
        interval = f"{1000 * d:+.2f} [{1000 * (d - h):+.2f}, {1000 * (d + h):+.2f}]"
        lines.append(f"| {k} | {cell} | {1000 * d:+.2f} ± {1000 * h:.2f} | {interval} | {verdict} |")
        if not math.isfinite(d):
            raise SystemExit(f"{k}: non-finite KID")
    args.output.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
