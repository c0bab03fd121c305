"""TorchServe's own wire format (`/predictions`, `/explanations`, gRPC `Predictions`): one image
per request, in whatever form the client sent it, answered with our top-k list (on
`/explanations`, the top-k with heatmaps) or our error body.

TorchServe hands the handler one dict per request, keyed by parameter name:
- a raw body (`curl -T img.jpg`, `--data-binary @img.jpg`) arrives as bytes under "body";
- a multipart form arrives with one key per field; we read the field "data";
- a JSON body is parsed by TorchServe into a dict when its content type is application/json;
  we read base64 from its "data" key. Invalid JSON stays bytes, so we parse again to say why.

On `/explanations` the classes to explain come in a form field or JSON key "classes"; TorchServe
passes no query parameters to a handler, so a raw body explains its top class.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from request_errors import RequestError, bad_request
from wire_format import Explanation, Reply, Scores, WireRequest, from_base64, header

IMAGE_FIELD = "data"
RAW_BODY_FIELD = "body"
CLASSES_FIELD = "classes"


class TorchServeRequest(WireRequest):
    protocol = "torchserve"

    def __init__(self, request: Mapping[str, Any], headers: Mapping[str, Any]) -> None:
        self.request = request
        self.headers = headers

    def images(self) -> list[bytes]:
        return [image_bytes(self.request, self.headers)]

    def answer(self, scores: Scores) -> Reply:
        [predictions] = scores.predictions()
        return Reply(predictions)

    def explain(self, scores: Scores, explanation: Explanation) -> Reply:
        [image] = explanation.per_image(scores)
        return Reply(image)

    def refuse(self, error: RequestError, element: int | None = None) -> Reply:
        return Reply(error.to_json())  # one image per request: no need to say which

    def named_classes(self) -> Any:
        if CLASSES_FIELD in self.request:  # a form field
            return self.request[CLASSES_FIELD]
        body = self.request.get(RAW_BODY_FIELD)
        return body.get(CLASSES_FIELD) if isinstance(body, Mapping) else None  # a JSON body


def image_bytes(request: Mapping[str, Any], headers: Mapping[str, Any]) -> bytes:
    """Return the image bytes of one request, or raise RequestError naming what is wrong.

    `headers` is the request's header map as TorchServe builds it: each field name maps to
    {"content-type": ...}, and the HTTP headers map to their values.
    """
    field = IMAGE_FIELD if IMAGE_FIELD in request else RAW_BODY_FIELD
    if field not in request:
        raise _missing_field(request, headers)
    payload = request[field]
    if isinstance(payload, (bytes, bytearray)) and not payload:
        raise bad_request("EmptyBody", "the request body is empty; send the image bytes")
    if _is_json(_field_content_type(headers, field)):
        document = _parse_json(bytes(payload)) if isinstance(payload, (bytes, bytearray)) else payload
        return _base64_field(document)
    if isinstance(payload, (bytes, bytearray)):
        return bytes(payload)
    raise bad_request(
        "InvalidImage",
        f"'{field}' holds text, not an image file; send the file's bytes "
        f"(-F '{IMAGE_FIELD}=@image.jpg' or -T image.jpg)",
    )


def _missing_field(request: Mapping[str, Any], headers: Mapping[str, Any]) -> RequestError:
    declared = header(headers, "Content-Type") or ""  # pragma: no mutate (header() ignores case; "" or any text)
    if declared.startswith("application/x-www-form-urlencoded"):
        # curl --data-binary sends this type unless told otherwise, and TorchServe parses such a
        # body as form fields, which mangles binary data.
        return bad_request(
            "UnsupportedContentType",
            "the body was sent as application/x-www-form-urlencoded "
            "(curl --data-binary's default); add -H 'Content-Type: image/jpeg' or use -T image.jpg",
        )
    sent = ", ".join(sorted(request)) or "none"  # pragma: no mutate (TorchServe always sends a field)
    return bad_request(
        "MissingField",
        f"no '{IMAGE_FIELD}' field in the form (fields sent: {sent}); "
        f"send the image as -F '{IMAGE_FIELD}=@image.jpg' or as the raw request body",
    )


def _field_content_type(headers: Mapping[str, Any], field: str) -> str:
    value = headers.get(field)
    # TorchServe gives every field its {"content-type": ...}: the defaults are for a caller that does not.
    return value.get("content-type", "") if isinstance(value, Mapping) else ""  # pragma: no mutate


def _is_json(content_type: str) -> bool:
    return content_type.partition(";")[0].strip().lower() == "application/json"


def _parse_json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        raise bad_request("InvalidJSON", f"the body is not valid JSON: {error}") from None


def _base64_field(document: Any) -> bytes:
    if not isinstance(document, Mapping) or not isinstance(document.get(IMAGE_FIELD), str):
        raise bad_request("InvalidJSON", f'a JSON body must be {{"{IMAGE_FIELD}": "<base64 image>"}}')
    return from_base64(document[IMAGE_FIELD], f"'{IMAGE_FIELD}'")
