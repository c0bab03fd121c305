"""The one error type a request can fail with: it carries the HTTP status and a readable reason."""

from __future__ import annotations

from typing import Any


class RequestError(Exception):
    """A problem with one request's input. It fails that request alone, never its batch."""

    def __init__(self, status: int, kind: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind
        self.message = message

    def to_json(self) -> dict[str, Any]:
        return {"code": self.status, "type": self.kind, "message": self.message}


def bad_request(kind: str, message: str) -> RequestError:
    return RequestError(400, kind, message)
