"""TorchServe 0.12's gRPC inference port, as far as a client or the handler can tell, and the Open
Inference Protocol's standard gRPC service beside it (`inference.GRPCInferenceService`: TorchServe
serves the protocol only under its own package name, which Triton's and KServe's clients cannot
call). A call becomes the wire request a TorchServe worker gets (scripts/harness/in_process.py's
Request), the handler's answer goes back as TorchServe's gRPC layer writes it, and TorchServe's
own refusals keep their status codes and details. One small module at the edge of the Ray Serve
engine (docs/engines.md)."""

from __future__ import annotations

import base64
import json
import sys
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import grpc
import numpy as np
from google.protobuf import empty_pb2, json_format
from google.protobuf.message import Message
from tritonclient.grpc import service_pb2 as standard_open_inference
from tritonclient.utils import triton_to_np_dtype

from binary_data import bytes_elements, serialize_bytes
from model_signature import ERROR
from request_errors import RequestError
from scripts.client import grpc_stubs
from scripts.harness.in_process import Request, Response
from scripts.ray_serve.http_edge import TOKEN_REFUSED, Refusal, answer_body

grpc_stubs.ensure()
# tritonclient's generated classes name their module after the proto's file, "grpc_service_pb2", which
# nothing can import; Serve's gRPC proxy pickles each call it sends the frontend, and pickle finds a
# class by its module. So that name is made to import tritonclient's module, in every process of ours.
sys.modules.setdefault(standard_open_inference.ModelInferRequest.__module__, standard_open_inference)
from scripts.client.torchserve_grpc import (  # noqa: E402
    inference_pb2,
    open_inference_grpc_pb2 as torchserve_oip,
)


@dataclass(frozen=True)
class Service:
    """A gRPC service on the inference port: its full name, and the methods the frontend answers,
    each with its request and reply types. A method not listed is UNIMPLEMENTED, from gRPC itself."""

    name: str
    methods: dict[str, tuple[type[Message], type[Message]]]

    def add_to_server(self, servicer: Any, server: grpc.Server) -> None:
        """Serve's `grpc_servicer_functions` form. Serve's proxy keeps each method's request parser
        and sends the call to the frontend's method of the same name."""
        handlers = {
            name: grpc.unary_unary_rpc_method_handler(
                getattr(servicer, name),
                request_deserializer=request.FromString,
                response_serializer=reply.SerializeToString,
            )
            for name, (request, reply) in self.methods.items()
        }
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(self.name, handlers),))


def _open_inference(package: ModuleType) -> dict[str, tuple[type[Message], type[Message]]]:
    """The Open Inference Protocol's methods, in `package`'s copy of its proto."""
    methods = ("ServerLive", "ServerReady", "ServerMetadata", "ModelReady", "ModelMetadata", "ModelInfer")
    return {name: (getattr(package, f"{name}Request"), getattr(package, f"{name}Response")) for name in methods}


TORCHSERVE_INFERENCE = Service(
    "org.pytorch.serve.grpc.inference.InferenceAPIsService",
    {
        "Ping": (empty_pb2.Empty, inference_pb2.TorchServeHealthResponse),
        "Predictions": (inference_pb2.PredictionsRequest, inference_pb2.PredictionResponse),
    },
)
TORCHSERVE_OPEN_INFERENCE = Service(
    "org.pytorch.serve.grpc.openinference.GRPCInferenceService", _open_inference(torchserve_oip)
)
OPEN_INFERENCE = Service("inference.GRPCInferenceService", _open_inference(standard_open_inference))
# Serve's gRPC options name the functions that add each service by import path (scripts/serve_config.py).
add_torchserve_inference = TORCHSERVE_INFERENCE.add_to_server
add_torchserve_open_inference = TORCHSERVE_OPEN_INFERENCE.add_to_server
add_open_inference = OPEN_INFERENCE.add_to_server
_REPLY_TO = {
    request: reply
    for service in (TORCHSERVE_INFERENCE, TORCHSERVE_OPEN_INFERENCE, OPEN_INFERENCE)
    for request, reply in service.methods.values()
}
# Where each datatype's elements travel in InferTensorContents, both ways.
_CONTENTS = {
    "BOOL": "bool_contents",
    **dict.fromkeys(("INT8", "INT16", "INT32"), "int_contents"),
    "INT64": "int64_contents",
    **dict.fromkeys(("UINT8", "UINT16", "UINT32"), "uint_contents"),
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
# TorchServe's mapping of an HTTP status to gRPC's (GRPCUtils.getGRPCStatusCode), for the statuses
# the handler answers with and the others it names.
_GRPC_STATUS = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    409: grpc.StatusCode.ABORTED,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    415: grpc.StatusCode.FAILED_PRECONDITION,
    416: grpc.StatusCode.OUT_OF_RANGE,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    499: grpc.StatusCode.CANCELLED,
    500: grpc.StatusCode.INTERNAL,
    501: grpc.StatusCode.UNIMPLEMENTED,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}
