"""The one PNG encoding every judged image is served in, real or generated.

The files on disk differ in ways a person could read without looking at the picture: etl and
sample write PNGs with their own settings, and compressed sizes follow the content (a smooth
generated image compresses better than a noisy real one). So both classes are decoded to RGB
pixels and written again here, stored without compression and without any metadata chunk: a
served image's bytes depend only on its pixels, and its byte size only on the tile size.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np

SIGNATURE = b"\x89PNG\r\n\x1a\n"
_RGB8 = (8, 2, 0, 0, 0)  # bit depth 8, colour type 2 (RGB), deflate, adaptive filters, no interlace


def uniform_png(image: np.ndarray) -> bytes:
    """(H, W, 3) uint8 -> PNG bytes whose length is a function of H and W alone."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected (H, W, 3) uint8 pixels, got {image.shape} {image.dtype}")
    height, width, _ = image.shape
    rows = np.zeros((height, 1 + 3 * width), dtype=np.uint8)  # filter byte 0 (none) per row
    rows[:, 1:] = image.reshape(height, 3 * width)
    # Level 0 writes deflate "stored" blocks: the output length depends only on the input's.
    data = zlib.compress(rows.tobytes(), level=0)
    header = struct.pack(">II5B", width, height, *_RGB8)
    return SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", data) + _chunk(b"IEND", b"")


def uniform_png_size(tile_size: int) -> int:
    """The byte size of every served image for square tiles of `tile_size`."""
    return len(uniform_png(np.zeros((tile_size, tile_size, 3), dtype=np.uint8)))


def _chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload)
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)
