"""TorchServe 0.12's HTTP frontend, as far as a client or the handler can tell: a route's request
becomes the wire request a TorchServe worker gets (scripts/harness/in_process.py's Request), the
handler's answer goes back as the frontend sends it, and the frontend's own refusals keep its
statuses and bodies. One small module at the edge of the Ray Serve engine (docs/engines.md)."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any, cast
from urllib.parse import parse_qsl

from scripts.harness.in_process import EXPLAIN_HEADER, PREDICTIONS_ROUTE, Request, Response

_ROUTES = (  # the inference routes: (pattern, a TorchServe route rather than KServe's, explains)
    (re.compile(r"^/predictions/(?P<model>[^/]+)(?:/(?P<version>[^/]+))?$"), True, False),
    (re.compile(r"^/explanations/(?P<model>[^/]+)(?:/(?P<version>[^/]+))?$"), True, True),
    (re.compile(r"^/v1/models/(?P<model>[^/:]+):predict$"), False, False),
    (re.compile(r"^/v1/models/(?P<model>[^/:]+):explain$"), False, True),
    # TorchServe answers a version on these 501; here it is served, as the protocol describes.
    (re.compile(r"^/v2/models/(?P<model>[^/]+)(?:/versions/(?P<version>[^/]+))?/infer$"), False, False),
    (re.compile(r"^/v2/models/(?P<model>[^/]+)(?:/versions/(?P<version>[^/]+))?/explain$"), False, True),
)
_BEARER = re.compile(r"^Bearer\s+(\S+)$")  # TorchServe's: the scheme's case matters
# What a TorchServe worker does not get as one body: the frontend splits these into fields.
FORM, URL_ENCODED = "multipart/form-data", "application/x-www-form-urlencoded"
Headers = Sequence[tuple[str, str]]
TOKEN_REFUSED = "Token Authorization failed. Token either incorrect, expired, or not provided correctly"
NO_SUCH_RESOURCE = "Requested resource is not found, please refer to API document."


@dataclass(frozen=True)
class Refusal:
    """One of the frontend's own refusals, as TorchServe words it: each edge writes it its own way."""

    status: int
    kind: str  # TorchServe's exception, ModelNotFoundException say
    message: str

    def document(self) -> dict[str, Any]:
        """Its body over HTTP."""
        return {"code": self.status, "type": self.kind, "message": self.message}


# TorchServe's answer to the requests a worker held when it died (WorkerThread, BatchAggregator).
WORKER_DIED = Refusal(500, "InternalServerException", "Worker died.")


def queue_full(model: str, named_version: str | None) -> Refusal:
    """TorchServe's answer to a request its version's job queue has no room for, worded and quoted
    as its ApiUtils.getStreamingInferenceErrorResponseMessage words it (the version only if the
    request named one)."""
    version = f'" Version {named_version}' if named_version else ""
    return Refusal(
        503,
        "ServiceUnavailableException",
        f'Model "{model}{version}" has no worker to serve inference request. Please use scale workers API to add '
        "workers. If this is a sequence inference, please check if it is closed, or expired; or exceeds "
        "maxSequenceJobQueueSize",
    )


@dataclass(frozen=True)
class Route:
    """Which model and version a path asks for, and on which kind of route."""

    model: str
    version: str | None  # None: the default version (KServe's routes never name one)
    torchserve: bool  # /predictions or /explanations
    explains: bool


def route(path: str) -> Route | None:
    """The inference route `path` names, or None."""
    for pattern, torchserve, explains in _ROUTES:
        if match := pattern.match(path):
            return Route(match["model"], match.groupdict().get("version"), torchserve, explains)
    return None


def bearer_token(headers: Headers) -> str | None:
    """The token of an `Authorization: Bearer TOKEN` header, or None."""
    match = _BEARER.match(_header(headers, "authorization") or "")
    return match[1] if match else None


def wire_request(found: Route, headers: Headers, body: bytes) -> Request:
    """The request as the frontend forwards it to a worker: every HTTP header, then its own (a
    client's header of the same name loses), and the body whole or, for a form, a parameter a field."""
    content_type = _header(headers, "content-type") or ""
    mime_type = content_type.split(";")[0]  # the type without its parameters
    if content_type.startswith(FORM) and "boundary=" in content_type:
        parameters = _form_fields(content_type, body)
    elif mime_type.lower() == URL_ENCODED:
        parameters = tuple((name, "", value.encode()) for name, value in parse_qsl(body.decode("latin-1")))
    else:
        parameters = (("body", mime_type, body),)
    added = (*(PREDICTIONS_ROUTE if found.torchserve else ()), (EXPLAIN_HEADER, str(found.explains)))
    return Request(parameters, (*headers, *added))


def _form_fields(content_type: str, body: bytes) -> tuple[tuple[str, str, bytes], ...]:
    """Each part of a multipart form: a file with its own content type (application/octet-stream
    if it has none), a plain field with none."""
    message = BytesParser(policy=HTTP).parsebytes(f"Content-Type: {content_type}\r\n\r\n".encode() + body)
    fields = []
    for part in message.iter_parts():
        is_file = part.get_param("filename", header="content-disposition") is not None
        declared = part.get("content-type")
        fields.append(
            (
                str(part.get_param("name", header="content-disposition") or ""),
                (declared.split(";")[0].strip() if declared else "application/octet-stream") if is_file else "",
                cast(bytes, part.get_payload(decode=True) or b""),
            )
        )
    return tuple(fields)


def answer_body(response: Response) -> bytes:
    """The handler's answer as a TorchServe worker encodes it: bytes as they are, text in UTF-8,
    anything else as JSON indented by 2."""
    body: Any = response.body
    if isinstance(body, bytes | bytearray):
        return bytes(body)
    if isinstance(body, str):
        return body.encode()
    return json.dumps(body, indent=2).encode()


def frontend_json(document: Any) -> bytes:
    """An answer of the frontend's own (a refusal, /ping), as TorchServe writes it: indented JSON
    and a newline."""
    return (json.dumps(document, indent=2) + "\n").encode()


def _header(headers: Headers, name: str) -> str | None:
    return next((value for key, value in reversed(headers) if key.lower() == name), None)
