"""Files written piece by piece, so that a long run holds one batch in memory, not all of it.

* :class:`TensorStream`: one float32 tensor ``(N, ...)`` in a safetensors file, appended a batch at
  a time; the bytes are those ``safetensors.torch.save_file({name: x})`` writes for the whole
  tensor (the header, which holds only the shape, is written first).
* :class:`GridPNGStream`: the PNG of :func:`diffinv.data.images.make_grid` (tiles in rows of
  ``ncol``, ``pad`` pixels of ``value`` between them) enlarged ``scale`` times (nearest), as
  :func:`~diffinv.data.images.save_image` writes it: the same pixels, encoded a grid row at a
  time (zlib, each pixel row with PNG's None, Sub or Up filter), so it holds one grid row of tiles.

Both need the final count ``N`` up front and check, on :meth:`close`, that exactly ``N`` images
came.
"""

from __future__ import annotations

import json
import math
import struct
import zlib
from typing import BinaryIO

import numpy as np
import torch

from diffinv.errors import DiffinvError

#: PNG colour type per channel count: gray, gray + alpha, RGB, RGBA
_COLOR_TYPES = {1: 0, 2: 4, 3: 2, 4: 6}
#: PNG's largest width or height
PNG_MAX_SIDE = 2**31 - 1
_IDAT_BYTES = 1 << 20


class TensorStream:
    """Write ``{name: (N, *shape)}`` float32 to the open binary file ``f``, batch by batch."""

    def __init__(self, f: BinaryIO, name: str, count: int, shape: tuple[int, ...]):
        self.f, self.count, self.shape, self.written = f, int(count), tuple(shape), 0
        nbytes = self.count * math.prod(self.shape) * 4
        header = {name: {"dtype": "F32", "shape": [self.count, *self.shape],
                         "data_offsets": [0, nbytes]}}
        text = json.dumps(header, separators=(",", ":")).encode()
        text += b" " * (-len(text) % 8)  # safetensors pads its header to 8 bytes
        f.write(struct.pack("<Q", len(text)))
        f.write(text)

    @staticmethod
    def file_bytes(count: int, shape: tuple[int, ...]) -> int:
        """The size of the file, for a disk check (the header is a few dozen bytes)."""
        return int(count) * math.prod(shape) * 4 + 256

    def write(self, x: torch.Tensor) -> None:
        if tuple(x.shape[1:]) != self.shape or x.dtype != torch.float32:
            raise DiffinvError(f"a batch of shape {tuple(x.shape)} ({x.dtype}) does not continue a "
                               f"float32 tensor of {self.shape} images")
        if self.written + x.shape[0] > self.count:
            raise DiffinvError(f"more than the {self.count} images announced")
        self.f.write(x.detach().cpu().contiguous().numpy().astype("<f4", copy=False).tobytes())
        self.written += int(x.shape[0])

    def close(self) -> None:
        if self.written != self.count:
            raise DiffinvError(f"{self.written} of the {self.count} images announced were written")


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _to_uint8(x: torch.Tensor) -> np.ndarray:
    """(B, C, H, W) in [-1, 1] -> uint8 (B, H, W, C), rounded as ``to_uint8`` of the image module."""
    u = x.detach().float().cpu().clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8)
    return u.permute(0, 2, 3, 1).numpy()


