"""Open Inference Protocol requests and answers, written and read by tritonclient: a client nobody
here wrote, so the handler is held to the protocol as Triton's users meet it, not as we read it."""

from __future__ import annotations

import re
from typing import Any, cast

import numpy as np
import tritonclient.http as triton

from model_signature import ERROR, IMAGE, PROBABILITIES
from scripts.harness.in_process import Request, Response

INPUT, OUTPUT, ERROR_OUTPUT = IMAGE.name, PROBABILITIES.name, ERROR.name
HEADER_LENGTH = "Inference-Header-Content-Length"
CLASSIFICATION = re.compile(r"^(?P<probability>[0-9.]+):(?P<index>[0-9]+):(?P<label>.+)$")


def image_input(images: list[Any], binary: bool = True) -> triton.InferInput:
    """Input 'image': the files' bytes in binary, or (binary=False) base64 strings in JSON."""
    tensor = triton.InferInput(INPUT, [len(images)], IMAGE.datatype)
    tensor.set_data_from_numpy(np.array(images, dtype=object), binary_data=binary)
    return tensor


def requested(binary: bool = True, classes: int = 0) -> triton.InferRequestedOutput:
    return triton.InferRequestedOutput(OUTPUT, binary_data=binary, class_count=classes)


def in_process(
    inputs: list[triton.InferInput],
    outputs: list[triton.InferRequestedOutput] | None = None,
    request_id: str = "",
    parameters: dict[str, Any] | None = None,
) -> Request:
    """The request tritonclient would POST to /v2/models/resnet50/infer: no content type, and the
    JSON header's length in a header when binary data follows it."""
    body, header_length = triton.InferenceServerClient.generate_request_body(
        inputs, outputs, request_id, parameters=parameters
    )
    headers = {} if header_length is None else {"Inference_Header_Content_Length": str(header_length)}
    return Request.kserve(body, content_type=None, **headers)


def result(response: Response) -> triton.InferResult:
    """An answer read by tritonclient, as its `infer` reads one off the wire."""
    assert response.status == 200, response.body
    length = response.headers.get(HEADER_LENGTH)
    answer = triton.InferenceServerClient.parse_response_body(
        bytes(response.body), header_length=None if length is None else int(length)
    )
    assert answer.get_output(ERROR_OUTPUT) is None, answer.get_response()  # a refusal over gRPC
    return answer


def classifications(values: np.ndarray) -> list[list[tuple[float, int, str]]]:
    """The classification extension's "<probability>:<index>:<label>" strings, parsed."""
    rows = []
    for row in values:
        matches = [CLASSIFICATION.match(item.decode() if isinstance(item, bytes) else item) for item in row]
        assert all(matches), row
        # cast: none is None, as asserted just above; mypy does not narrow through all().
        parsed = cast(list[re.Match[str]], matches)
        rows.append([(float(m["probability"]), int(m["index"]), m["label"]) for m in parsed])
    return rows
