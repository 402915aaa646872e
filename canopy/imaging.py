"""Images shared by the stages: contact sheets (previews and sample grids, for people) and the
checked decoding of the RGB PNGs that tiles and samples are stored as."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from canopy.errors import UserError


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


def decode_rgb_png(data: bytes, name: str, fix: str) -> np.ndarray:
    """PNG bytes -> (H, W, 3) uint8 array. Anything but an 8-bit RGB PNG is a UserError that
    names the image (`name`) and says what to do (`fix`)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            mode = image.mode
            array = np.asarray(image)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise UserError(f"{name}: not a readable PNG ({err}); {fix}") from None
    if mode != "RGB":
        raise UserError(f"{name} is {mode}, not 8-bit RGB; {fix}")
    return array
