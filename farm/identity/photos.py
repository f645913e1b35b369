"""Reference photos at the edge of the farm: decoding, hashing, CLIP-branch preprocessing.

Photos arrive as bytes from people we do not control, so everything here assumes hostile or
broken input and answers with an `InputError` the sender can act on. torch is imported only
by the CLIP-branch preprocessing: checking and hashing photos (the dashboard, `farm submit`)
does not load it.
"""

from __future__ import annotations

import hashlib
import io
import math
import struct
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps

from farm.errors import InputError

if TYPE_CHECKING:
    import torch

MAX_PHOTO_BYTES = 20 * 1024 * 1024
MAX_PHOTO_PIXELS = 40_000_000
MIN_PHOTO_SIDE = 64
# What a photo is decoded to at most: faces are found and encoded at far less (CLIP sees 224 px,
# the detectors 640). A constant, not a setting: the same bytes must give the same identity in
# the dashboard and on every worker. JPEGs are decoded at 1/2, 1/4 or 1/8 scale to fit (libjpeg
# scales while decoding, so a 36-megapixel photo never exists in memory whole); other formats
# are decoded whole, up to the caller's `max_pixels`, then reduced.
DECODED_PIXELS = 4_000_000
_JPEG_SCALES = (1, 2, 4, 8)

# Pillow's names; the set is closed so a file is judged by its content, never its extension.
ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP")

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

_FIX_FORMAT = "send it as a JPEG, PNG or WebP file"
# What Pillow raises on malformed data; any of them means the bytes are not a usable image.
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, struct.error)


@dataclass(frozen=True)
class Photo:
    """A reference photo as it arrived: its name (for messages) and its bytes."""

    name: str
    data: bytes

    @cached_property
    def sha256(self) -> str:
        return content_hash(self.data)


def load_photo(data: bytes, name: str, *, max_pixels: int = MAX_PHOTO_PIXELS) -> Image.Image:
    """Decode an uploaded reference photo into an upright RGB image, or refuse it clearly.

    Limits are checked on the header before any pixel is decoded, so a tiny file that claims
    billions of pixels (a decompression bomb) costs nothing, and a JPEG larger than
    `DECODED_PIXELS` is decoded at a reduced scale. `max_pixels` caps what the decoder may
    produce (the dashboard passes its setting). Pillow's own bomb guard is made an error too,
    so it can never degrade into a mere warning.
    """
    image = _open(data, name, max_pixels)
    with _refusing_bad_images(name):
        image.load()
        factor = math.ceil(math.sqrt(image.width * image.height / DECODED_PIXELS))
        if factor > 1:  # a PNG or WebP: decoded whole, kept small
            image = image.reduce(factor)
        return _to_rgb(ImageOps.exif_transpose(image))


def decoded_pixels(data: bytes, name: str, *, max_pixels: int = MAX_PHOTO_PIXELS) -> int:
    """How many pixels `load_photo` will decode, from the header alone: what a request's photos
    cost is known, and refused, before any of them is decoded."""
    width, height = _open(data, name, max_pixels).size
    return width * height


def _open(data: bytes, name: str, max_pixels: int) -> Image.Image:
    """The photo with its header read and checked, set to decode at most `max_pixels`."""
    if not data:
        raise InputError(f"photo {name!r}: the file is empty; {_FIX_FORMAT}")
    if len(data) > MAX_PHOTO_BYTES:
        raise InputError(
            f"photo {name!r}: {len(data) / (1024 * 1024):.1f} MB is over the "
            f"{MAX_PHOTO_BYTES // (1024 * 1024)} MB limit; send a smaller export of it"
        )
    with _refusing_bad_images(name):
        image = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    _check_size(image.size, name)
    width, height = image.size
    if image.format == "JPEG" and width * height > DECODED_PIXELS:
        scale = next(s for s in _JPEG_SCALES if width * height <= DECODED_PIXELS * s * s or s == 8)
        with _refusing_bad_images(name):
            image.draft(None, (math.ceil(width / scale), math.ceil(height / scale)))
    width, height = image.size
    if width * height > max_pixels:
        raise InputError(
            f"photo {name!r}: a {width}x{height} {image.format} is over the "
            f"{max_pixels / 1_000_000:g} megapixel limit for that format; send it as a JPEG "
            "or a downscaled copy"
        )
    return image


