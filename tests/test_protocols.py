"""KServe v1 and the Open Inference Protocol, in-process through TorchServe's loader: every
protocol classifies alike, a request of several images is answered image by image, and each
malformed request or bad image gets its own 4xx naming the problem and the image. The same
protocols against a real TorchServe, with real clients, are tests/test_protocols_served.py."""

from __future__ import annotations

import dataclasses
import json
import struct
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

import oip
import promised
from answers import indices, same_answer, top5
from handler_config import InputLimits
from images import b64, encode, noise_image, photo_bytes
from kserve_v1 import KServeV1Request
from scripts.harness.in_process import InProcessModel, Request, Response

PHOTO, NOISE = photo_bytes((500, 400)), encode(noise_image((320, 240)))
NOT_AN_IMAGE = b"%PDF-1.4 definitely not a photo"


def grpc_request(images: list[bytes], request_id: str = "g") -> Request:
    """What TorchServe's OIP gRPC frontend forwards for ModelInfer: BYTES contents in base64."""
    return Request.grpc(
        {
            "id": request_id,
            "model_name": "resnet50",
            "inputs": [
                {"name": "image", "datatype": "BYTES", "shape": [len(images)], "data": [b64(image) for image in images]}
            ],
        }
    )


def oip_json(inputs: Any, **fields: Any) -> Request:
    return Request.kserve({"inputs": inputs, **fields})


def image_tensor(images: list[str] | list[list[str]], **fields: Any) -> dict[str, Any]:
    return {"name": "image", "datatype": "BYTES", "shape": [len(images)], "data": images, **fields}


def error_message(response: Response) -> str:
    """KServe's {"error": "<Kind>: <message>"} body, whether the handler wrote it compact or not."""
    body = json.loads(response.body) if isinstance(response.body, (bytes, bytearray)) else response.body
    message: str = body["error"]
    return message


def error_of(response: Response) -> tuple[int, str]:
    return response.status, error_message(response).split(":")[0]


@pytest.fixture(scope="module")
def reference(model: InProcessModel) -> list[list[dict[str, Any]]]:
    """Our REST answers for the photo and the noise, one image per request."""
    return [response.body for response in model.infer([Request.raw(PHOTO), Request.raw(NOISE)])]


def test_every_protocol_classifies_alike(model: InProcessModel, reference: list[list[dict[str, Any]]]) -> None:
    v1, oip_json_answer, oip_binary, grpc = model.infer(
        [
            Request.kserve(
                {
                    "instances": [
                        b64(PHOTO),
                        {"data": b64(NOISE)},
                        {"b64": b64(PHOTO)},
                        {"image_bytes": {"b64": b64(NOISE)}},
                    ]
                }
            ),
            oip.in_process([oip.image_input([b64(PHOTO), b64(NOISE)], binary=False)], [oip.requested(binary=False)]),
            oip.in_process([oip.image_input([PHOTO, NOISE])]),
            grpc_request([PHOTO, NOISE]),
        ]
    )
    assert v1.status == 200 and len(v1.body["predictions"]) == 4
    assert all(
        same_answer(answer, expected) for answer, expected in zip(v1.body["predictions"], reference * 2, strict=True)
    )
    for answer in (oip.result(oip_json_answer), oip.result(oip_binary), oip.result(grpc)):
        probabilities = answer.as_numpy(oip.OUTPUT)
        assert probabilities.dtype == np.float32 and probabilities.shape == (2, 1000)
        for row, expected in zip(probabilities, reference, strict=True):
            top = top5(row)
            assert top == indices(expected)
            assert row[top] == pytest.approx([p["probability"] for p in expected], abs=1e-4)


