"""Fashion-MNIST from Debian's ``dataset-fashion-mnist`` (IDX files, pinned by SHA-256).

Splits (DESIGN.md): train = the first 55,000 training images, valid = the last 5,000,
test = t10k (10,000).
"""

from __future__ import annotations

import gzip
import struct

import numpy as np

from diffinv.assets import locate
from diffinv.errors import IntegrityError

N_TRAIN = 55_000


def read_idx(path) -> np.ndarray:
    """Read a (gzipped) IDX file: magic 0x0000 08 <ndim>, big-endian int32 dims, uint8 data."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise IntegrityError(f"{path} is not an unsigned-byte IDX file")
    ndim = raw[3]
    dims = struct.unpack(f">{ndim}i", raw[4 : 4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise IntegrityError(f"{path}: expected {int(np.prod(dims))} values, found {data.size}")
    return data.reshape(dims)


def load_fashion_uint8() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{"train"|"valid"|"test": (images uint8 (N, 28, 28), labels int64 (N,))}``."""
    xtr = read_idx(locate("fashion-train-images"))
    ytr = read_idx(locate("fashion-train-labels")).astype(np.int64)
    xte = read_idx(locate("fashion-test-images"))
    yte = read_idx(locate("fashion-test-labels")).astype(np.int64)
    return {
        "train": (xtr[:N_TRAIN], ytr[:N_TRAIN]),
        "valid": (xtr[N_TRAIN:], ytr[N_TRAIN:]),
        "test": (xte, yte),
    }
