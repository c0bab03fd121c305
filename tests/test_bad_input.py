"""Every kind of bad request gets its own 4xx and a JSON body naming the problem, and the size
limits hold where they are configured. In-process, through TorchServe's loader; the same table
against a real server is tests/test_bad_input_served.py."""

from __future__ import annotations

import dataclasses
from typing import cast

import pytest
import yaml
from hypothesis import HealthCheck, given, settings, strategies as st
from PIL import Image

import promised
from answers import same_answer
from bad_requests import BAD_REQUESTS, JPEG
from handler_config import HandlerConfig, InputLimits
from images import b64, encode, photo_bytes, png_declaring, sample_photo
from request_errors import bad_request
from scripts.harness.in_process import PREDICTIONS_ROUTE, InProcessModel, Request
from scripts.paths import MODEL_CONFIG_DIR

# Pillow refuses to open images over twice its MAX_IMAGE_PIXELS (about 179 MP) by itself; our
# own limit (40 MP) must hold below that.
# (cast: Pillow types it int | None, None meaning "no limit"; nothing here sets it.)
PILLOW_REFUSES_ABOVE = 2 * cast(int, Image.MAX_IMAGE_PIXELS)
PROMISED_LIMITS = {
    "max_image_pixels": promised.MAX_IMAGE_PIXELS,
    "max_aspect_ratio": promised.MAX_ASPECT_RATIO,
    "max_images_per_request": promised.MAX_IMAGES_PER_REQUEST,
    "max_explained_classes": promised.MAX_EXPLAINED_CLASSES,
    "max_heatmaps_per_request": promised.MAX_HEATMAPS_PER_REQUEST,
}


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
@pytest.mark.checks_the_load
def test_a_bad_request_gets_a_4xx_naming_the_problem(model: InProcessModel, case: str) -> None:
    sent, status, kind = BAD_REQUESTS[case]
    [response] = model.infer([sent.in_process()])
    assert response.status == status
    assert response.body["code"] == status and response.body["type"] == kind
    assert len(response.body["message"]) > 10


def test_a_json_bodys_bad_base64_is_named_by_its_field(model: InProcessModel) -> None:
    [response] = model.infer([BAD_REQUESTS["invalid base64"][0].in_process()])
    assert response.body["message"].startswith("'data' is not valid base64: ")


# What the frontend forwards for a body it parsed as form fields: the fields, no body.
URL_ENCODED_FORM = Request(
    (("a photo's bytes", "", b"parsed as form fields"),),
    (("Content-Type", "application/x-www-form-urlencoded"), *PREDICTIONS_ROUTE),
)


@pytest.mark.parametrize(
    ("request_", "kind", "message"),
    [
        (
            URL_ENCODED_FORM,
            "UnsupportedContentType",
            "the body was sent as application/x-www-form-urlencoded (curl --data-binary's default); "
            "add -H 'Content-Type: image/jpeg' or use -T image.jpg",
        ),
        (
            Request.form(file=JPEG, image=JPEG),
            "MissingField",
            "no 'data' field in the form (fields sent: file, image); "
            "send the image as -F 'data=@image.jpg' or as the raw request body",
        ),
    ],
    ids=["url-encoded", "multipart without data"],
)
def test_a_form_without_an_image_says_what_to_send_instead(
    model: InProcessModel, request_: Request, kind: str, message: str
) -> None:
    """curl's two ways of getting a form wrong: the answer names the cause and the command to use."""
    [response] = model.infer([request_])
    assert (response.status, response.body["type"], response.body["message"]) == (400, kind, message)


def test_bad_requests_fail_alone_in_a_full_batch(model: InProcessModel) -> None:
    cases = sorted(BAD_REQUESTS)[:6]
    requests = [item for case in cases for item in (Request.raw(JPEG), BAD_REQUESTS[case][0].in_process())]
    responses = model.infer(requests)
    assert [r.status for r in responses[0::2]] == [200] * len(cases)
    assert [r.status for r in responses[1::2]] == [BAD_REQUESTS[case][1] for case in cases]
    assert all(same_answer(r.body, responses[0].body) for r in responses[0::2])


def test_the_test_bombs_straddle_our_limit_and_pillows() -> None:
    """The 48 MP case must be one that only our check refuses."""
    assert promised.MAX_IMAGE_PIXELS < 8000 * 6000 < PILLOW_REFUSES_ABOVE < 50_000**2


@pytest.mark.checks_the_load
def test_the_model_config_and_the_archive_carry_the_promised_limits(model: InProcessModel) -> None:
    configured = yaml.safe_load((MODEL_CONFIG_DIR / "model-config.yaml").read_text())["handler"]["limits"]
    assert configured == PROMISED_LIMITS
    assert dataclasses.asdict(model.handler.config.limits) == PROMISED_LIMITS


@pytest.mark.checks_the_load
def test_limits_other_than_the_defaults_are_read_from_the_archive_config(model: InProcessModel) -> None:
    """The shipped limits equal the defaults, so the test above alone would pass if they were ignored."""
    section = {
        **model.service.context.model_yaml_config["handler"],
        "limits": {"max_image_pixels": 1234, "max_aspect_ratio": 3.0},
    }
    assert HandlerConfig.from_yaml(section).limits == InputLimits(max_image_pixels=1234, max_aspect_ratio=3.0)