@contextmanager
def _refusing_bad_images(name: str) -> Iterator[None]:
    """Turn whatever Pillow raises on hostile or broken bytes into one clear `InputError`."""
    # catch_warnings is process-global; at worst a concurrent call leaves the "error" filter
    # for DecompressionBombWarning installed, which is what the farm wants anyway.
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            yield
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise InputError(
                f"photo {name!r}: the image claims too many pixels (decompression bomb); "
                f"send one of at most {MAX_PHOTO_PIXELS // 1_000_000} megapixels"
            ) from exc
        except _DECODE_ERRORS as exc:
            raise InputError(
                f"photo {name!r}: not a readable JPEG, PNG or WebP image; {_FIX_FORMAT}"
            ) from exc


def _check_size(size: tuple[int, int], name: str) -> None:
    width, height = size
    if width * height > MAX_PHOTO_PIXELS:
        raise InputError(
            f"photo {name!r}: {width}x{height} is over the "
            f"{MAX_PHOTO_PIXELS // 1_000_000} megapixel limit; send a downscaled copy"
        )
    if min(width, height) < MIN_PHOTO_SIDE:
        raise InputError(
            f"photo {name!r}: {width}x{height} is too small (each side needs at least "
            f"{MIN_PHOTO_SIDE} px); send a larger photo of the face"
        )


def _to_rgb(image: Image.Image) -> Image.Image:
    """Flatten every mode to 8-bit RGB the way a person would see the photo.

    Transparent pixels carry arbitrary colour (often black), so they are composited on white
    rather than dropped; 16-bit greyscale is scaled down because Pillow would clip it to white.
    """
    if image.mode.startswith("I"):
        image = Image.fromarray((np.asarray(image, dtype=np.uint32) >> 8).astype(np.uint8), "L")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def content_hash(data: bytes) -> str:
    """Name a photo by its bytes, so caches and object keys never depend on a file name."""
    return hashlib.sha256(data).hexdigest()


def clip_pixel_values(images: list[Image.Image], size: int = 224) -> torch.Tensor:
    """Preprocess photos for the CLIP branch, bit-compatible with `CLIPImageProcessor()`.

    PhotoMaker's weights were trained on exactly this pipeline (PIL bicubic on the shortest
    side, floor-centred crop, float64 rescale then float32 normalise), so it is reproduced
    step for step rather than approximated with a tensor resize.
    """
    import torch

    mean = np.array(CLIP_MEAN, dtype=np.float32)
    std = np.array(CLIP_STD, dtype=np.float32)
    batch = []
    for image in images:
        width, height = image.size
        short, long = min(width, height), max(width, height)
        new_long = int(size * long / short)
        new_size = (size, new_long) if width <= height else (new_long, size)
        pixels = np.asarray(image.convert("RGB").resize(new_size, Image.Resampling.BICUBIC))
        top = (pixels.shape[0] - size) // 2
        left = (pixels.shape[1] - size) // 2
        pixels = pixels[top : top + size, left : left + size]
        scaled = (pixels.astype(np.float64) * (1 / 255)).astype(np.float32)
        batch.append(((scaled - mean) / std).transpose(2, 0, 1))
    return torch.from_numpy(np.stack(batch)) if batch else torch.empty(0, 3, size, size)


def face_crop(
    image: Image.Image, box: tuple[float, float, float, float], margin: float = 0.6
) -> Image.Image:
    """Square crop centred on a face, for photos where the face is small in the frame.

    The margin keeps hair and chin, which carry identity for CLIP. Near an edge the square is
    shifted back inside the photo instead of shrunk, so the face keeps the same scale in every
    crop; it only shrinks when the photo itself is smaller than the square.
    """
    x0, y0, x1, y1 = box
    width, height = image.size
    side = max(1, min(round(max(x1 - x0, y1 - y0) * (1 + 2 * margin)), width, height))
    left = _clamp(round((x0 + x1 - side) / 2), 0, width - side)
    top = _clamp(round((y0 + y1 - side) / 2), 0, height - side)
    return image.crop((left, top, left + side, top + side))


def _clamp(value: int, low: int, high: int) -> int:
    return max(low, min(value, high))
