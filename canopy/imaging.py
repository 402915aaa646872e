"""Contact sheets: many tiles in one image, for people (previews and sample grids)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def contact_sheet(images: Sequence[np.ndarray] | np.ndarray, pad: int = 2,
                  background: int = 255) -> np.ndarray:
    """(N, H, W, C) uint8 tiles -> one (rows*(H+pad)+pad, cols*(W+pad)+pad, C) image with
    ceil(sqrt(N)) tiles a row, in order, separated by `pad` pixels of `background`."""
    count = len(images)
    if count == 0:
        raise ValueError("a contact sheet needs at least one image")
    height, width, channels = images[0].shape
    cols = math.ceil(math.sqrt(count))
    rows = math.ceil(count / cols)
    sheet = np.full((rows * (height + pad) + pad, cols * (width + pad) + pad, channels),
                    background, dtype=np.uint8)
    for index, image in enumerate(images):
        row, col = divmod(index, cols)
        y, x = pad + row * (height + pad), pad + col * (width + pad)
        sheet[y:y + height, x:x + width] = image
    return sheet
