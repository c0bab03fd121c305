"""Which protocol a request speaks, told from its body and headers: TorchServe does not tell a
handler which route a request came in on.

- The binary-data extension's header, or a JSON body with "inputs": the Open Inference Protocol.
- A JSON body with "instances": KServe v1.
- Any other body on a KServe route (`/v1/models/...`, `/v2/models/...`): those routes are the
  only ones TorchServe sends without a `url_path` header, and a client there gets KServe's errors.
- Everything else: TorchServe's own forms (`/predictions`, gRPC `Predictions`).
"""

from __future__ import annotations

import json
from typing import Any, Mapping

from binary_data import HEADER_LENGTH
from kserve_v1 import KServeV1Request
from open_inference import OpenInferenceRequest
from torchserve_forms import RAW_BODY_FIELD, TorchServeRequest
from wire_format import ServedModel, WireRequest, header

ROUTE_HEADER = "url_path"  # set by TorchServe on /predictions and /explanations only


def read_request(request: Mapping[str, Any], headers: Mapping[str, Any], model: ServedModel) -> WireRequest:
    body = request.get(RAW_BODY_FIELD)
    if header(headers, HEADER_LENGTH) is not None:
        return OpenInferenceRequest(body, headers, model)
    on_kserve_route = body is not None and header(headers, ROUTE_HEADER) is None
    document = body if isinstance(body, Mapping) or not on_kserve_route else _json_or_none(body)
    if isinstance(document, Mapping) and "inputs" in document:
        return OpenInferenceRequest(document, headers, model)
    if (isinstance(document, Mapping) and "instances" in document) or on_kserve_route:
        return KServeV1Request(document)
    return TorchServeRequest(request, headers)


def _json_or_none(body: Any) -> Any:
    """KServe's clients may send JSON without a content type; TorchServe then passes bytes."""
    try:
        return json.loads(body)
    except (TypeError, UnicodeDecodeError, json.JSONDecodeError):
        return None
