"""benchmarks/tools/paired_difference.py: a cell re-run under new settings with the same labels
counts once per image (its newest row), both in the pairing and in the choice of the best row."""

from __future__ import annotations

import importlib.util
from pathlib import Path

TOOL = Path(__file__).resolve().parents[1] / "benchmarks" / "tools" / "paired_difference.py"
spec = importlib.util.spec_from_file_location("paired_difference", TOOL)
paired_difference = importlib.util.module_from_spec(spec)
spec.loader.exec_module(paired_difference)


def rows(label: str, psnrs: list[float], finished: str) -> list[dict]:
    return [{"cell": {"method": {"label": label}, "task": {"label": "blur"}}, "index": i,
             "metrics": {"psnr": p}, "finished": finished} for i, p in enumerate(psnrs)]


def test_the_newest_row_of_each_image_replaces_a_stale_one():
    old = rows("b", [10.0, 10.0], "2026-12-05T10:00:00.000+00:00")
    new = rows("b", [30.0, 31.0], "2026-12-06T10:00:00.000+00:00")
    ref = rows("a", [20.0, 20.0], "2026-12-05T09:00:00.000+00:00")
    for order in (old + new + ref, new + ref + old):  # shards: file order is not time order
        kept = paired_difference.latest_rows(order)
        assert len(kept) == 4
        diffs = paired_difference.paired(kept, "method", "a", "b")
        assert sorted(diffs[(("task", "blur"),)]["psnr"]) == [10.0, 11.0]
        # with the stale rows dropped, b has as many images as a, so a is b's best other row
        assert paired_difference.best_other(kept, "method", "b", "psnr") == {(("task", "blur"),): "a"}


def test_each_method_minus_one_reference(tmp_path, monkeypatch, capsys):
    """``--b`` repeated with one ``--a``: a table of each b minus that a, with a verdict."""
    import json
    import sys

    stamp = "2026-12-05T10:00:00.000+00:00"
    data = (rows("y", [20.0, 21.0, 22.0], stamp) + rows("good", [25.0, 25.5, 27.0], stamp)
            + rows("bad", [15.0, 15.5, 17.0], stamp) + rows("same", [21.0, 20.0, 22.0], stamp))
    path = tmp_path / "r.jsonl"
    path.write_text("".join(json.dumps({"kind": "restore", **r}) + "\n" for r in data))
    out = tmp_path / "p.md"
    monkeypatch.setattr(sys, "argv", ["paired_difference.py", str(path), "--axis", "method",
                                      "--a", "y", "--b", "good", "--b", "bad", "--b", "same",
                                      "-o", str(out)])
    paired_difference.main()
    text = out.read_text()
    assert "each of good, bad, same minus y" in text
    lines = {ln.split(" | ")[0][2:]: ln for ln in text.splitlines() if ln.startswith("| ")}
    assert "+4.8333" in lines["good"] and lines["good"].endswith("| above |")
    assert "-5.1667" in lines["bad"] and lines["bad"].endswith("| below |")
    assert "+0.0000" in lines["same"] and lines["same"].endswith("| level |")


def test_a_combined_axis_pairs_rows_that_differ_in_both():
    """``method+prior``: one solver on one prior against another solver on another prior, matched
    by the remaining axes (task) and the image; a plain ``method`` axis cannot pair them."""
    stamp = "2026-12-05T10:00:00.000+00:00"

    def on(prior, label, psnrs, task="sr"):
        return [{"cell": {"method": {"label": label}, "prior": {"label": prior},
                          "task": {"label": task}}, "index": i, "metrics": {"psnr": p},
                 "finished": stamp} for i, p in enumerate(psnrs)]

    data = (on("big", "DPS", [20.0, 22.0]) + on("small", "PnP", [19.0, 23.5])
            + on("small", "PnP", [1.0, 1.0], task="other"))
    assert paired_difference.paired(data, "method", "DPS", "PnP") == {}  # priors differ
    diffs = paired_difference.paired(data, "method+prior", "DPS @ big", "PnP @ small")
    assert dict(diffs) == {(("task", "sr"),): {"psnr": [-1.0, 1.5]}}
    best = paired_difference.best_other(data, "method+prior", "PnP @ small", "psnr")
    assert best == {(("task", "sr"),): "DPS @ big"}