_MODEL_EXCEPTIONS = "org.pytorch.serve.archive.model."  # the package of TorchServe's model lookup errors


class RefusedCall(Exception):  # noqa: N818 (a refusal, not an error of ours)
    """A call refused as TorchServe refuses it: a status code and its details."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


def token_refused() -> RefusedCall:
    """TorchServe's gRPC interceptor, before any method: no token, or not the inference token."""
    return RefusedCall(grpc.StatusCode.PERMISSION_DENIED, TOKEN_REFUSED)


def parameter_required(name: str) -> RefusedCall:
    """An empty model name; TorchServe adds its exception's name on a line of its own."""
    return RefusedCall(grpc.StatusCode.INTERNAL, f"Parameter {name} is required.\nBadRequestException.()")


def model_refusal(refusal: Refusal, code: grpc.StatusCode) -> RefusedCall:
    """An unknown model or version: INTERNAL on the inference methods, NOT_FOUND on the others, as TorchServe."""
    return RefusedCall(code, f"{refusal.message}\n{_MODEL_EXCEPTIONS}{refusal.kind}")


def refusal_of(refusal: Refusal) -> RefusedCall:
    """A refusal over gRPC as TorchServe's GRPCJob sends an inference error: its status mapped,
    the exception's name on a line of its own. A full queue is the exception: TorchServe's gRPC
    inference refuses it INTERNAL, as an InternalServerException (InferenceImpl)."""
    if refusal.kind == "ServiceUnavailableException":
        return RefusedCall(grpc.StatusCode.INTERNAL, f"{refusal.message}\nInternalServerException.()")
    return RefusedCall(_GRPC_STATUS[refusal.status], f"{refusal.message}\norg.pytorch.serve.http.{refusal.kind}")


def reply_type(request: Message) -> type[Message]:
    """The reply type of the method `request` is for, in the request's own package."""
    return _REPLY_TO[type(request)]


def health() -> inference_pb2.TorchServeHealthResponse:
    """Ping's answer, worded and indented as TorchServe's (without the newline its REST ping adds)."""
    return inference_pb2.TorchServeHealthResponse(health=json.dumps({"status": "Healthy"}, indent=2))


def predictions_request(call: inference_pb2.PredictionsRequest) -> Request:
    """What TorchServe forwards for Predictions: each input a parameter without a content type, and
    no headers (which is how the handler knows the request came over gRPC)."""
    return Request(tuple((name, "", value) for name, value in call.input.items()))


def prediction(answer: Response) -> inference_pb2.PredictionResponse:
    """The handler's answer whole; TorchServe's gRPC layer drops its status (a refusal arrives OK)."""
    return inference_pb2.PredictionResponse(prediction=answer_body(answer))


def model_infer_request(call: Any) -> Request:
    """What TorchServe forwards for ModelInfer: the call as the protocol's JSON, a BYTES element in
    base64; on TorchServe's package nothing else, as TorchServe. On the standard one, also what
    TorchServe drops: tensors in `raw_input_contents` (tritonclient's way), and the outputs asked
    for with their parameters (the classification extension's `classification`)."""
    standard = _is_standard(call)
    raw = _raw_inputs(call) if standard else [None] * len(call.inputs)
    inputs = []
    for tensor, tensor_raw in zip(call.inputs, raw, strict=True):
        document: dict[str, Any] = {"name": tensor.name, "shape": list(tensor.shape), "datatype": tensor.datatype}
        data = _input_data(tensor, tensor_raw)
        if data is not None:
            document["data"] = data
        inputs.append(document)
    document = {"id": call.id, "model_name": call.model_name, "inputs": inputs}
    if standard and call.outputs:
        document["outputs"] = [
            {"name": output.name, "parameters": _parameters(output.parameters)} for output in call.outputs
        ]
    return Request.grpc(document)


