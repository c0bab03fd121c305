"""Valid images in any mode or format are turned into the picture a viewer would show, then
classified. Each mode is checked against a reference built here with numpy from the stored
pixels, as the file format defines them, not with the handler's own conversion code; the
other formats, where the handler adds nothing to Pillow's decoding, against that decoding."""

from __future__ import annotations

import io
from typing import cast

import numpy as np
import pytest
import torch
from PIL import Image

from answers import same_answer
from image_decoding import decode_rgb, load_rgb, upright_size
from images import (
    encode,
    exif_rotated_jpeg,
    jpeg_with_orientation,
    noise_image,
    photo_bytes,
    sample_photo,
    sixteen_bit_png,
)
from model_identity import weight_sets
from request_errors import RequestError
from scripts.harness.in_process import InProcessModel, Request

PRESET = weight_sets()["IMAGENET1K_V2"].transforms()
WHITE = 255


def handler_pixels(model: InProcessModel, data: bytes) -> np.ndarray:
    """The RGB picture the handler classifies, as an array."""
    return np.asarray(decode_rgb(data, model.handler.config.limits))


def handler_tensor(model: InProcessModel, data: bytes) -> torch.Tensor:
    preprocessed: torch.Tensor = model.handler.preset(decode_rgb(data, model.handler.config.limits))
    return preprocessed


def reference_tensor(pixels: np.ndarray) -> torch.Tensor:
    preprocessed: torch.Tensor = PRESET(Image.fromarray(pixels.astype(np.uint8), "RGB"))
    return preprocessed


def tensors_match(ours: torch.Tensor, reference: torch.Tensor, tolerance: float = 1e-5) -> bool:
    """Equal up to float rounding: the same pixels through the same preset."""
    return ours.shape == reference.shape and (ours - reference).abs().max().item() <= tolerance


def stored_rgb(data: bytes) -> np.ndarray:
    """The pixels as stored in the file, before any EXIF orientation is applied."""
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))


# EXIF orientation -> (mirror left-right first, then quarter turns clockwise), as the EXIF
# standard words each value ("mirror horizontal and rotate 90 CW" for 7, ...).
EXIF_DISPLAY = {
    1: (False, 0),
    2: (True, 0),
    3: (False, 2),
    4: (True, 2),
    5: (True, 3),
    6: (False, 1),
    7: (True, 1),
    8: (False, 3),
}


def as_displayed(stored: np.ndarray, orientation: int) -> np.ndarray:
    mirror, clockwise_turns = EXIF_DISPLAY[orientation]
    return np.rot90(np.fliplr(stored) if mirror else stored, k=-clockwise_turns)


@pytest.mark.parametrize("orientation", sorted(EXIF_DISPLAY))
def test_exif_orientation_turns_the_picture_upright(model: InProcessModel, orientation: int) -> None:
    data = jpeg_with_orientation(sample_photo().resize((300, 200)), orientation)
    expected = as_displayed(stored_rgb(data), orientation)
    assert np.array_equal(handler_pixels(model, data), expected)
    assert tensors_match(handler_tensor(model, data), reference_tensor(expected))


def test_an_exif_rotated_photo_is_answered_as_its_upright_pixels(model: InProcessModel) -> None:
    data = exif_rotated_jpeg()
    upright = as_displayed(stored_rgb(data), 6)
    rotated, reference = model.infer([Request.raw(data), Request.raw(encode(Image.fromarray(upright), "PNG"))])
    assert same_answer(rotated.body, reference.body)


