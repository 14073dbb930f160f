"""Write the demo images bundled in the package: test-split images 0..7 of each data set.

python benchmarks/tools/bundle_demo_images.py
"""

from pathlib import Path

from diffinv.data import load_split, save_image

ROOT = Path(__file__).resolve().parents[2] / "src" / "diffinv" / "assets" / "demo"

for name in ("mnist32", "fashion32"):
    s = load_split(name, "test")
    for i in range(8):
        save_image(s.images[i], ROOT / name / f"test_{i:05d}.png")
print("wrote", ROOT)
