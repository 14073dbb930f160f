"""benchmarks/tools/pick_tuned.py: the pick is the best complete mean PSNR, SSIM breaks near ties,
incomplete values never win, and the gap is the paired per-image difference."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

TOOL = Path(__file__).resolve().parents[1] / "benchmarks" / "tools" / "pick_tuned.py"
spec = importlib.util.spec_from_file_location("pick_tuned", TOOL)
pick_tuned = importlib.util.module_from_spec(spec)
spec.loader.exec_module(pick_tuned)


def rows(label: str, psnrs: list[float], ssim: float = 0.5, task: str = "sr4") -> list[dict]:
    return [{"cell": {"method": {"name": "dps", "label": label}, "task": {"label": task}},
             "index": i, "metrics": {"psnr": p, "ssim": ssim}} for i, p in enumerate(psnrs)]


def test_best_mean_psnr_wins_and_incomplete_values_do_not():
    groups = pick_tuned.per_image(rows("a", [20, 21, 22]) + rows("b", [21, 22, 23])
                                  + rows("c", [30, 30]))  # c: 2 of 3 images
    best, incomplete = pick_tuned.pick(groups[("dps", "sr4")])
    assert (best, incomplete) == ("b", ["c"])


def test_ssim_breaks_a_tie_within_the_tolerance():
    groups = pick_tuned.per_image(rows("a", [20.00, 21.00], ssim=0.6) + rows("b", [20.02, 21.02], ssim=0.5))
    assert pick_tuned.pick(groups[("dps", "sr4")])[0] == "a"
    groups = pick_tuned.per_image(rows("a", [20.0, 21.0], ssim=0.6) + rows("b", [20.2, 21.2], ssim=0.5))
    assert pick_tuned.pick(groups[("dps", "sr4")])[0] == "b"


def test_gap_is_paired_per_image():
    # b beats a by exactly 1 dB on every image despite a large spread across images: the paired
    # interval is degenerate at +1, so the pick is distinguishable
    best = {i: {"psnr": p + 1.0} for i, p in enumerate([15.0, 25.0, 35.0])}
    other = {i: {"psnr": p} for i, p in enumerate([15.0, 25.0, 35.0])}
    assert pick_tuned.paired_gap(best, other) == "+1.00 [+1.00, +1.00]"
    noisy = {i: {"psnr": p} for i, p in enumerate([16.5, 25.0, 35.5])}
    assert "not distinguishable" in pick_tuned.paired_gap(best, noisy)


def test_render_lists_each_solver_and_task(tmp_path):
    text = pick_tuned.render(pick_tuned.per_image(rows("a", [20, 21]) + rows("b", [22, 23], task="inpaint")),
                             [tmp_path / "t.jsonl"])
    assert "| dps | sr4 | a | 20.50 |" in text and "| dps | inpaint | b | 22.50 |" in text


def test_rerun_keeps_the_hand_written_sections(tmp_path, monkeypatch):
    results = tmp_path / "tune.jsonl"
    results.write_text("".join(json.dumps(r) + "\n" for r in rows("a", [20, 21]) + rows("b", [22, 23])))
    picks = tmp_path / "picks.md"
    picks.write_text("# Tuning picks from an older run\n\n| stale | table |\n\n"
                     "## The settings chosen\n\n* **DPS: b**, because it won.\n")
    monkeypatch.setattr(sys, "argv", ["pick_tuned.py", str(results), "-o", str(picks)])
    pick_tuned.main()
    text = picks.read_text()
    assert "| stale | table |" not in text and "| dps | sr4 | b |" in text
    assert text.endswith("## The settings chosen\n\n* **DPS: b**, because it won.\n")