def over_white(colour: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Alpha compositing over a white background, in 8-bit integers."""
    alpha = alpha[..., None].astype(np.int32)
    composited: np.ndarray = (colour.astype(np.int32) * alpha + WHITE * (255 - alpha) + 127) // 255
    return composited


def alpha_ramp(width: int, height: int) -> np.ndarray:
    """Transparent at the left edge, opaque at the right."""
    return np.tile(np.linspace(0, 255, width).round().astype(np.uint8), (height, 1))


def palette_of(image: Image.Image) -> list[int]:
    """A palette image's palette, RGB triples flattened."""
    # cast: Pillow types getpalette() list[int] | None, None for an image without a palette; these
    # are quantize()d, so they have one.
    return cast(list[int], image.getpalette())


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_transparency_is_composited_over_white(model: InProcessModel, mode: str) -> None:
    colour_mode = mode[:-1]  # RGB or L
    colour = np.asarray(sample_photo().resize((320, 240)).convert(colour_mode))
    alpha = alpha_ramp(320, 240)
    data = encode(Image.fromarray(np.dstack([colour, alpha]), mode), "PNG")
    expected = over_white(np.asarray(Image.fromarray(colour, colour_mode).convert("RGB")), alpha)
    decoded = handler_pixels(model, data).astype(np.int32)
    assert (decoded[:, 0] == WHITE).all(), "fully transparent pixels must be white"
    assert np.abs(decoded - expected).max() <= 1  # Pillow's blend rounds its own way
    assert tensors_match(handler_tensor(model, data), reference_tensor(expected), tolerance=0.02)


def test_a_palette_image_keeps_its_transparent_colour_white(model: InProcessModel) -> None:
    palette_image = sample_photo().resize((320, 240)).quantize(32)
    indices = np.asarray(palette_image)
    transparent = int(np.bincount(indices.ravel()).argmax())  # the most common colour
    data = encode(palette_image, "PNG", transparency=transparent)
    palette = np.array(palette_of(palette_image)[: 32 * 3]).reshape(-1, 3)
    expected = np.where((indices == transparent)[..., None], WHITE, palette[indices])
    assert np.array_equal(handler_pixels(model, data), expected)


@pytest.mark.parametrize("mode", ["L", "RGB", "I;16"])
def test_a_pngs_transparent_colour_is_white_in_every_mode(model: InProcessModel, mode: str) -> None:
    """A grey, RGB or 16-bit grey PNG may name one colour transparent (tRNS), as a palette may."""
    picture = sample_photo().resize((320, 240)).quantize(32).convert("RGB" if mode == "RGB" else "L")
    pixels = np.asarray(picture).reshape(240 * 320, -1)
    colours, counts = np.unique(pixels, axis=0, return_counts=True)
    key = colours[counts.argmax()]  # the most common colour
    is_transparent = (pixels == key).all(axis=1).reshape(240, 320)
    expected = np.where(is_transparent[..., None], WHITE, np.asarray(picture.convert("RGB")))
    if mode == "I;16":
        picture, key = Image.fromarray(np.asarray(picture).astype(np.uint16) * 257), key.astype(np.uint16) * 257
    transparency = tuple(map(int, key)) if mode == "RGB" else int(key[0])
    data = encode(picture, "PNG", transparency=transparency)
    assert np.array_equal(handler_pixels(model, data), expected)


def test_an_animated_gif_is_classified_by_its_first_frame(model: InProcessModel) -> None:
    first = sample_photo().resize((200, 240)).quantize(64)
    data = encode(first, "GIF", save_all=True, append_images=[Image.new("RGB", (200, 240), "red")], duration=100)
    palette = np.array(palette_of(first)[: 64 * 3]).reshape(-1, 3)
    expected = palette[np.asarray(first)]
    assert np.array_equal(handler_pixels(model, data), expected)
    still, animated = model.infer(
        [Request.raw(encode(Image.fromarray(expected.astype(np.uint8)), "PNG")), Request.raw(data)]
    )
    assert same_answer(still.body, animated.body)


def test_sixteen_bit_samples_are_scaled_not_clipped(model: InProcessModel) -> None:
    ramp = np.tile(np.linspace(0, 65535, 512).round().astype(np.int64), (128, 1))
    expected_grey = (ramp + 128) // 257  # nearest 8-bit level: 65535 -> 255, 257 -> 1
    decoded = handler_pixels(model, sixteen_bit_png(ramp))
    assert np.array_equal(decoded, np.repeat(expected_grey[..., None], 3, axis=2))


def test_thirty_two_bit_samples_outside_sixteen_bits_are_black_or_white(model: InProcessModel) -> None:
    """A 32-bit integer TIFF (Pillow's mode "I") is scaled as 16-bit samples: below 0 is black,
    above 65535 white, not wrapped around."""
    samples = np.tile(np.array([-70_000, -1, 0, 257, 65_535, 65_536, 70_000, 2**31 - 1], dtype=np.int32), (64, 8))
    data = encode(Image.fromarray(samples, "I"), "TIFF")
    expected = np.repeat(np.tile(np.array([0, 0, 0, 1, 255, 255, 255, 255]), (64, 8))[..., None], 3, axis=2)
    assert np.array_equal(handler_pixels(model, data), expected)


def test_a_sixteen_bit_photo_matches_its_eight_bit_original(model: InProcessModel) -> None:
    grey = np.asarray(sample_photo().convert("L"), dtype=np.int64)
    data = sixteen_bit_png(grey * 257)
    assert tensors_match(handler_tensor(model, data), reference_tensor(np.repeat(grey[..., None], 3, axis=2)))


def test_grayscale_and_cmyk_become_rgb_as_pillow_defines_them(model: InProcessModel) -> None:
    grey = np.asarray(sample_photo().convert("L"))
    assert np.array_equal(handler_pixels(model, encode(Image.fromarray(grey), "PNG")), np.dstack([grey] * 3))
    cmyk = np.random.default_rng(0).integers(0, 256, (48, 64, 4))
    expected = (255 - cmyk[..., :3]) * (255 - cmyk[..., 3:]) / 255  # ink and black each absorb light
    decoded = handler_pixels(model, encode(Image.fromarray(cmyk.astype(np.uint8), "CMYK"), "TIFF"))
    assert np.abs(decoded - expected).max() <= 1


OTHER_FORMATS = {
    "progressive JPEG": lambda: encode(sample_photo(), "JPEG", progressive=True),
    "WebP": lambda: encode(sample_photo(), "WEBP"),
    "BMP": lambda: encode(sample_photo(), "BMP"),
    "TIFF": lambda: encode(sample_photo(), "TIFF"),
    "CMYK JPEG": lambda: photo_bytes(mode="CMYK"),
}


@pytest.mark.parametrize("case", sorted(OTHER_FORMATS))
def test_other_formats_are_classified_as_decoded(model: InProcessModel, case: str) -> None:
    data = OTHER_FORMATS[case]()
    assert tensors_match(handler_tensor(model, data), reference_tensor(stored_rgb(data)))
    [response] = model.infer([Request.raw(data)])
    assert response.status == 200 and len(response.body) == 5


def test_different_images_get_different_classes(model: InProcessModel) -> None:
    """The seeded random weights tell images apart, so comparing classes above means something."""
    photo = sample_photo()
    images = [
        photo,
        Image.new("RGB", photo.size, "red"),
        Image.merge("RGB", photo.split()[::-1]),
        noise_image((300, 300)),
    ]
    responses = model.infer([Request.raw(encode(image, "PNG")) for image in images])
    top1 = [response.body[0]["index"] for response in responses]
    assert len(set(top1)) == len(images), top1


@pytest.mark.parametrize("orientation", range(1, 9))
def test_the_size_checked_before_decoding_is_the_decoded_size(orientation: int) -> None:
    """Limits are checked on upright_size, before decoding: it must be the size decoding gives,
    for each of the 8 EXIF orientations (5 to 8 turn the picture a quarter)."""
    stored = Image.open(io.BytesIO(jpeg_with_orientation(noise_image((48, 32)), orientation)))
    assert upright_size(stored) == load_rgb(stored).size == ((32, 48) if orientation >= 5 else (48, 32))


def test_a_frame_too_large_to_decode_is_refused_as_too_large(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pillow checks the declared size when it opens a file (open_checked), and again when it
    decodes frames whose size only the data says: that refusal is a 413 too, never a 500."""
    image = Image.open(io.BytesIO(photo_bytes((64, 48))))

    def bomb() -> None:
        raise Image.DecompressionBombError("Image size (200000000 pixels) exceeds limit of 178956970 pixels")

    monkeypatch.setattr(image, "load", bomb)
    with pytest.raises(RequestError) as refused:
        load_rgb(image)
    assert (refused.value.status, refused.value.kind) == (413, "ImageTooLarge")
    assert refused.value.message == "Image size (200000000 pixels) exceeds limit of 178956970 pixels"