def _raw_inputs(call: Any) -> list[bytes | None]:
    """Each input's raw bytes, under the protocol's rule: all inputs raw, or none, and a raw one
    without contents."""
    if not call.raw_input_contents:
        return [None] * len(call.inputs)
    if len(call.raw_input_contents) != len(call.inputs) or any(t.HasField("contents") for t in call.inputs):
        raise RefusedCall(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"the call has {len(call.inputs)} inputs and {len(call.raw_input_contents)} raw_input_contents: "
            "send every input's data in raw_input_contents, in the inputs' order, and none in contents",
        )
    return list(call.raw_input_contents)


def _input_data(tensor: Any, raw: bytes | None) -> list[Any] | None:
    if tensor.datatype == "BYTES":
        try:
            elements = list(tensor.contents.bytes_contents) if raw is None else bytes_elements(raw, tensor.name)
        except RequestError as error:
            raise RefusedCall(grpc.StatusCode.INVALID_ARGUMENT, error.message) from None
        return [base64.b64encode(element).decode() for element in elements]
    field = _CONTENTS.get(tensor.datatype)
    if field is None:
        return None
    if raw is not None:
        return list(np.frombuffer(raw, dtype=_little_endian(tensor.datatype)).tolist())
    return list(getattr(tensor.contents, field))


def _parameters(parameters: Any) -> dict[str, Any]:
    """InferParameter values as JSON: each is one of bool, int64, string, double, uint64."""
    return {name: getattr(value, value.WhichOneof("parameter_choice")) for name, value in parameters.items()}


def model_infer_reply(answer: Response, call: Message) -> Message:
    """The handler's answer (a refusal is an `error` output) in the reply of `call`'s package. In
    TorchServe's, as its gRPC layer writes it: each output's data in its datatype's contents, a
    BYTES element as its JSON text. In the standard one, as Triton writes it and its client reads
    it: each output's data in `raw_output_contents`, little-endian, a BYTES element length-prefixed."""
    document = json.loads(answer_body(answer))
    if _is_standard(call):
        _raise_refusal(document)
    reply: Any = reply_type(call)(
        id=document["id"], model_name=document["model_name"], model_version=document["model_version"]
    )
    for output in document["outputs"]:
        tensor = reply.outputs.add(name=output["name"], datatype=output["datatype"], shape=output["shape"])
        if isinstance(call, standard_open_inference.ModelInferRequest):
            reply.raw_output_contents.append(_raw(output["datatype"], output["data"]))
            continue
        tensor.contents.SetInParent()  # TorchServe sets contents, empty or not
        field = _CONTENTS.get(output["datatype"])
        if field == "bytes_contents":
            tensor.contents.bytes_contents.extend(
                json.dumps(element, ensure_ascii=False).encode() for element in output["data"]
            )
        elif field is not None:
            getattr(tensor.contents, field).extend(output["data"])
    return reply


def _raise_refusal(document: dict[str, Any]) -> None:
    """On the standard package a refused request is the call's status, as Triton refuses one (the
    handler answers it as an `error` output, for TorchServe's gRPC layer, which drops statuses)."""
    error = next((output for output in document["outputs"] if output["name"] == ERROR.name), None)
    if error is not None:
        refusal = json.loads(error["data"][0])
        raise RefusedCall(_grpc_status(int(refusal["code"])), f"{refusal['type']}: {refusal['message']}")


def _grpc_status(http_status: int) -> grpc.StatusCode:
    return _GRPC_STATUS.get(http_status, grpc.StatusCode.UNKNOWN)


def _is_standard(call: Message) -> bool:
    return isinstance(call, standard_open_inference.ModelInferRequest)


def _little_endian(datatype: str) -> np.dtype[Any]:
    dtype: np.dtype[Any] = np.dtype(triton_to_np_dtype(datatype)).newbyteorder("<")
    return dtype


def _raw(datatype: str, data: list[Any]) -> bytes:
    if datatype == "BYTES":
        return serialize_bytes(str(element).encode() for element in data)
    return np.asarray(data, dtype=_little_endian(datatype)).tobytes()


def from_document(document: dict[str, Any], reply: type[Message]) -> Message:
    """A status or metadata answer (oip_status.py's JSON) as its gRPC reply: the fields it has are named alike."""
    return json_format.ParseDict(document, reply(), ignore_unknown_fields=True)
