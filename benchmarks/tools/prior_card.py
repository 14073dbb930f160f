"""Export a training run as an embedded prior and write its model card material.

    python benchmarks/tools/prior_card.py runs/fashion32 --name fashion32 [--ship] [--state]
    python benchmarks/tools/prior_card.py runs/ldm --name fashion32-latent --latent AE.safetensors --ship

* ``--latent AE``: the run is a latent diffusion (``train-prior --latent AE``); the prior is
  exported with its autoencoder beside it (``NAME-autoencoder.safetensors``) and loads as a
  ``LatentPrior``; samples are decoded latent samples;

* ``--ship``: export the EMA weights to ``src/diffinv/priors/NAME.safetensors`` + ``.json``;
* ``--state``: copy the resumable training state (weights, EMA, optimizer, log, config) to
  ``training/state/NAME/`` (the one place each commit replaces; resume with
  ``diffinv train-prior --out training/state/NAME ...`` or copy it back to ``runs/``);
* always: ``benchmarks/priors/NAME_loss.png`` (training loss curve), ``NAME_samples.png``
  (8x8 DDIM-100 samples, seed 0) and ``NAME_training.json`` (steps, batch, wall time, machine,
  the exact command).
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]


def wall_seconds(log: list[dict], max_gap: float = 600.0) -> float:
    """Training wall time: the sum of gaps between log lines, ignoring pauses longer than max_gap."""
    total = 0.0
    for a, b in zip(log, log[1:], strict=False):
        gap = b["time"] - a["time"]
        if 0 < gap < max_gap:
            total += gap
    return total


def training_phases(log: list[dict], final_step: int) -> list[dict]:
    """Consecutive step ranges trained with one (lr, precision, ...): from the trainer's
    ``{"event": "start"}`` lines, and for a log that predates them, from the lr of its loss lines
    (precision fp32, the only one the trainer had then)."""
    phases: list[dict] = []
    prev_step = 0
    for r in log:
        if r.get("event") == "start":
            c = r["config"]
            key = {"lr": c["lr"], "lr_schedule": c["lr_schedule"], "precision": c.get("precision", "fp32"),
                   "batch": c["batch"], "ema_decay": c["ema_decay"]}
            if c["lr_schedule"] == "cosine":  # the decay window: from decay_start to steps
                key.update(decay_start=c.get("decay_start", 0), decay_end=c["steps"])
            if phases and {k: phases[-1].get(k) for k in key} == key:
                continue
            if phases:
                phases[-1]["to_step"] = r["step"]
            phases.append({"from_step": r["step"], **key})
        elif "loss" in r and (not phases or "legacy" in phases[-1]):
            # a log from before the start events: a new phase where the logged lr changes after
            # the first phase's warm-up (its start step is then known to the log interval only)
            if not phases:
                phases.append({"from_step": 0, "lr": r["lr"], "lr_schedule": "constant",
                               "precision": "fp32", "batch": None, "ema_decay": None, "legacy": True})
            elif r["lr"] != phases[-1]["lr"]:
                if len(phases) == 1 and r["lr"] > phases[-1]["lr"]:
                    phases[-1]["lr"] = r["lr"]  # still warming up
                else:
                    phases[-1]["to_step"] = prev_step
                    phases.append({**phases[-1], "from_step": prev_step, "lr": r["lr"]})
                    del phases[-1]["to_step"]
        if "loss" in r:
            prev_step = r["step"]
    if phases:
        phases[-1]["to_step"] = final_step
    return phases


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path)
    ap.add_argument("--name", required=True)
    ap.add_argument("--ship", action="store_true")
    ap.add_argument("--state", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--latent", type=Path, default=None,
                    help="the autoencoder export of a latent run (train-prior --latent AE)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from diffinv.data import save_image
    from diffinv.data.images import make_grid
    from diffinv.diffusion.zoo import load_prior
    from diffinv.latent.training import export_latent_prior
    from diffinv.learn.trainer import export_prior
    from diffinv.plots import moving_average, plot_curves

    ckpt = args.run / "checkpoint.pt"
    cfg = json.loads((args.run / "config.json").read_text())
    full_log = [json.loads(line) for line in (args.run / "train_log.jsonl").read_text().splitlines() if line]
    log = [r for r in full_log if "loss" in r]
    out = ROOT / "benchmarks" / "priors"
    out.mkdir(parents=True, exist_ok=True)
    steps = [r["step"] for r in log]
    losses = [r["loss"] for r in log]
    plot_curves({"loss (per log interval)": (steps, losses),
                 "moving average (20)": (steps, moving_average(losses, 20))},
                out / f"{args.name}_loss.png", xlabel="step", ylabel="eps MSE", logy=True,
                title=f"{args.name}: training loss")
    def export(folder: Path) -> Path:
        if args.latent:
            return export_latent_prior(ckpt, args.latent, folder, args.name)
        return export_prior(ckpt, folder, args.name)

    if args.ship:
        prior = load_prior(export(ROOT / "src" / "diffinv" / "priors"))
    elif args.latent:  # a latent checkpoint alone has no decoder: export it to a scratch folder
        import tempfile

        prior = load_prior(export(Path(tempfile.mkdtemp())))
    else:
        prior = load_prior(ckpt)
    x = prior.sample(64, seed=0, method="ddim", steps=100)
    save_image(make_grid(x, ncol=8), out / f"{args.name}_samples.png", scale=2)
    u = cfg["unet"]
    mults = ",".join(map(str, u["channel_mults"]))
    attn = ",".join(map(str, u["attention_resolutions"]))
    dataset = cfg["dataset"].split("@latent:")[0]
    command = " ".join([
        f"diffinv train-prior --dataset {dataset} --out runs/{args.name}",
        *([f"--latent {args.latent}"] if args.latent else []),
        f"--steps {cfg['steps']} --batch {cfg['batch']} --lr {cfg['lr']} --warmup {cfg['warmup']}",
        f"--lr-schedule {cfg.get('lr_schedule', 'constant')}",
        f"--ema-decay {cfg['ema_decay']} --base-channels {u['base_channels']} --channel-mults {mults}",
        f"--num-res-blocks {u['num_res_blocks']} --attention {attn} --seed {cfg['seed']}",
        f"--precision {cfg.get('precision', 'fp32')} --threads 1",
    ])
    networks = (torch.nn.ModuleList([prior.latent.network, prior.autoencoder]) if args.latent
                else prior.network)
    steps_done = int(torch.load(ckpt, map_location="cpu", weights_only=True)["step"])
    info = {
        "name": args.name, "command": command,
        "steps_done": steps_done, "phases": training_phases(full_log, steps_done),
        "batch": cfg["batch"], "lr": cfg["lr"], "ema_decay": cfg["ema_decay"],
        "wall_seconds": round(wall_seconds(log)), "machine": f"{platform.machine()} CPU, "
        f"torch {torch.__version__}, 1 thread per run, two runs sharing 2 cores with other work",
        "params_M": round(sum(p.numel() for p in networks.parameters()) / 1e6, 3),
        "sha256": prior.sha256, "last_loss_avg": sum(losses[-20:]) / max(len(losses[-20:]), 1),
    }
    (out / f"{args.name}_training.json").write_text(json.dumps(info, indent=2) + "\n")
    if args.state:
        dest = ROOT / "training" / "state" / args.name
        dest.mkdir(parents=True, exist_ok=True)
        for f in ("checkpoint.pt", "config.json", "train_log.jsonl"):
            shutil.copy2(args.run / f, dest / f)
    print(json.dumps(info, indent=2))


if __name__ == "__main__":
    main()