@pytest.mark.checks_the_load
def test_the_answer_names_the_model_and_echoes_the_id(model: InProcessModel) -> None:
    [response] = model.infer([oip.in_process([oip.image_input([PHOTO])], request_id="req-7")])
    answer = oip.result(response).get_response()
    assert (answer["id"], answer["model_name"], answer["model_version"]) == ("req-7", "resnet50", "2.0")
    assert answer["outputs"][0]["parameters"] == {"binary_data_size": 4000}


@pytest.mark.parametrize("k", [1, 3, 1000])
@pytest.mark.parametrize("binary", [True, False])
def test_the_classification_extension_answers_top_k_strings(
    model: InProcessModel, reference: list[list[dict[str, Any]]], binary: bool, k: int
) -> None:
    """The k most probable of the FP32 output, highest first, labelled as our REST answer labels
    them; k from 1 to every class (0 and 1001 are refused: BAD_OIP_REQUESTS)."""
    images = [oip.image_input([PHOTO, NOISE])]
    ranked, plain = model.infer([oip.in_process(images, [oip.requested(binary, classes=k)]), oip.in_process(images)])
    output = oip.result(ranked).get_output(oip.OUTPUT)
    assert output["datatype"] == "BYTES" and output["shape"] == [2, k]
    rows = oip.classifications(oip.result(ranked).as_numpy(oip.OUTPUT))
    for row, probabilities, expected in zip(rows, oip.result(plain).as_numpy(oip.OUTPUT), reference, strict=True):
        ranked_indices, ranked_probabilities = [index for _, index, _ in row], [p for p, _, _ in row]
        assert len(set(ranked_indices)) == k
        assert ranked_probabilities == sorted(ranked_probabilities, reverse=True)
        assert ranked_probabilities == pytest.approx(probabilities[ranked_indices].tolist(), abs=1e-5)
        left_out = np.delete(probabilities, ranked_indices)
        assert left_out.size == 0 or left_out.max() <= min(ranked_probabilities) + 1e-5
        assert [label for _, _, label in row[:5]] == [p["label"] for p in expected[:k]]


def test_binary_data_output_applies_when_no_output_is_named(model: InProcessModel) -> None:
    """tritonclient asks for every output in binary this way when it names none."""
    binary, plain = model.infer([oip.in_process([oip.image_input([PHOTO])]), oip_json([image_tensor([b64(PHOTO)])])])
    assert binary.headers[oip.HEADER_LENGTH] and binary.headers["Content-Type"] == "application/octet-stream"
    assert oip.HEADER_LENGTH not in plain.headers and plain.headers["Content-Type"] == "application/json"
    assert np.array_equal(oip.result(binary).as_numpy(oip.OUTPUT), oip.result(plain).as_numpy(oip.OUTPUT))


@pytest.mark.parametrize(
    ("request_fields", "binary"),
    [
        ({}, False),
        ({"outputs": []}, False),  # an empty list asks for every output, as an absent one does
        ({"parameters": {"binary_data_output": True}, "outputs": [{"name": "probabilities"}]}, True),
        (
            {
                "parameters": {"binary_data_output": True},
                "outputs": [{"name": "probabilities", "parameters": {"binary_data": False}}],
            },
            False,
        ),
    ],
)
def test_binary_output_follows_the_output_then_the_request(
    model: InProcessModel, request_fields: dict[str, Any], binary: bool
) -> None:
    [response] = model.infer([oip_json([image_tensor([b64(PHOTO)])], **request_fields)])
    assert (oip.HEADER_LENGTH in response.headers) == binary
    assert oip.result(response).as_numpy(oip.OUTPUT).shape == (1, 1000)