class GridPNGStream:
    """Write the grid PNG of ``count`` images (C, H, W) to the open binary file ``f``."""

    def __init__(self, f: BinaryIO, count: int, shape: tuple[int, int, int], *, ncol: int,
                 pad: int = 2, value: float = 1.0, scale: int = 1):
        c, h, w = (int(s) for s in shape)
        if c not in _COLOR_TYPES:
            raise DiffinvError(f"a PNG holds 1 to 4 channels, not {c}")
        self.f, self.count, self.c, self.h, self.w = f, int(count), c, h, w
        self.ncol = max(1, min(int(ncol), self.count))
        self.pad, self.scale = int(pad), int(scale)
        nrow = -(-self.count // self.ncol)
        self.width = self.ncol * (w + pad) + pad
        height = nrow * (h + pad) + pad
        if max(self.width, height) * self.scale > PNG_MAX_SIDE:
            raise DiffinvError(f"a grid of {self.count} images would be "
                               f"{self.width * self.scale}x{height * self.scale} pixels, beyond "
                               f"PNG's {PNG_MAX_SIDE}")
        self.fill = int(_to_uint8(torch.full((1, 1, 1, 1), float(value)))[0, 0, 0, 0])
        self.pending: list[np.ndarray] = []
        self.written = 0
        self.prev = np.zeros(self.width * self.scale * c, dtype=np.uint8)
        self.z = zlib.compressobj(6)
        self.out = bytearray()
        f.write(b"\x89PNG\r\n\x1a\n")
        f.write(_chunk(b"IHDR", struct.pack(">IIBBBBB", self.width * self.scale,
                                            height * self.scale, 8, _COLOR_TYPES[c], 0, 0, 0)))
        self._rows(np.full((self.pad, self.width, c), self.fill, dtype=np.uint8))

    @staticmethod
    def memory_bytes(shape: tuple[int, int, int], ncol: int, pad: int = 2, scale: int = 1) -> int:
        """What the stream holds at most: one grid row of tiles and its pixel rows."""
        c, h, w = shape
        width = ncol * (w + pad) + pad
        return ncol * c * h * w + (h + pad) * width * c + 4 * width * c * scale + _IDAT_BYTES

    def _rows(self, rows: np.ndarray) -> None:
        """Encode pixel rows (R, width, C) enlarged ``scale`` times."""
        for row in rows:
            line = np.repeat(row, self.scale, axis=0).reshape(-1)
            for _ in range(self.scale):
                self.out += self.z.compress(self._filtered(line))
                self.prev = line
            if len(self.out) >= _IDAT_BYTES:
                self.f.write(_chunk(b"IDAT", bytes(self.out)))
                self.out.clear()

    def _filtered(self, line: np.ndarray) -> bytes:
        """The filter byte and the filtered ``line``: of PNG's five filters, the one with the
        smallest sum of absolute (signed) residuals (the heuristic the PNG specification
        suggests, as libpng and Pillow use)."""
        c = self.c
        left = np.zeros_like(line)
        left[c:] = line[:-c]
        up = self.prev
        upleft = np.zeros_like(line)
        upleft[c:] = up[:-c]
        a, b, d = left.astype(np.int16), up.astype(np.int16), upleft.astype(np.int16)
        p = a + b - d
        pa, pb, pc = np.abs(p - a), np.abs(p - b), np.abs(p - d)
        paeth = np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, d)).astype(np.uint8)
        average = ((a + b) // 2).astype(np.uint8)
        options = ((0, line), (1, line - left), (2, line - up), (3, line - average),
                   (4, line - paeth))
        kind, data = min(options, key=lambda o: int(np.abs(o[1].view(np.int8), dtype=np.int64)
                                                    .sum()))
        return bytes([kind]) + data.tobytes()

    def _band(self, tiles: list[np.ndarray]) -> None:
        h, w, pad = self.h, self.w, self.pad
        band = np.full((h + pad, self.width, self.c), self.fill, dtype=np.uint8)
        for k, tile in enumerate(tiles):
            band[:h, pad + k * (w + pad): pad + k * (w + pad) + w] = tile
        self._rows(band)

    def write(self, x: torch.Tensor) -> None:
        if tuple(x.shape[1:]) != (self.c, self.h, self.w):
            raise DiffinvError(f"a batch of shape {tuple(x.shape)} does not continue a grid of "
                               f"{(self.c, self.h, self.w)} images")
        if self.written + x.shape[0] > self.count:
            raise DiffinvError(f"more than the {self.count} images announced")
        self.pending.extend(_to_uint8(x))
        self.written += int(x.shape[0])
        while len(self.pending) >= self.ncol:
            self._band(self.pending[:self.ncol])
            del self.pending[:self.ncol]

    def close(self) -> None:
        if self.written != self.count:
            raise DiffinvError(f"{self.written} of the {self.count} images announced were written")
        if self.pending:
            self._band(self.pending)
            self.pending.clear()
        self.out += self.z.flush()
        self.f.write(_chunk(b"IDAT", bytes(self.out)))
        self.out.clear()
        self.f.write(_chunk(b"IEND", b""))
