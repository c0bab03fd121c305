"""The table of bad requests (docs/robustness.md), row by row, against a real TorchServe over HTTP: the
status and the JSON `type` each gets, including the rows TorchServe's frontend answers itself."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from PIL import Image

import promised
from answers import same_answer
from bad_requests import BAD_REQUESTS, JPEG
from conftest import post_inference
from images import encode
from scripts.endpoints import Server
from scripts.paths import MODEL_NAME

# What curl sends with --data-binary (or -d) when no Content-Type is given.
CURL_DATA_DEFAULT = "application/x-www-form-urlencoded"


def error_of(answer: requests.Response) -> tuple[int, str]:
    return answer.status_code, answer.json()["type"]


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
def test_each_bad_request_gets_its_status_and_type_over_http(server: Server, case: str) -> None:
    sent, status, kind = BAD_REQUESTS[case]
    answer = post_inference(server, **sent.http())
    assert error_of(answer) == (status, kind)
    assert answer.json()["code"] == status and len(answer.json()["message"]) > 10


def test_bad_requests_fail_alone_under_concurrency(server: Server) -> None:
    """Every bad kind sent at once between as many good ones, so that TorchServe (batchSize 8)
    batches them together: each gets its own answer."""
    cases = sorted(BAD_REQUESTS)
    sends = [
        kwargs
        for case in cases
        for kwargs in ({"data": JPEG, "headers": {"Content-Type": "image/jpeg"}}, BAD_REQUESTS[case][0].http())
    ]
    with ThreadPoolExecutor(max_workers=len(sends)) as pool:
        answers = list(pool.map(lambda kwargs: post_inference(server, **kwargs), sends))
    assert [error_of(answer) for answer in answers[1::2]] == [BAD_REQUESTS[case][1:] for case in cases]
    assert [answer.status_code for answer in answers[0::2]] == [200] * len(cases)
    assert all(same_answer(answer.json(), answers[0].json()) for answer in answers[2::2])


@pytest.mark.parametrize(
    ("size", "status"), [(promised.MAX_REQUEST_BYTES, 400), (promised.MAX_REQUEST_BYTES + 1, 413)], ids=["at", "over"]
)
def test_a_body_over_the_promised_10_mib_is_413_from_torchserve(server: Server, size: int, status: int) -> None:
    """A body of exactly the limit reaches the handler (which finds no image in it); one byte more
    is refused by TorchServe before any worker sees it."""
    answer = post_inference(server, data=b"\xff" * size, headers={"Content-Type": "image/jpeg"})
    assert answer.status_code == status


@pytest.mark.parametrize(
    ("path", "kind"),
    [
        ("predictions/no-such-model", "ModelNotFoundException"),
        (f"predictions/{MODEL_NAME}/9.9", "ModelVersionNotFoundException"),
    ],
)
def test_an_unknown_model_or_version_is_404_from_torchserve(server: Server, path: str, kind: str) -> None:
    assert error_of(post_inference(server, path, data=JPEG, headers={"Content-Type": "image/jpeg"})) == (404, kind)


def test_a_photo_sent_as_curls_default_form_is_refused_by_torchserve_before_our_handler(server: Server) -> None:
    """TorchServe's frontend parses an application/x-www-form-urlencoded body as a form. A photo's
    bytes are almost never valid URL encoding, so the frontend answers 500 itself."""
    answer = post_inference(server, data=JPEG, headers={"Content-Type": CURL_DATA_DEFAULT})
    assert error_of(answer) == (500, "ErrorDataDecoderException")


def test_an_image_whose_bytes_parse_as_a_form_reaches_the_handler_which_says_what_to_do(server: Server) -> None:
    """A flat black PNG holds no '%': the frontend makes form fields of it, and the handler,
    finding neither a body nor a `data` field, names the cause."""
    black = encode(Image.new("RGB", (320, 240)), "PNG")
    assert b"%" not in black, "this PNG would not parse as a form: pick another"
    answer = post_inference(server, data=black, headers={"Content-Type": CURL_DATA_DEFAULT})
    assert error_of(answer) == (400, "UnsupportedContentType")
    assert "Content-Type: image/jpeg" in answer.json()["message"]
