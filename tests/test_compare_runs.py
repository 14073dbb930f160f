"""benchmarks/tools/compare_runs.py: matches two computations of the same units by unit key and
reports per cell the median and largest absolute differences, skipping non-finite values."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

TOOL = Path(__file__).resolve().parents[1] / "benchmarks" / "tools" / "compare_runs.py"
spec = importlib.util.spec_from_file_location("compare_runs", TOOL)
compare_runs = importlib.util.module_from_spec(spec)
spec.loader.exec_module(compare_runs)


def row(key: str, task: str, index: int, psnr: float, device: str = "cpu") -> dict:
    return {"key": key, "index": index, "device": device, "machine": {},
            "cell": {"method": {"label": "M"}, "task": {"label": task}},
            "metrics": {"psnr": psnr, "oracle": math.nan}}


def write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_units_are_matched_by_key_and_summarised_per_cell(tmp_path):
    a = write(tmp_path / "a.jsonl", [row("k0", "sr", 0, 20.0), row("k1", "sr", 1, 21.0),
                                     row("k2", "sr", 2, 22.0), row("k3", "deblur", 0, 10.0),
                                     row("only-a", "sr", 3, 0.0)])
    b = write(tmp_path / "b.jsonl", [row("k2", "sr", 2, 22.5, "cuda"), row("k1", "sr", 1, 20.9, "cuda"),
                                     row("k0", "sr", 0, 20.0, "cuda"), row("k3", "deblur", 0, 10.25, "cuda"),
                                     row("only-b", "sr", 4, 0.0, "cuda")])
    ra, rb = compare_runs.load([a]), compare_runs.load([b])
    diffs = compare_runs.compare(ra, rb, ["psnr", "oracle"])
    assert sorted(diffs) == ["M, deblur", "M, sr"]
    assert "oracle" not in diffs["M, sr"]  # nan on both sides: nothing to compare
    sr = sorted(diffs["M, sr"]["psnr"], key=lambda t: t[1])
    assert [i for _, i in sr] == [0, 1, 2]
    assert [round(d, 9) for d, _ in sr] == [0.0, 0.1, 0.5]
    text = compare_runs.render(ra, rb, diffs, ["psnr"], "cmd")
    assert "matched units: 4; A only: 1; B only: 1" in text
    assert "| M, sr | 3 | 0.1 | 0.5 (2) |" in text
    assert "| M, deblur | 1 | 0.25 | 0.25 (0) |" in text


def test_a_unit_twice_in_one_side_is_an_error(tmp_path):
    a = write(tmp_path / "a.jsonl", [row("k0", "sr", 0, 20.0), row("k0", "sr", 0, 20.0)])
    with pytest.raises(SystemExit, match="appears twice"):
        compare_runs.load([a])
