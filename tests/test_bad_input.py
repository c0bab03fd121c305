"""Every kind of bad request gets its own 4xx and a JSON body naming the problem; valid images
in any mode or format Pillow decodes are classified. In-process, through TorchServe's loader."""

from __future__ import annotations

import base64
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from answers import same_answer
from images import encode, photo_bytes, png_declaring, sample_photo
from scripts.in_process import InProcessModel, Request
from scripts.paths import archive_name


@pytest.fixture(scope="module")
def model(model_store: Path, tmp_path_factory: pytest.TempPathFactory) -> InProcessModel:
    return InProcessModel(model_store / archive_name("2.0"), tmp_path_factory.mktemp("model"))


JPEG = photo_bytes((320, 240))
BAD_REQUESTS = {
    "empty body": (Request.raw(b""), 400, "EmptyBody"),
    "not an image": (Request.raw(b"%PDF-1.4 definitely not a photo"), 400, "InvalidImage"),
    "truncated JPEG": (Request.raw(JPEG[: len(JPEG) // 2]), 400, "CorruptImage"),
    "corrupt PNG": (Request.raw(encode(sample_photo(), "PNG")[:2000]), 400, "CorruptImage"),
    "unsupported format": (Request.raw(encode(sample_photo(), "PPM")), 415, "UnsupportedFormat"),
    "decompression bomb": (Request.raw(png_declaring(50_000, 50_000)), 413, "ImageTooLarge"),
    "extreme aspect ratio": (Request.raw(encode(Image.new("RGB", (2000, 40)), "PNG")), 400, "ExtremeAspectRatio"),
    "invalid base64": (Request.json({"data": "not*base64!"}), 400, "InvalidBase64"),
    "invalid JSON": (Request.json(b'{"data": '), 400, "InvalidJSON"),
    "JSON without data": (Request.json({"image": "abc"}), 400, "InvalidJSON"),
    "form without the data field": (Request.form(file=JPEG), 400, "MissingField"),
    "form-urlencoded body": (Request(parameters=(), headers=(("Content-Type", "application/x-www-form-urlencoded"),)),
                             400, "UnsupportedContentType"),
}


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
def test_a_bad_request_gets_a_4xx_naming_the_problem(model: InProcessModel, case: str) -> None:
    request, status, kind = BAD_REQUESTS[case]
    [response] = model.infer([request])
    assert response.status == status
    assert response.body["code"] == status and response.body["type"] == kind
    assert len(response.body["message"]) > 10


def test_bad_requests_fail_alone_in_a_full_batch(model: InProcessModel) -> None:
    cases = sorted(BAD_REQUESTS)[:6]
    requests = [item for case in cases for item in (Request.raw(JPEG), BAD_REQUESTS[case][0])]
    responses = model.infer(requests)
    assert [r.status for r in responses[0::2]] == [200] * len(cases)
    assert [r.status for r in responses[1::2]] == [BAD_REQUESTS[case][1] for case in cases]
    assert all(same_answer(r.body, responses[0].body) for r in responses[0::2])


def sixteen_bit_png() -> bytes:
    gray = np.asarray(sample_photo().convert("L"), dtype=np.uint16) * 257
    return encode(Image.fromarray(gray), "PNG")


def exif_rotated_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90° clockwise to display
    return encode(sample_photo().rotate(90, expand=True), "JPEG", exif=exif.tobytes(), quality=95)


def animated_gif() -> bytes:
    frames = [sample_photo().resize((200, 240)), Image.new("RGB", (200, 240), "red")]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)


VALID_IMAGES = {
    "grayscale": lambda: photo_bytes(mode="L"),
    "palette with transparency": lambda: encode(sample_photo().convert("P"), "PNG", transparency=0),
    "RGBA": lambda: encode(sample_photo().convert("RGBA"), "PNG"),
    "LA": lambda: encode(sample_photo().convert("LA"), "PNG"),
    "CMYK JPEG": lambda: photo_bytes(mode="CMYK"),
    "16-bit PNG": sixteen_bit_png,
    "EXIF-rotated": exif_rotated_jpeg,
    "progressive JPEG": lambda: encode(sample_photo(), "JPEG", progressive=True),
    "WebP": lambda: encode(sample_photo(), "WEBP"),
    "animated GIF": animated_gif,
    "BMP": lambda: encode(sample_photo(), "BMP"),
    "TIFF": lambda: encode(sample_photo(), "TIFF"),
}


@pytest.mark.parametrize("case", sorted(VALID_IMAGES))
def test_valid_images_of_any_mode_are_classified(model: InProcessModel, case: str) -> None:
    [response] = model.infer([Request.raw(VALID_IMAGES[case]())])
    assert response.status == 200, response.body
    assert len(response.body) == 5


def test_exif_orientation_is_applied(model: InProcessModel) -> None:
    from image_decoding import decode_rgb

    upright = decode_rgb(exif_rotated_jpeg(), model.handler.config.limits)
    assert upright.size == sample_photo().size


def test_sixteen_bit_samples_are_scaled_not_clipped(model: InProcessModel) -> None:
    from image_decoding import decode_rgb

    decoded = np.asarray(decode_rgb(sixteen_bit_png(), model.handler.config.limits), dtype=np.int16)
    expected = np.asarray(sample_photo().convert("L"), dtype=np.int16)
    assert np.abs(decoded[..., 0] - expected).max() <= 1


def mutated(data: bytes, edits: list[tuple[int, int]]) -> bytes:
    buffer = bytearray(data)
    for position, value in edits:
        buffer[position % len(buffer)] = value
    return bytes(buffer)


SEEDS = [photo_bytes((64, 48)), encode(sample_photo().resize((64, 48)), "PNG"),
         encode(sample_photo().resize((64, 48)), "GIF"), encode(sample_photo().resize((64, 48)), "WEBP")]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(
    st.binary(max_size=2048),
    st.builds(mutated, st.sampled_from(SEEDS), st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)),
                                                        min_size=1, max_size=12)),
    st.builds(lambda seed, cut: seed[:cut], st.sampled_from(SEEDS), st.integers(0, 4000)),
))
def test_fuzzed_bytes_never_escape_the_error_path(model: InProcessModel, data: bytes) -> None:
    """Random and mutated image bytes: a classification or a 4xx JSON answer, never an exception."""
    [response] = model.infer([Request.raw(data)])
    if response.status == 200:
        assert len(response.body) == 5
    else:
        assert 400 <= response.status < 500 and {"code", "type", "message"} <= set(response.body)


def test_base64_of_a_valid_image_in_json_is_classified(model: InProcessModel) -> None:
    [response] = model.infer([Request.json({"data": base64.b64encode(JPEG).decode()})])
    assert response.status == 200


