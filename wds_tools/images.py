"""Image size checks before decoding: a small file can declare an enormous image.

torchvision's decoders have no pixel limit (a 48 KB 1-bit PNG decodes to a 3x20000x20000 tensor),
and PIL only refuses images above twice ``Image.MAX_IMAGE_PIXELS``. Every decode of shard images
goes through :func:`check_image_pixels` first: PIL reads the header (no pixel data) and the image
is refused above the limit with ``PIL.Image.DecompressionBombError``, which readers count as a
``decompression_bomb`` skip.
"""

from __future__ import annotations

import io
import warnings

from PIL import Image


def pixel_limit(max_pixels: int | None = None) -> int | None:
    """The limit in force: ``max_pixels`` when > 0, else PIL's ``Image.MAX_IMAGE_PIXELS`` (None = off)."""
    if max_pixels is not None and max_pixels < 0:
        raise ValueError(f"max_pixels must be >= 0 (0 = PIL's MAX_IMAGE_PIXELS), got {max_pixels}")
    if max_pixels:
        return int(max_pixels)
    limit = Image.MAX_IMAGE_PIXELS
    return int(limit) if limit else None


def image_header_size(data: bytes) -> tuple[int, int]:
    """``(width, height)`` from the image header; no pixels are decoded.

    Raises ``PIL.Image.DecompressionBombError`` for sizes PIL itself refuses and
    ``PIL.UnidentifiedImageError`` for bytes that are no image PIL knows.
    """
    with warnings.catch_warnings():
        # PIL warns between 1x and 2x its limit; check_image_pixels decides with its own limit
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(io.BytesIO(data)) as img:
            return img.size


def check_image_pixels(data: bytes, *, max_pixels: int | None = None) -> tuple[int, int]:
    """Return ``(width, height)`` of encoded image ``data``, or raise ``DecompressionBombError``.

    ``max_pixels`` > 0 sets the limit; 0 or None uses PIL's ``Image.MAX_IMAGE_PIXELS``.
    """
    width, height = image_header_size(data)
    limit = pixel_limit(max_pixels)
    if limit is not None and width * height > limit:
        raise Image.DecompressionBombError(
            f"image of {width}x{height} = {width * height} pixels exceeds the limit of {limit} pixels")
    return width, height
