"""Which protocol a request speaks, told from its body and headers: TorchServe does not tell a
handler which route a request came in on.

- The binary-data extension's header on a raw body, or a JSON body with "inputs": the Open
  Inference Protocol (over HTTP, or gRPC ModelInfer, which TorchServe forwards as JSON).
- A JSON body with "instances": KServe v1.
- Any other body sent over HTTP to a KServe route (`/v1/models/...`, `/v2/models/...`): those
  are the only HTTP routes TorchServe forwards without a `url_path` header, and a client there
  gets KServe's errors.
- Everything else: TorchServe's own forms (`/predictions`, gRPC `Predictions`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from binary_data import HEADER_LENGTH
from kserve_v1 import KServeV1Request
from open_inference import OpenInferenceRequest
from torchserve_forms import RAW_BODY_FIELD, TorchServeRequest
from wire_format import ServedModel, WireRequest, header, sent_over_http

ROUTE_HEADER = "url_path"  # set by TorchServe on /predictions and /explanations only
RAW = (bytes, bytearray, str)


def read_request(request: Mapping[str, Any], headers: Mapping[str, Any], model: ServedModel) -> WireRequest:
    body = request.get(RAW_BODY_FIELD)
    if isinstance(body, RAW) and header(headers, HEADER_LENGTH) is not None:
        return OpenInferenceRequest(body, headers, model)
    on_kserve_route = RAW_BODY_FIELD in request and sent_over_http(headers) and header(headers, ROUTE_HEADER) is None
    document = body
    if on_kserve_route and isinstance(body, RAW):
        document = _json_or_none(body)  # KServe's clients may send JSON without a content type
    if isinstance(document, Mapping) and "inputs" in document:
        return OpenInferenceRequest(document, headers, model)
    if isinstance(document, Mapping) and "instances" in document:
        return KServeV1Request(document)
    if on_kserve_route:
        return KServeV1Request(document)  # neither protocol's shape: answered with KServe's error
    return TorchServeRequest(request, headers)


def _json_or_none(body: bytes | bytearray | str) -> Any:
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return None