def test_other_accepted_forms(model: InProcessModel, reference: list[list[dict[str, Any]]]) -> None:
    """A column of strings ([N, 1]), KServe v1 without a content type, an answer without `id`
    when none was sent, and gRPC Predictions sending its image under the key "body"."""
    column, v1_untyped, no_id, grpc_body = model.infer(
        [
            oip_json([{**image_tensor([[b64(PHOTO)], [b64(NOISE)]]), "shape": [2, 1]}]),
            Request.kserve({"instances": [b64(NOISE)]}, content_type=None),
            oip_json([image_tensor([b64(PHOTO)])]),
            Request((("body", "application/octet-stream", PHOTO),)),  # gRPC: no HTTP headers
        ]
    )
    assert [top5(row) for row in oip.result(column).as_numpy(oip.OUTPUT)] == [indices(r) for r in reference]
    assert same_answer(v1_untyped.body["predictions"][0], reference[1])
    assert "id" not in oip.result(no_id).get_response()
    assert grpc_body.status == 200 and same_answer(grpc_body.body, reference[0])


def test_a_reader_that_fails_unforeseen_fails_its_own_request_only(
    model: InProcessModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(self: Any) -> list[bytes]:
        raise ValueError("a bug in the reader")

    monkeypatch.setattr(KServeV1Request, "images", broken)
    bad, good = model.infer([Request.kserve({"instances": [b64(PHOTO)]}), Request.raw(PHOTO)])
    assert error_of(bad) == (500, "InternalError") and "a bug in the reader" in error_message(bad)
    assert good.status == 200


def test_a_class_reader_that_fails_unforeseen_fails_its_own_explanation_only(
    model: InProcessModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(self: Any) -> Any:
        raise ValueError("a bug in the class reader")

    monkeypatch.setattr(KServeV1Request, "named_classes", broken)
    bad, good = model.infer([Request.kserve({"instances": [b64(PHOTO)]}).explaining(), Request.raw(PHOTO)])
    assert error_of(bad) == (500, "InternalError")
    assert "could not read this request's classes" in error_message(bad)
    assert "a bug in the class reader" in error_message(bad)
    assert good.status == 200


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=12,
)
KEYS = (
    "id",
    "parameters",
    "inputs",
    "outputs",
    "name",
    "datatype",
    "shape",
    "data",
    "binary_data",
    "binary_data_size",
    "binary_data_output",
    "classification",
    "instances",
    "b64",
    "image_bytes",
)


def shaped_like_a_request(values: st.SearchStrategy) -> st.SearchStrategy:
    """JSON that looks like an OIP or v1 request, with anything at any of their keys."""
    tensor = st.fixed_dictionaries({}, optional=dict.fromkeys(KEYS, values))
    return st.one_of(
        st.fixed_dictionaries(
            {"inputs": st.lists(tensor, max_size=2) | values},
            optional={"outputs": st.lists(tensor, max_size=2) | values, "parameters": values, "id": values},
        ),
        st.fixed_dictionaries({"instances": st.lists(values | tensor, max_size=3) | values}),
        values,
    )


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(shaped_like_a_request(JSON_VALUES), st.booleans())
def test_fuzzed_requests_get_a_4xx_never_a_crash(model: InProcessModel, document: Any, typed: bool) -> None:
    """Anything at any key of a KServe request: a 4xx naming the problem (500 is a reader's bug)."""
    [response] = model.infer([Request.kserve(document, content_type="application/json" if typed else None)])
    assert 400 <= response.status < 500, response.body


def binary_request(
    header: dict[str, Any], tail: bytes, header_length: int | str | None = None, encoded: bytes | None = None
) -> Request:
    """A binary-data request: the JSON header (or `encoded` bytes in its place), then `tail`."""
    encoded = json.dumps(header).encode() if encoded is None else encoded
    return Request.kserve(
        encoded + tail,
        content_type=None,
        Inference_Header_Content_Length=str(len(encoded) if header_length is None else header_length),
    )


def length_prefixed(*elements: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(element)) + element for element in elements)


