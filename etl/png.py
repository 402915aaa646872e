"""PNG encoding of tiles (Pillow releases the GIL while compressing, so threads scale)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

# zlib level 1: on forest imagery files are about 13% larger than at level 6 (and the same
# size as level 3) for 1.75x faster writes, measured on 128 px tiles on this project's CPU.
# Pillow writes no timestamp, so the bytes depend only on the pixels.
PNG_COMPRESS_LEVEL = 1


def encode_png(rgb: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb, mode="RGB").save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buffer.getvalue()