@pytest.mark.checks_the_load
def test_the_pixel_limit_is_inclusive_and_checked_before_decoding(model: InProcessModel) -> None:
    """At exactly the limit the header passes (and the bytes then fail to decode: they hold one
    pixel); one row more is refused on the header alone."""
    limit = promised.MAX_IMAGE_PIXELS
    width = 8000
    assert limit % width == 0, "pick a width that divides the promised limit"
    at_limit, over_limit = model.infer(
        [Request.raw(png_declaring(width, limit // width)), Request.raw(png_declaring(width, limit // width + 1))]
    )
    assert (at_limit.status, at_limit.body["type"]) == (400, "CorruptImage")
    assert (over_limit.status, over_limit.body["type"]) == (413, "ImageTooLarge")
    assert over_limit.body["message"] == (
        f"the image is {width}x{limit // width + 1} = {limit + width:,} pixels; the limit is {limit:,}. "
        "Downscale it before sending"
    )


def test_a_header_pillow_recognises_but_cannot_read_is_refused_as_corrupt(model: InProcessModel) -> None:
    """A BMP whose header names a compression Pillow does not know: a 400 saying so, not a 500."""
    bmp = bytearray(encode(sample_photo(), "BMP"))
    bmp[30:34] = (99).to_bytes(4, "little")  # BITMAPINFOHEADER's compression field
    [answer] = model.infer([Request.raw(bytes(bmp), "image/bmp")])
    assert (answer.status, answer.body["type"]) == (400, "CorruptImage")
    assert answer.body["message"] == "the image header is corrupt: Unsupported BMP compression (99)"


def test_a_header_past_pillows_own_limit_is_refused_as_too_large(model: InProcessModel) -> None:
    """Pillow refuses to open a file declaring over 2 x its MAX_IMAGE_PIXELS (178,956,970 pixels): a
    413 in its words, before our own limit is asked."""
    [answer] = model.infer([Request.raw(png_declaring(20_000, 20_000))])
    assert (answer.status, answer.body["type"]) == (413, "ImageTooLarge")
    assert answer.body["message"].startswith("Image size (400000000 pixels) exceeds limit of 178956970 pixels")


@pytest.mark.parametrize(("limit", "status"), [(640 * 480 - 1, 413), (640 * 480, 200)])
@pytest.mark.checks_the_load
def test_the_handler_applies_the_limit_it_is_configured_with(
    model: InProcessModel, monkeypatch: pytest.MonkeyPatch, limit: int, status: int
) -> None:
    lowered = dataclasses.replace(model.handler.config, limits=InputLimits(max_image_pixels=limit))
    monkeypatch.setattr(model.handler, "config", lowered)
    [response] = model.infer([Request.raw(photo_bytes((640, 480)))])
    assert response.status == status


AT_THE_RATIO = 40 * promised.MAX_ASPECT_RATIO


def size_id(value: object) -> str:
    """A (width, height) parameter as its test id names it: 800x40."""
    return "{}x{}".format(*value) if isinstance(value, tuple) else str(value)


@pytest.mark.parametrize(
    ("size", "status"),
    [
        ((AT_THE_RATIO, 40), 200),
        ((AT_THE_RATIO + 1, 40), 400),
        ((40, AT_THE_RATIO), 200),
        ((40, AT_THE_RATIO + 1), 400),
    ],
    ids=size_id,
)
@pytest.mark.checks_the_load
def test_the_aspect_ratio_limit_is_inclusive_either_way_round(
    model: InProcessModel, size: tuple[int, int], status: int
) -> None:
    [response] = model.infer([Request.raw(encode(sample_photo().resize(size), "PNG"))])
    assert response.status == status
    if status == 400:
        assert response.body["type"] == "ExtremeAspectRatio"
        assert f"the limit is {promised.MAX_ASPECT_RATIO}:1" in response.body["message"]


@pytest.mark.parametrize(
    ("size", "status"),
    [((1, 1), 200), ((0, 10), 400), ((10, 0), 400)],
    ids=size_id,
)
def test_an_image_of_one_pixel_is_classified_and_one_of_none_refused(
    model: InProcessModel, size: tuple[int, int], status: int
) -> None:
    [response] = model.infer([Request.raw(png_declaring(*size))])
    assert response.status == status
    if status == 400:
        assert response.body["type"] == "InvalidImage"


def mutated(data: bytes, edits: list[tuple[int, int]]) -> bytes:
    buffer = bytearray(data)
    for position, value in edits:
        buffer[position % len(buffer)] = value
    return bytes(buffer)


SEEDS = [
    photo_bytes((64, 48)),
    encode(sample_photo().resize((64, 48)), "PNG"),
    encode(sample_photo().resize((64, 48)), "GIF"),
    encode(sample_photo().resize((64, 48)), "WEBP"),
]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.one_of(
        st.binary(max_size=2048),
        st.builds(
            mutated,
            st.sampled_from(SEEDS),
            st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=12),
        ),
        st.builds(lambda seed, cut: seed[:cut], st.sampled_from(SEEDS), st.integers(0, 4000)),
    )
)
def test_fuzzed_bytes_never_escape_the_error_path(model: InProcessModel, data: bytes) -> None:
    """Random and mutated image bytes: a classification or a 4xx JSON answer, never an exception."""
    [response] = model.infer([Request.raw(data)])
    if response.status == 200:
        assert len(response.body) == 5
    else:
        assert 400 <= response.status < 500 and {"code", "type", "message"} <= set(response.body)


def test_base64_of_a_valid_image_in_json_is_classified(model: InProcessModel) -> None:
    [response] = model.infer([Request.json({"data": b64(JPEG)})])
    assert response.status == 200


def test_a_request_error_reads_as_its_message_where_it_is_logged() -> None:
    """An error that escaped to TorchServe's log would be printed as str(error)."""
    assert str(bad_request("InvalidJSON", "the body is not valid JSON")) == "the body is not valid JSON"
