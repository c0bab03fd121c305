"""Bytes to an upright RGB picture, refusing anything that could hurt the worker.

Pillow's own decompression-bomb limit (~179 MP) is far above what a classifier needs, so we check
the declared size before decoding a single pixel, and we only open formats we mean to serve.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from handler_config import InputLimits
from request_errors import RequestError, bad_request

# Photo formats only. Pillow's JPEG opener also reads MPO, what many phone cameras write.
SUPPORTED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
_SIXTEEN_BIT_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N")
_WHITE = (255, 255, 255)
ORIENTATION_TAG = 0x0112
QUARTER_TURNS = frozenset({5, 6, 7, 8})  # the EXIF orientations that swap width and height


def decode_rgb(data: bytes, limits: InputLimits) -> Image.Image:
    """Decode the first frame, apply EXIF orientation and convert any mode to 8-bit RGB."""
    return load_rgb(open_checked(data, limits))


def open_checked(data: bytes, limits: InputLimits) -> Image.Image:
    """Read only the header: the format is one we serve and the size is within the limits."""
    image = _open(data)
    _check_size(image, limits)
    return image


def load_rgb(image: Image.Image) -> Image.Image:
    """Decode an image opened by open_checked into an upright 8-bit RGB picture."""
    try:
        image.load()
        return to_rgb(ImageOps.exif_transpose(image))
    except Image.DecompressionBombError as error:
        raise RequestError(413, "ImageTooLarge", str(error)) from None
    except MemoryError:
        raise
    except Exception as error:  # Pillow parses hostile bytes; any failure there is the input's
        raise bad_request("CorruptImage", f"the {image.format} image is truncated or corrupt: {error}") from None


def upright_size(image: Image.Image) -> tuple[int, int]:
    """(width, height) as load_rgb will show the image: EXIF orientations 5 to 8 turn it a quarter."""
    width, height = image.size
    return (height, width) if image.getexif().get(ORIENTATION_TAG) in QUARTER_TURNS else (width, height)


def is_plain_jpeg(image: Image.Image) -> bool:
    """A baseline YCbCr or grayscale JPEG shown as stored: what a GPU JPEG decoder handles alike."""
    return (
        image.format == "JPEG"
        and image.mode in ("RGB", "L")
        and not image.info.get("progressive")
        and image.getexif().get(ORIENTATION_TAG, 1) == 1
    )


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to RGB the way a viewer would show it.

    Transparent pixels are composited on white (a plain convert turns them black), whether an
    alpha channel or a PNG's transparent colour (tRNS) marks them, and 16-bit samples are scaled to
    8 bits (a plain convert clips everything above 255 to white).
    """
    if image.mode in _SIXTEEN_BIT_MODES:
        image = _eight_bit(image)
    if image.has_transparency_data:  # an alpha channel, or a transparent colour (a PNG's tRNS)
        rgba = image.convert("RGBA")  # paste() copies an LA image's bands as stored: not RGB for _eight_bit's
        background = Image.new("RGB", image.size, _WHITE)
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if image.mode == "RGB":  # pragma: no mutate (a shortcut: converting RGB to RGB copies it)
        return image
    return image.convert("RGB")


def _eight_bit(image: Image.Image) -> Image.Image:
    """A 16-bit grey image at the nearest 8-bit levels, with its transparent grey as alpha (LA)."""
    samples = np.asarray(image)
    grey = Image.fromarray(np.clip(np.rint(samples / 257.0), 0, 255).astype(np.uint8))  # 32-bit "I" may pass 0-65535
    transparent = image.info.get("transparency")
    if transparent is None:
        return grey
    return Image.merge("LA", (grey, Image.fromarray(np.where(samples == transparent, 0, 255).astype(np.uint8))))


def _open(data: bytes) -> Image.Image:
    try:
        return Image.open(io.BytesIO(data), formats=SUPPORTED_FORMATS)
    except Image.DecompressionBombError as error:
        raise RequestError(413, "ImageTooLarge", str(error)) from None
    except UnidentifiedImageError:
        pass
    except MemoryError:
        raise
    except Exception as error:  # a header Pillow recognised but could not parse
        raise bad_request("CorruptImage", f"the image header is corrupt: {error}") from None
    other_format = _identify(data)
    if other_format:
        raise RequestError(
            415,
            "UnsupportedFormat",
            f"{other_format} images are not served; send one of {', '.join(SUPPORTED_FORMATS)}",
        )
    raise bad_request("InvalidImage", f"the {len(data)} bytes sent are not an image Pillow can read")


def _identify(data: bytes) -> str | None:
    """Name a format we refuse, so the client learns why (the header is read, never decoded)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.format
    except Exception:  # any failure here only means "not an image at all"
        return None


def _check_size(image: Image.Image, limits: InputLimits) -> None:
    width, height = image.size
    if width < 1 or height < 1:
        raise bad_request("InvalidImage", f"the image declares an empty size {width}x{height}")
    if width * height > limits.max_image_pixels:
        raise RequestError(
            413,
            "ImageTooLarge",
            f"the image is {width}x{height} = {width * height:,} pixels; the limit is "
            f"{limits.max_image_pixels:,}. Downscale it before sending",
        )
    aspect = max(width, height) / min(width, height)
    if aspect > limits.max_aspect_ratio:
        raise bad_request(
            "ExtremeAspectRatio",
            f"the image is {width}x{height} (aspect ratio {aspect:.0f}:1); the limit is "
            f"{limits.max_aspect_ratio:g}:1. Crop it to the region to classify",
        )
