"""Test images made on the fly from the sample photo that ships with matplotlib."""

from __future__ import annotations

import io
import struct
import zlib

from PIL import Image

from scripts.serve import sample_photo as sample_photo_path


def sample_photo() -> Image.Image:
    with Image.open(sample_photo_path()) as image:
        return image.convert("RGB")


def encode(image: Image.Image, format: str = "JPEG", **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **options)
    return buffer.getvalue()


def photo_bytes(size: tuple[int, int] | None = None, mode: str = "RGB", format: str = "JPEG") -> bytes:
    image = sample_photo()
    if size:
        image = image.resize(size)
    return encode(image.convert(mode), format)


def png_declaring(width: int, height: int) -> bytes:
    """A few hundred bytes whose header claims width x height pixels: a decompression bomb."""
    raw = encode(Image.new("L", (1, 1)), "PNG")
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunk = b"IHDR" + header
    patched = struct.pack(">I", len(header)) + chunk + struct.pack(">I", zlib.crc32(chunk))
    start = raw.index(b"IHDR") - 4
    return raw[:start] + patched + raw[start + 4 + len(chunk) + 4:]
