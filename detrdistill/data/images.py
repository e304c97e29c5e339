"""The one image reader: an image file as the RGB picture a viewer shows.

Every path that reads an image file goes through ``read_rgb`` so that training, evaluation
and analysis see the same pixels:

- EXIF orientation is applied (``ImageOps.exif_transpose``), as every viewer and annotation
  tool does: phone photos are stored sideways with a tag that says so, and their boxes are
  drawn on the upright picture.
- 16-bit images (depth, medical, remote sensing; PIL modes ``I;16*`` and ``I``) are scaled
  from their full 16-bit range to 8 bits (value / 257), where a plain ``convert("RGB")``
  clips every value above 255 to white. The scale is the type's, not the image's, so two
  images of the same scene keep their relative brightness.
- Palette, grey, CMYK and alpha images become RGB; an alpha channel is dropped, as the
  transformers image processors do (the colour under a transparent pixel is kept).
- Floating-point images (mode ``F``) are refused: their range is not knowable from the file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from detrdistill.data.errors import DatasetError

SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
EXIF_ORIENTATION_TAG = 0x0112
ROTATING_ORIENTATIONS = (5, 6, 7, 8)  # these swap width and height (a quarter turn, maybe mirrored)


def exif_orientation(image: Image.Image) -> int:
    """The EXIF orientation tag (1 = upright, 6 = rotate 90 clockwise to view, ...), 1 if absent."""
    return int(image.getexif().get(EXIF_ORIENTATION_TAG, 1))


def read_rgb(path: str | Path) -> tuple[Image.Image, int]:
    """(the upright RGB image, its EXIF orientation tag). Raises FileNotFoundError, or
    PIL's errors for a corrupt file (the caller names the annotation record)."""
    with Image.open(path) as image:
        orientation = exif_orientation(image)
        upright = ImageOps.exif_transpose(image)
        if upright.mode == "F":
            raise DatasetError(
                f"Image file {path} holds floating-point pixels (PIL mode F), whose range cannot be known from "
                "the file: save it as an 8- or 16-bit PNG or TIFF."
            )
        if upright.mode in SIXTEEN_BIT_MODES:
            values = np.asarray(upright, dtype=np.float64)
            upright = Image.fromarray(np.clip(np.rint(values / 257.0), 0, 255).astype(np.uint8), mode="L")
        return upright.convert("RGB"), orientation
