"""PNG encoding, run in worker processes (kept free of GDAL and of the rest of the stage)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

# zlib level 3: files within a few percent of level 6 on imagery, and about twice as fast to
# write (see bench/bench_etl.py). Pillow writes no timestamp, so bytes depend only on pixels.
PNG_COMPRESS_LEVEL = 3


def encode_png(rgb: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb, mode="RGB").save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buffer.getvalue()
