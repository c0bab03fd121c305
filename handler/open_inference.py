"""The Open Inference Protocol (KServe v2, Triton's API): REST `POST /v2/models/resnet50/infer`
(and KServe's `/explain` beside it), in JSON or with the binary-data extension, and TorchServe's
OIP gRPC `ModelInfer`.

The model's signature is declared in model_signature.py: one input, an image file per element
(its bytes where the transport carries bytes: the binary-data extension, gRPC; base64 where it
carries only text: JSON); one output, the probabilities, or with `{"classification": k}` the top k
as text (the classification extension); on `/explain`, three outputs more (the classes explained:
the request's `parameters.classes`, else each image's top class; a heatmap per class; the crop's
box in each image), binary when the request's `binary_data_output` says so.

TorchServe's gRPC frontend sends ModelInfer to the handler as this JSON (BYTES in base64) without
HTTP headers or requested outputs, and drops the status a handler sets for one request of a batch.
So over gRPC a refused request is answered as an output named `error` holding our error body.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from binary_data import HEADER_LENGTH, bytes_elements, invalid, join_answer, serialize_bytes, split_request, take
from model_signature import ERROR, EXPLANATION, IMAGE, NUMPY_TYPES, PROBABILITIES, RANKED, TensorSpec
from request_errors import RequestError, bad_request
from wire_format import Explanation, Reply, Scores, ServedModel, WireRequest, from_base64, header, sent_over_http

INPUT = IMAGE.name
TAKES = f"one {IMAGE.describe()}, one image file per element"


@dataclass(frozen=True)
class RequestedOutput:
    classification: int | None = None  # top-k strings instead of every probability
    binary: bool = False
    binary_by_default: bool = False  # for the outputs the request does not name (the explanation's)


class OpenInferenceRequest(WireRequest):
    protocol = "open_inference"

    def __init__(self, body: Any, headers: Mapping[str, Any], model: ServedModel) -> None:
        self.body = body
        self.headers = headers
        self.model = model
        self.over_grpc = not sent_over_http(headers)
        self.id: str | None = None  # echoed in every answer, a refusal too
        # What images() reads from the request; nothing asks for them before it has.
        self.output = RequestedOutput()  # pragma: no mutate
        self.classes: Any = None  # pragma: no mutate

    def images(self) -> list[bytes]:
        document, tail = self._document()
        if not isinstance(document, Mapping):
            raise bad_request("InvalidJSON", 'an inference request must be a JSON object {"inputs": [...]}')
        if document.get("id") is not None:
            self.id = str(document["id"])
        request_parameters = _parameters(document, "the request")
        self.output = _requested_output(document, request_parameters, self.model.classes)
        self.classes = request_parameters.get("classes")
        return _image_elements(document.get("inputs"), tail)

    def answer(self, scores: Scores) -> Reply:
        return self._reply([_output_tensor(scores, self.output)])

    def explain(self, scores: Scores, explanation: Explanation) -> Reply:
        values = (explanation.classes.numpy(), explanation.heatmaps.numpy(), np.asarray(explanation.crop_boxes))
        return self._reply(
            [
                _output_tensor(scores, self.output),
                *(
                    _numeric(spec, array, self.output.binary_by_default)
                    for spec, array in zip(EXPLANATION, values, strict=True)
                ),
            ]
        )

    def refuse(self, error: RequestError, element: int | None = None) -> Reply:
        where = "" if element is None else f"input '{INPUT}' element {element}: "
        if self.over_grpc:
            body = json.dumps({**error.to_json(), "message": where + error.message})
            return self._reply([({"name": ERROR.name, "datatype": ERROR.datatype, "shape": [1], "data": [body]}, None)])
        return Reply(*join_answer({"error": f"{error.kind}: {where}{error.message}"}))

    def named_classes(self) -> Any:
        return self.classes

    def _document(self) -> tuple[Any, bytes]:
        """The JSON request and the binary data after it. protocols.py sends this wire format a
        parsed body (TorchServe's parse of application/json, gRPC ModelInfer, or JSON sent to a
        KServe route without a content type), or a raw one with the binary-data header (TorchServe
        hands a text/* body over as str)."""
        if isinstance(self.body, Mapping):
            return self.body, b""
        raw = self.body.encode() if isinstance(self.body, str) else bytes(self.body)
        return split_request(raw, header(self.headers, HEADER_LENGTH) or "")

    def _reply(self, outputs: list[tuple[dict[str, Any], bytes | None]]) -> Reply:
        """The answer: each output in JSON with its data, or with its size and its bytes after the
        JSON. TorchServe's gRPC frontend needs an `id`, even an empty one."""
        identity = {"id": self.id or ""} if self.over_grpc or self.id is not None else {}
        tensors = [
            tensor if data is None else {**tensor, "parameters": {"binary_data_size": len(data)}}
            for tensor, data in outputs
        ]
        answer = {**identity, "model_name": self.model.name, "model_version": self.model.version, "outputs": tensors}
        return Reply(*join_answer(answer, [data for _, data in outputs if data is not None]))


def _image_elements(inputs: Any, tail: bytes) -> list[bytes]:
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], Mapping):
        raise _invalid_input(f"'inputs' must hold exactly one tensor: this model takes {TAKES}")
    tensor = inputs[0]
    if tensor.get("name") != INPUT or tensor.get("datatype") != IMAGE.datatype:
        raise _invalid_input(
            f"got input {tensor.get('name')!r} of type {tensor.get('datatype')!r}; this model takes {TAKES}"
        )
    count = _element_count(tensor.get("shape"))
    size = _parameters(tensor, f"input '{INPUT}'").get("binary_data_size")
    if size is not None:
        elements = bytes_elements(take(tail, size, INPUT), INPUT)
        empty = next((index for index, element in enumerate(elements) if not element), None)
        if empty is not None:  # as a base64 element decoding to nothing is
            raise bad_request("EmptyBody", f"input '{INPUT}' element {empty} is empty")
        if len(tail) != size:
            raise invalid(f"the body holds {len(tail)} bytes of binary data, but the inputs declare {size}")
    elif "data" in tensor:
        elements = [
            from_base64(text, f"input '{INPUT}' element {index}")
            for index, text in enumerate(_elements(tensor["data"]))
        ]
    else:
        raise _invalid_input(f"input '{INPUT}' has neither 'data' nor parameters.binary_data_size")
    if len(elements) != count:
        raise _invalid_input(f"input '{INPUT}' has shape [{count}] but holds {len(elements)} elements")
    return elements


def _element_count(shape: Any) -> int:
    """[N], or [N, 1] as some clients send a column of strings."""
    if (
        isinstance(shape, list)
        and shape
        and all(type(d) is int and d > 0 for d in shape)
        and (len(shape) == 1 or shape[1:] == [1])
    ):
        count: int = shape[0]  # an int: every dimension was checked above
        return count
    raise _invalid_input(f"input '{INPUT}' has shape {shape!r}; it must be [N] with N >= 1")


def _elements(data: Any) -> list[Any]:
    """The data of shape [N] (a flat list) or [N, 1] (a list of one-element lists)."""
    if not isinstance(data, list):
        raise _invalid_input(f"input '{INPUT}' data must be a list of base64 strings")
    return [item[0] if isinstance(item, list) and len(item) == 1 else item for item in data]


def _requested_output(
    document: Mapping[str, Any], request_parameters: Mapping[str, Any], classes: int
) -> RequestedOutput:
    """What the request asks for (its `parameters` read once, by the caller). Without `outputs`
    (or with an empty list), our only output."""
    binary_default = _flag(request_parameters, "binary_data_output", False)
    outputs = document.get("outputs", [])
    if not isinstance(outputs, list) or len(outputs) > 1:
        raise _invalid_output(f'\'outputs\' must be a list of at most one output, {{"name": "{PROBABILITIES.name}"}}')
    if not outputs:
        return RequestedOutput(binary=binary_default, binary_by_default=binary_default)
    output = outputs[0]
    if not isinstance(output, Mapping):
        raise _invalid_output(f'an output must be a JSON object {{"name": "{PROBABILITIES.name}"}}, got {output!r}')
    if output.get("name") != PROBABILITIES.name:
        raise _invalid_output(f"unknown output {output.get('name')!r}: this model's output is '{PROBABILITIES.name}'")
    parameters = _parameters(output, f"output '{PROBABILITIES.name}'")
    k = parameters.get("classification")
    if k is not None and not (type(k) is int and 1 <= k <= classes):
        raise _invalid_output(f"classification must be a number of classes from 1 to {classes}, got {k!r}")
    return RequestedOutput(
        classification=k, binary=_flag(parameters, "binary_data", binary_default), binary_by_default=binary_default
    )


def _parameters(owner: Mapping[str, Any], what: str) -> Mapping[str, Any]:
    parameters = owner.get("parameters")
    if parameters is None:
        return {}
    if not isinstance(parameters, Mapping):
        raise _invalid_input(f"the parameters of {what} must be a JSON object, got {parameters!r}")
    return parameters


def _flag(parameters: Mapping[str, Any], name: str, default: bool) -> bool:
    value = parameters.get(name, default)
    if type(value) is not bool:
        raise _invalid_input(f"parameter {name} must be true or false, got {value!r}")
    return value


def _output_tensor(scores: Scores, requested: RequestedOutput) -> tuple[dict[str, Any], bytes | None]:
    """The output as JSON (with its data), or its header and the bytes the binary-data extension sends."""
    if requested.classification is None:
        return _numeric(PROBABILITIES, scores.probabilities.numpy(), requested.binary)
    rows = [[f"{p:f}:{index}:{label}" for p, index, label in row] for row in scores.top(requested.classification)]
    tensor = {"name": RANKED.name, "datatype": RANKED.datatype, "shape": [len(rows), requested.classification]}
    if requested.binary:
        return tensor, serialize_bytes(text.encode() for row in rows for text in row)
    return {**tensor, "data": [text for row in rows for text in row]}, None


def _numeric(spec: TensorSpec, values: np.ndarray, binary: bool) -> tuple[dict[str, Any], bytes | None]:
    """A numeric output in its declared datatype (little-endian, as the binary-data extension sends it)."""
    array = values.astype(NUMPY_TYPES[spec.datatype])
    tensor = {"name": spec.name, "datatype": spec.datatype, "shape": list(array.shape)}
    if binary:
        return tensor, array.tobytes()
    return {**tensor, "data": array.flatten().tolist()}, None


def _invalid_input(message: str) -> RequestError:
    return bad_request("InvalidInput", message)


def _invalid_output(message: str) -> RequestError:
    return bad_request("InvalidOutput", message)