BINARY_IMAGE = {"name": "image", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": 4 + len(PHOTO)}}
# (request, status, kind, words the message must hold)
BAD_OIP_REQUESTS: dict[str, tuple[Request, int, str, str]] = {
    "not JSON after the binary header": (
        binary_request({"inputs": [BINARY_IMAGE]}, b"", 3),
        400,
        "InvalidJSON",
        "not a JSON header",
    ),
    "no inputs": (oip_json([]), 400, "InvalidInput", "exactly one tensor"),
    "two inputs": (oip_json([image_tensor([b64(PHOTO)])] * 2), 400, "InvalidInput", "exactly one tensor"),
    "another input name": (
        oip_json([{**image_tensor([b64(PHOTO)]), "name": "input__0"}]),
        400,
        "InvalidInput",
        "'input__0'",
    ),
    "not BYTES": (oip_json([{**image_tensor([b64(PHOTO)]), "datatype": "FP32"}]), 400, "InvalidInput", "'FP32'"),
    "shape of two rows": (oip_json([{**image_tensor([b64(PHOTO)]), "shape": [1, 2]}]), 400, "InvalidInput", "[1, 2]"),
    "shape unlike the data": (
        oip_json([{**image_tensor([b64(PHOTO)]), "shape": [2]}]),
        400,
        "InvalidInput",
        "holds 1 elements",
    ),
    "no data": (
        oip_json([{"name": "image", "datatype": "BYTES", "shape": [1]}]),
        400,
        "InvalidInput",
        "neither 'data'",
    ),
    "invalid base64": (oip_json([image_tensor([b64(PHOTO), "not*base64"])]), 400, "InvalidBase64", "element 1"),
    "an unknown output": (
        oip_json([image_tensor([b64(PHOTO)])], outputs=[{"name": "logits"}]),
        400,
        "InvalidOutput",
        "InvalidOutput: unknown output 'logits': this model's output is 'probabilities'",
    ),
    "an output named by a bare string": (
        oip_json([image_tensor([b64(PHOTO)])], outputs=["probabilities"]),
        400,
        "InvalidOutput",
        """InvalidOutput: an output must be a JSON object {"name": "probabilities"}, got 'probabilities'""",
    ),
    "data that is not a list": (
        oip_json([{**image_tensor([]), "shape": [1], "data": b64(PHOTO)}]),
        400,
        "InvalidInput",
        "InvalidInput: input 'image' data must be a list of base64 strings",
    ),
    "an element of two strings": (
        oip_json([{**image_tensor([[b64(PHOTO), b64(PHOTO)]]), "shape": [1, 1]}]),
        400,
        "InvalidJSON",
        "InvalidJSON: input 'image' element 0 must be a base64 string, got list",
    ),
    "binary_data_size in a request without binary data": (
        oip_json([{"name": "image", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": 4}}]),
        400,
        "InvalidBinaryData",
        "InvalidBinaryData: input 'image' declares binary_data_size 4, but the body holds only 0 bytes of binary data",
    ),
    "classification 0": (
        oip_json(
            [image_tensor([b64(PHOTO)])], outputs=[{"name": "probabilities", "parameters": {"classification": 0}}]
        ),
        400,
        "InvalidOutput",
        "1 to 1000",
    ),
    "classification 1001": (
        oip_json(
            [image_tensor([b64(PHOTO)])], outputs=[{"name": "probabilities", "parameters": {"classification": 1001}}]
        ),
        400,
        "InvalidOutput",
        "1 to 1000",
    ),
    "header length beyond the body": (
        binary_request({"inputs": [BINARY_IMAGE]}, length_prefixed(PHOTO), 10**6),
        400,
        "InvalidBinaryData",
        "Inference-Header-Content-Length",
    ),
    # The whole body as the header is "JSON null with the binary header", below.
    "header length one beyond the body": (
        binary_request({}, b"", len(b"{}") + 1),
        400,
        "InvalidBinaryData",
        "InvalidBinaryData: Inference-Header-Content-Length is '3', but the body is 2 bytes; "
        "it must be the length of the JSON header at the start of the body",
    ),
    "a header length of 1, the least allowed": (
        binary_request({}, b"", 1),
        400,
        "InvalidJSON",
        "the first 1 bytes (Inference-Header-Content-Length) are not a JSON header",
    ),
    "a header length of 0": (
        binary_request({"inputs": [BINARY_IMAGE]}, length_prefixed(PHOTO), 0),
        400,
        "InvalidBinaryData",
        "Inference-Header-Content-Length is '0'",
    ),
    "header length inside the JSON": (
        binary_request({"inputs": [BINARY_IMAGE]}, length_prefixed(PHOTO), 10),
        400,
        "InvalidJSON",
        "not a JSON header",
    ),
    "binary data shorter than declared": (
        binary_request({"inputs": [BINARY_IMAGE]}, length_prefixed(PHOTO)[:-1]),
        400,
        "InvalidBinaryData",
        "only",
    ),
    "binary data longer than declared": (
        binary_request({"inputs": [BINARY_IMAGE]}, length_prefixed(PHOTO) + b"x"),
        400,
        "InvalidBinaryData",
        "declare",
    ),
    "a header length that is not a number": (
        binary_request({"inputs": [BINARY_IMAGE]}, length_prefixed(PHOTO), "²"),
        400,
        "InvalidBinaryData",
        "'²'",
    ),
    "a header length of 5000 digits": (
        binary_request({"inputs": [BINARY_IMAGE]}, length_prefixed(PHOTO), "9" * 5000),
        400,
        "InvalidBinaryData",
        "Inference-Header-Content-Length",
    ),
    "a binary_data_size that is true": (
        binary_request(
            {"inputs": [{**BINARY_IMAGE, "parameters": {"binary_data_size": True}}]}, length_prefixed(PHOTO)
        ),
        400,
        "InvalidBinaryData",
        "True",
    ),
    "a binary_data_size of 0, the least allowed": (
        binary_request({"inputs": [{**BINARY_IMAGE, "parameters": {"binary_data_size": 0}}]}, b""),
        400,
        "InvalidInput",
        "input 'image' has shape [1] but holds 0 elements",
    ),
    "a binary_data_size of -1": (
        binary_request({"inputs": [{**BINARY_IMAGE, "parameters": {"binary_data_size": -1}}]}, length_prefixed(PHOTO)),
        400,
        "InvalidBinaryData",
        "InvalidBinaryData: input 'image' declares binary_data_size -1; it must be a number of bytes",
    ),
    "JSON nested 100,000 deep after the binary header": (
        binary_request({}, b"", None, b"[" * 100_000),
        400,
        "InvalidJSON",
        "not a JSON header",
    ),
    "JSON null with the binary header": (
        Request.kserve(b"null", content_type=None, Inference_Header_Content_Length="4"),
        400,
        "InvalidJSON",
        'InvalidJSON: an inference request must be a JSON object {"inputs": [...]}',
    ),
    "request parameters not an object": (
        oip_json([image_tensor([b64(PHOTO)])], parameters=[1]),
        400,
        "InvalidInput",
        "the parameters of the request",
    ),
    "input parameters not an object": (
        oip_json([image_tensor([b64(PHOTO)], parameters="x")]),
        400,
        "InvalidInput",
        "the parameters of input 'image'",
    ),
    "output parameters not an object": (
        oip_json([image_tensor([b64(PHOTO)])], outputs=[{"name": "probabilities", "parameters": 3}]),
        400,
        "InvalidInput",
        "the parameters of output 'probabilities'",
    ),
    "binary_data as a string": (
        oip_json(
            [image_tensor([b64(PHOTO)])], outputs=[{"name": "probabilities", "parameters": {"binary_data": "false"}}]
        ),
        400,
        "InvalidInput",
        "true or false",
    ),
    "a shape of true": (oip_json([{**image_tensor([b64(PHOTO)]), "shape": [True]}]), 400, "InvalidInput", "[True]"),
    "a shape of zero": (oip_json([image_tensor([])]), 400, "InvalidInput", "has shape [0]"),
    "two outputs": (
        oip_json([image_tensor([b64(PHOTO)])], outputs=[{"name": "probabilities"}] * 2),
        400,
        "InvalidOutput",
        "at most one",
    ),
    "an element's length beyond the data": (
        binary_request(
            {"inputs": [{**BINARY_IMAGE, "parameters": {"binary_data_size": 8}}]}, struct.pack("<I", 100) + b"abcd"
        ),
        400,
        "InvalidBinaryData",
        "declares 100 bytes",
    ),
    "an element of 0 bytes, its length prefix ending the data": (
        binary_request({"inputs": [{**BINARY_IMAGE, "parameters": {"binary_data_size": 4}}]}, struct.pack("<I", 0)),
        400,
        "EmptyBody",
        "EmptyBody: input 'image' element 0 is empty",
    ),
    "an element's length one beyond the data": (
        binary_request(
            {"inputs": [{**BINARY_IMAGE, "parameters": {"binary_data_size": 8}}]}, struct.pack("<I", 5) + b"abcd"
        ),
        400,
        "InvalidBinaryData",
        "InvalidBinaryData: input 'image' element 0 declares 5 bytes, but only 4 are left",
    ),
    **{
        f"{stray} of a length prefix's 4 bytes after the last element": (
            binary_request(
                {"inputs": [{**BINARY_IMAGE, "parameters": {"binary_data_size": 4 + len(PHOTO) + stray}}]},
                length_prefixed(PHOTO) + b"\0" * stray,
            ),
            400,
            "InvalidBinaryData",
            "InvalidBinaryData: input 'image' ends inside an element's 4-byte length prefix",
        )
        for stray in (1, 2, 3)
    },
    "a bad image among good ones": (
        oip.in_process([oip.image_input([PHOTO, NOT_AN_IMAGE, PHOTO])]),
        400,
        "InvalidImage",
        "input 'image' element 1:",
    ),
}
BAD_V1_REQUESTS: dict[str, tuple[Request, int, str, str]] = {
    # Without the binary-data header, a body that is not JSON could be either protocol.
    "not JSON": (Request.kserve(b"{inputs", content_type=None), 400, "InvalidJSON", '{"inputs": [...]}'),
    "JSON nested 100,000 deep": (
        Request.kserve(b"[" * 100_000, content_type=None),
        400,
        "InvalidJSON",
        'InvalidJSON: a KServe v1 request must be JSON {"instances": ["<base64 image>", ...]}, '
        'and an Open Inference Protocol request {"inputs": [...]}',
    ),
    "instances not a list": (Request.kserve({"instances": b64(PHOTO)}), 400, "InvalidJSON", "non-empty list"),
    "no instances": (Request.kserve({"instances": []}), 400, "InvalidJSON", "non-empty list"),
    "an instance without its key": (
        Request.kserve({"instances": [b64(PHOTO), {"image": b64(PHOTO)}]}),
        400,
        "InvalidJSON",
        "instance 1 must be",
    ),
    "invalid base64": (
        Request.kserve({"instances": [b64(PHOTO), b64(PHOTO), "***"]}),
        400,
        "InvalidBase64",
        "instance 2",
    ),
    "a bad image among good ones": (
        Request.kserve({"instances": [b64(PHOTO), b64(NOT_AN_IMAGE)]}),
        400,
        "InvalidImage",
        "instance 1:",
    ),
    "a truncated image": (
        Request.kserve({"instances": [b64(PHOTO[: len(PHOTO) // 2])]}),
        400,
        "CorruptImage",
        "instance 0:",
    ),
    "an instance that is a number": (
        Request.kserve({"instances": [12345]}),
        400,
        "InvalidJSON",
        "InvalidJSON: instance 0 must be a base64 string, got int",
    ),
    "an empty instance": (
        Request.kserve({"instances": [""]}),
        400,
        "EmptyBody",
        "EmptyBody: instance 0 decodes to an empty image",
    ),
}


BAD_REQUESTS = {
    **{f"OIP: {case}": row for case, row in BAD_OIP_REQUESTS.items()},
    **{f"v1: {case}": row for case, row in BAD_V1_REQUESTS.items()},
}


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
@pytest.mark.checks_the_load
def test_a_bad_request_gets_a_4xx_naming_the_problem(model: InProcessModel, case: str) -> None:
    request, status, kind, words = BAD_REQUESTS[case]
    [response] = model.infer([request])
    assert error_of(response) == (status, kind)
    assert words in error_message(response)


@pytest.mark.checks_the_load
def test_over_grpc_a_refusal_is_an_error_output_holding_our_error(model: InProcessModel) -> None:
    """TorchServe's OIP gRPC frontend drops a request's status and needs a well-formed answer."""
    [response] = model.infer([grpc_request([PHOTO, NOT_AN_IMAGE], request_id="bad")])
    answer = json.loads(response.body)
    assert (answer["id"], answer["model_name"], answer["model_version"]) == ("bad", "resnet50", "2.0")
    [output] = answer["outputs"]
    assert (output["name"], output["datatype"], output["shape"]) == ("error", "BYTES", [1])
    error = json.loads(output["data"][0])
    assert (error["code"], error["type"]) == (400, "InvalidImage")
    assert error["message"].startswith("input 'image' element 1:")


@pytest.mark.parametrize(
    ("count", "status"), [(promised.MAX_IMAGES_PER_REQUEST, 200), (promised.MAX_IMAGES_PER_REQUEST + 1, 413)]
)
@pytest.mark.checks_the_load
def test_a_request_of_32_images_is_answered_and_one_of_33_refused(
    model: InProcessModel, monkeypatch: pytest.MonkeyPatch, count: int, status: int
) -> None:
    """Small images and no network: the count is checked before any image is decoded, and 64
    images through ResNet-50 would take seconds here for nothing this test looks at."""
    monkeypatch.setattr(model.handler, "forward", lambda batch: torch.zeros(len(batch), 1000))
    tiny = encode(noise_image((16, 16)), "PNG")
    v1, oip_binary = model.infer(
        [Request.kserve({"instances": [b64(tiny)] * count}), oip.in_process([oip.image_input([tiny] * count)])]
    )
    assert (v1.status, oip_binary.status) == (status, status)
    if status == 200:
        assert len(v1.body["predictions"]) == count
        assert oip.result(oip_binary).as_numpy(oip.OUTPUT).shape == (count, 1000)
    else:
        assert error_of(v1) == error_of(oip_binary) == (413, "TooManyImages")
        assert f"the limit is {promised.MAX_IMAGES_PER_REQUEST} per request" in error_message(v1)


@pytest.mark.parametrize(("count", "status"), [(2, 200), (3, 413)])
@pytest.mark.checks_the_load
def test_the_images_per_request_limit_is_the_one_configured(
    model: InProcessModel, monkeypatch: pytest.MonkeyPatch, count: int, status: int
) -> None:
    lowered = dataclasses.replace(model.handler.config, limits=InputLimits(max_images_per_request=2))
    monkeypatch.setattr(model.handler, "config", lowered)
    v1, oip_binary = model.infer(
        [Request.kserve({"instances": [b64(PHOTO)] * count}), oip.in_process([oip.image_input([PHOTO] * count)])]
    )
    assert (v1.status, oip_binary.status) == (status, status)
    if status == 413:
        assert error_of(v1) == (413, "TooManyImages") and "the limit is 2" in v1.body["error"]


def test_a_batch_of_mixed_protocols_and_bad_images_answers_each_request_alone(
    model: InProcessModel, reference: list[list[dict[str, Any]]]
) -> None:
    """One TorchServe batch of eight requests carrying twelve images: the good requests' images
    go through one forward pass, and each bad request fails alone."""
    responses = model.infer(
        [
            Request.kserve({"instances": [b64(PHOTO), b64(NOISE), b64(PHOTO)]}),
            oip.in_process([oip.image_input([PHOTO, NOT_AN_IMAGE])]),
            Request.raw(NOISE),
            Request.kserve({"instances": [b64(NOISE), "***"]}),
            grpc_request([NOISE, PHOTO]),
            Request.raw(NOT_AN_IMAGE),
            oip.in_process([oip.image_input([NOISE, PHOTO])], [oip.requested(classes=5)]),
            Request.kserve({"instances": [b64(PHOTO)]}),
        ]
    )
    assert [response.status for response in responses] == [200, 400, 200, 400, 200, 400, 200, 200]
    photo, noise = reference
    assert all(same_answer(a, b) for a, b in zip(responses[0].body["predictions"], [photo, noise, photo], strict=True))
    assert same_answer(responses[2].body, noise)
    assert same_answer(responses[7].body["predictions"][0], photo)
    grpc_top = [top5(row) for row in oip.result(responses[4]).as_numpy(oip.OUTPUT)]
    assert grpc_top == [indices(noise), indices(photo)]
    ranked = oip.classifications(oip.result(responses[6]).as_numpy(oip.OUTPUT))
    assert [[index for _, index, _ in row] for row in ranked] == grpc_top
    assert "element 1" in error_message(responses[1])
    assert "instance 1" in responses[3].body["error"]
    assert responses[5].body["type"] == "InvalidImage"


def test_a_text_body_with_the_binary_header_is_read_as_text(model: InProcessModel) -> None:
    """TorchServe hands a text/* body to the handler as str, not bytes: still one request."""
    document = {"inputs": [image_tensor([b64(PHOTO)])]}
    encoded = json.dumps(document).encode()
    as_text, as_json = model.infer(
        [
            Request.kserve(encoded, content_type="text/plain", Inference_Header_Content_Length=str(len(encoded))),
            oip_json(document["inputs"]),
        ]
    )
    assert np.array_equal(oip.result(as_text).as_numpy(oip.OUTPUT), oip.result(as_json).as_numpy(oip.OUTPUT))


def test_over_grpc_an_answer_to_a_request_without_an_id_has_an_empty_one(model: InProcessModel) -> None:
    """TorchServe's gRPC frontend reads `id` from every answer, so it is there even when not asked."""
    document = {"inputs": [image_tensor([b64(NOT_AN_IMAGE)])]}
    [response] = model.infer([Request.grpc(document)])
    assert json.loads(response.body)["id"] == ""


def test_every_v1_answer_is_declared_json(model: InProcessModel) -> None:
    """KServe's v1 client reads an answer, and an error, only from a body declared JSON."""
    answer, explanation, error = model.infer(
        [
            Request.kserve({"instances": [b64(PHOTO)]}),
            Request.kserve({"instances": [b64(PHOTO)]}).explaining(),
            Request.kserve({"instances": [b64(NOT_AN_IMAGE)]}),
        ]
    )
    assert [response.status for response in (answer, explanation, error)] == [200, 200, 400]
    assert {response.headers.get("Content-Type") for response in (answer, explanation, error)} == {"application/json"}


def test_a_kserve_v1_document_is_answered_as_kserve_v1_on_the_predictions_route_too(model: InProcessModel) -> None:
    """The protocol is read from the request's shape: `instances` is KServe v1 whatever the route."""
    document = {"instances": [b64(PHOTO), b64(NOISE)]}
    on_predictions, on_kserve = model.infer([Request.json(document), Request.kserve(document)])
    assert on_predictions.status == on_kserve.status == 200
    assert on_predictions.body == on_kserve.body
    assert len(on_predictions.body["predictions"]) == 2
