from __future__ import annotations

import numpy as np
import pytest

from canopy.imaging import contact_sheet


def test_contact_sheet_places_tiles_in_rows():
    tiles = [np.full((4, 4, 3), value, dtype=np.uint8) for value in (10, 20, 30, 40, 50)]
    sheet = contact_sheet(tiles, pad=1, background=255)
    assert sheet.shape == (2 * 5 + 1, 3 * 5 + 1, 3)  # 3 columns, 2 rows
    assert sheet[1, 1, 0] == 10 and sheet[1, 6, 0] == 20 and sheet[6, 1, 0] == 40
    assert sheet[0, 0, 0] == 255 and sheet[6, 11, 0] == 255  # padding and the empty sixth cell


def test_contact_sheet_needs_an_image():
    with pytest.raises(ValueError):
        contact_sheet([])
