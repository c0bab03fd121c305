"""Test images made on the fly from the sample photo that ships with matplotlib."""

from __future__ import annotations

import base64
import io
import struct
import zlib

import numpy as np
from PIL import Image

from scripts.paths import sample_photo as sample_photo_path

ORIENTATION_TAG = 0x0112


def sample_photo() -> Image.Image:
    with Image.open(sample_photo_path()) as image:
        return image.convert("RGB")


def encode(image: Image.Image, format: str = "JPEG", **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **options)
    return buffer.getvalue()


def b64(data: bytes) -> str:
    """An image file as JSON carries it: base64 text."""
    return base64.b64encode(data).decode()


def photo_bytes(size: tuple[int, int] | None = None, mode: str = "RGB", format: str = "JPEG") -> bytes:
    image = sample_photo()
    if size:
        image = image.resize(size)
    return encode(image.convert(mode), format)


def png_declaring(width: int, height: int) -> bytes:
    """A few dozen bytes whose header claims width x height pixels: a decompression bomb."""
    raw = encode(Image.new("L", (1, 1)), "PNG")
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunk = b"IHDR" + header
    patched = struct.pack(">I", len(header)) + chunk + struct.pack(">I", zlib.crc32(chunk))
    start = raw.index(b"IHDR") - 4
    return raw[:start] + patched + raw[start + 4 + len(chunk) + 4 :]


def jpeg_with_orientation(image: Image.Image, orientation: int) -> bytes:
    """A JPEG whose EXIF tells viewers how to turn the stored pixels (as cameras write it)."""
    exif = Image.Exif()
    exif[ORIENTATION_TAG] = orientation
    return encode(image, "JPEG", exif=exif.tobytes(), quality=95)


def exif_rotated_jpeg() -> bytes:
    """The sample photo stored on its side, tagged "rotate 90° clockwise to display"."""
    return jpeg_with_orientation(sample_photo().rotate(90, expand=True), 6)


def sixteen_bit_png(samples: np.ndarray) -> bytes:
    """A 16-bit greyscale PNG of `samples` (uint16)."""
    return encode(Image.fromarray(samples.astype(np.uint16)), "PNG")


def noise_image(size: tuple[int, int], seed: int = 0) -> Image.Image:
    width, height = size
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))
