"""Reference photos: hostile bytes are refused clearly, good ones come back upright RGB."""

import hashlib
import io
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from farm.errors import InputError
from farm.identity.photos import (
    DECODED_PIXELS,
    MAX_PHOTO_BYTES,
    clip_pixel_values,
    content_hash,
    decoded_pixels,
    face_crop,
    load_photo,
)

REFS = Path(__file__).resolve().parents[1] / "data" / "refs"
PHOTOS = sorted(p for p in REFS.glob("*/*") if p.suffix in (".jpg", ".png"))


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def png_with_header(width: int, height: int) -> bytes:
    """A valid-looking PNG of a few dozen bytes whose IHDR claims `width` x `height` pixels."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 16)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def gradient(width: int = 160, height: int = 120, mode: str = "RGB") -> Image.Image:
    x = np.linspace(0, 255, width, dtype=np.uint8)
    rgb = np.stack(
        [
            np.tile(x, (height, 1)),
            np.tile(x[::-1], (height, 1)),
            np.full((height, width), 90, np.uint8),
        ],
        -1,
    )
    return Image.fromarray(rgb).convert(mode)


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"", "empty"),
        (bytes(range(256)) * 8, "not a readable"),
        (b"Once upon a time there was a photo.\n" * 20, "not a readable"),
        (encode(gradient(), "GIF"), "not a readable"),
        (encode(gradient(), "BMP"), "not a readable"),
        (encode(gradient(), "JPEG")[:300], "not a readable"),
        (encode(gradient(32, 200), "PNG"), "32x200 is too small"),
    ],
    ids=["empty", "garbage", "text-named-jpg", "gif", "bmp", "truncated-jpeg", "too-small"],
)
def test_bad_photos_are_refused_with_name_problem_and_fix(data: bytes, problem: str) -> None:
    with pytest.raises(InputError) as caught:
        load_photo(data, "me.jpg")
    message = str(caught.value)
    assert message.startswith("photo 'me.jpg': ") and problem in message
    assert "; send " in message and "\n" not in message


def test_truncated_photo_is_refused_when_pixels_are_decoded() -> None:
    data = (REFS / "newton_man" / "newton_0.jpg").read_bytes()
    with pytest.raises(InputError, match="not a readable"):
        load_photo(data[: len(data) // 2], "half.jpg")


def test_oversized_file_is_refused_before_decoding() -> None:
    with pytest.raises(InputError, match="over the 20 MB limit"):
        load_photo(b"\xff\xd8" + b"\0" * MAX_PHOTO_BYTES, "huge.jpg")


@pytest.mark.parametrize(
    ("width", "height"),
    [(8000, 6000), (10000, 10000), (30000, 30000)],
    ids=["over-farm-limit", "pillow-warning", "pillow-error"],
)
def test_decompression_bombs_are_refused_from_the_header(width: int, height: int) -> None:
    data = png_with_header(width, height)
    assert len(data) < 100
    started = time.perf_counter()
    with pytest.raises(InputError, match=r"'bomb\.png': .*(megapixel|decompression bomb)"):
        load_photo(data, "bomb.png")
    assert time.perf_counter() - started < 0.5


def test_exif_rotated_jpeg_comes_back_upright() -> None:
    # Stored landscape with a red block top-left; orientation 6 means "rotate 90 deg clockwise
    # to display", so the block must end up top-right of a portrait image.
    stored = np.zeros((100, 160, 3), np.uint8)
    stored[:30, :30] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = 6
    photo = load_photo(encode(Image.fromarray(stored), "JPEG", exif=exif, quality=95), "phone.jpg")
    assert photo.size == (100, 160)
    pixels = np.asarray(photo)
    assert pixels[5, 95, 0] > 200 and pixels[5, 95, 1] < 60
    assert pixels[5, 5, 0] < 60


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_allowed_formats_load_whatever_the_name(fmt: str) -> None:
    photo = load_photo(encode(gradient(), fmt), "photo.gif")
    assert photo.mode == "RGB" and photo.size == (160, 120)


def test_modes_are_flattened_to_rgb() -> None:
    rgba = np.zeros((80, 80, 4), np.uint8)
    rgba[:, :40] = (0, 0, 0, 0)  # transparent half: its hidden colour is black
    rgba[:, 40:] = (200, 10, 10, 255)
    flattened = np.asarray(load_photo(encode(Image.fromarray(rgba), "PNG"), "cutout.png"))
    assert (flattened[:, :40] == 255).all()
    assert tuple(flattened[0, 60]) == (200, 10, 10)

    for mode in ("P", "L", "LA", "CMYK"):
        fmt = "JPEG" if mode == "CMYK" else "PNG"
        photo = load_photo(encode(gradient(mode=mode), fmt), f"{mode}.img")
        assert photo.mode == "RGB" and photo.size == (160, 120), mode

    deep = Image.fromarray(np.full((80, 80), 40000, np.uint16))
    assert deep.mode.startswith("I;16")
    grey = np.asarray(load_photo(encode(deep, "PNG"), "16bit.png"))
    assert (grey == 40000 >> 8).all()


def test_reference_photos_load() -> None:
    for path in PHOTOS:
        photo = load_photo(path.read_bytes(), path.name)
        assert photo.mode == "RGB" and min(photo.size) >= 280


def test_content_hash_is_the_sha256_of_the_bytes() -> None:
    data = (REFS / "lenna_woman" / "lenna.jpg").read_bytes()
    assert content_hash(data) == content_hash(bytes(data)) == hashlib.sha256(data).hexdigest()
    assert (
        content_hash(b"abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )
    assert content_hash(data + b"\0") != content_hash(data)


def test_clip_pixel_values_match_transformers() -> None:
    # PhotoMaker was trained with transformers 4.x's PIL-based CLIPImageProcessor; in 5.x that
    # is CLIPImageProcessorPil (plain CLIPImageProcessor uses torchvision's resize if present).
    from transformers import CLIPImageProcessorPil

    photos = [load_photo(p.read_bytes(), p.name) for p in PHOTOS]
    wide = photos[0].resize((451, 300))  # odd crop offsets on the long side
    tall = photos[1].resize((233, 397))
    images = [*photos, wide, tall]
    ours = clip_pixel_values(images)
    reference = CLIPImageProcessorPil()(images=images, return_tensors="pt")["pixel_values"]
    assert ours.shape == (len(images), 3, 224, 224) and ours.dtype == torch.float32
    assert (ours - reference).abs().max().item() <= 1e-6


def test_face_crop_keeps_margin_and_stays_inside() -> None:
    image = gradient(1000, 800)
    centred = face_crop(image, (400, 300, 500, 420), margin=0.6)
    assert centred.size == (264, 264)  # 120 * 2.2
    assert np.array_equal(np.asarray(centred), np.asarray(image.crop((318, 228, 582, 492))))

    at_edge = face_crop(image, (0, 700, 100, 800))
    assert at_edge.size == (220, 220)  # shifted inside, not shrunk
    assert np.array_equal(np.asarray(at_edge), np.asarray(image.crop((0, 580, 220, 800))))

    small = gradient(300, 200)
    assert face_crop(small, (50, 20, 250, 180)).size == (200, 200)  # shrunk only to fit


def test_a_huge_jpeg_is_decoded_at_a_reduced_scale_in_bounded_time() -> None:
    # 6000x6000 (36 megapixels) would be 108 MB of RGB; libjpeg decodes it at 1/4 scale.
    data = encode(gradient(600, 600).resize((6000, 6000)), "JPEG", quality=80)
    started = time.perf_counter()
    photo = load_photo(data, "huge.jpg")
    assert time.perf_counter() - started < 0.5
    assert photo.size == (1500, 1500) and photo.mode == "RGB"
    assert decoded_pixels(data, "huge.jpg") == 1500 * 1500 <= DECODED_PIXELS


def test_other_formats_over_the_callers_cap_are_refused_from_the_header() -> None:
    data = png_with_header(5000, 4000)
    assert decoded_pixels(data, "big.png") == 20_000_000  # under the farm's bomb guard
    with pytest.raises(InputError, match=r"'big\.png': a 5000x4000 PNG is over the 16 megapixel"):
        load_photo(data, "big.png", max_pixels=16_000_000)


def test_a_large_png_is_kept_no_larger_than_a_decoded_jpeg() -> None:
    photo = load_photo(encode(gradient(3000, 2000), "PNG"), "large.png")
    assert photo.size == (1500, 1000) and photo.width * photo.height <= DECODED_PIXELS
