"""A small client for TorchServe's REST inference and management APIs, with token auth.

Every TorchServe error is raised as ApiError carrying the server's own status and message, so
callers can print one clear line instead of a traceback.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any

import requests

from scripts.endpoints import Server

# TorchServe 0.12 answers a full job queue with a message about missing workers.
QUEUE_FULL_MESSAGE = "has no worker to serve inference request"
# ...and, now and then, an unregister racing with requests in flight with this 500.
CONCURRENT_MODIFICATION = "ConcurrentModificationException"
UNREGISTER_RETRIES = 2


def explain(message: str) -> str:
    """TorchServe's message, with the likely cause first where TorchServe's own words mislead."""
    if QUEUE_FULL_MESSAGE in message:
        return f"server busy: the model's job queue is full (or it has no worker); retry later. ({message})"
    return message


class ApiError(RuntimeError):
    """TorchServe refused a call, or could not be reached (status 0)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}" if status else message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Tokens:
    inference: str
    management: str

    @classmethod
    def from_key_file(cls, path: Path) -> Tokens:
        """TorchServe writes key_file.json into its working directory at start."""
        try:
            keys = json.loads(path.read_text())
            return cls(inference=keys["inference"]["key"], management=keys["management"]["key"])
        except FileNotFoundError:
            raise ApiError(0, f"no key file at {path}: is the server running? Start it with `make serve`") from None
        except (KeyError, TypeError, json.JSONDecodeError) as error:
            raise ApiError(0, f"{path} is not a TorchServe key file ({error!r})") from None


class RestClient:
    def __init__(self, inference_url: str, management_url: str, tokens: Tokens, timeout: float = 120.0) -> None:
        self.inference_url = inference_url.rstrip("/")
        self.management_url = management_url.rstrip("/")
        self.tokens = tokens
        self.timeout = timeout
        self.session = requests.Session()

    @classmethod
    def for_server(cls, server: Server, timeout: float = 120.0) -> RestClient:
        """A client of that instance, with the tokens it wrote to its key file."""
        return cls(server.inference_url, server.management_url, Tokens.from_key_file(server.key_file), timeout)

    # Inference API
    def ping(self) -> dict[str, Any]:
        return self._call("GET", f"{self.inference_url}/ping", self.tokens.inference)

    def predict(
        self, model: str, image: bytes, version: str | None = None, content_type: str = "application/octet-stream"
    ) -> Any:
        path = f"{model}/{version}" if version else model
        return self._call(
            "POST",
            f"{self.inference_url}/predictions/{path}",
            self.tokens.inference,
            data=image,
            headers={"Content-Type": content_type},
        )

    def explain(self, model: str, image: bytes, version: str | None = None, classes: Sequence[int] = ()) -> Any:
        """The top-k and a Grad-CAM heatmap for each of `classes` (none: the top class), as a form."""
        path = f"{model}/{version}" if version else model
        fields = {"classes": ",".join(map(str, classes))} if classes else {}
        return self._call(
            "POST",
            f"{self.inference_url}/explanations/{path}",
            self.tokens.inference,
            files={"data": image},
            data=fields,
        )

    # Management API
    def list_models(self) -> dict[str, Any]:
        return self._call("GET", f"{self.management_url}/models", self.tokens.management)

    def describe(self, model: str, version: str | None = None) -> list[dict[str, Any]]:
        """One version, "all" of them, or (None) the default version."""
        path = f"{model}/{version}" if version else model
        return self._call("GET", f"{self.management_url}/models/{path}", self.tokens.management)

    def register(self, archive: str, initial_workers: int, synchronous: bool = True) -> dict[str, Any]:
        params = {"url": archive, "initial_workers": initial_workers, "synchronous": str(synchronous).lower()}
        return self._call("POST", f"{self.management_url}/models", self.tokens.management, params=params)

    def set_default(self, model: str, version: str) -> dict[str, Any]:
        return self._call("PUT", f"{self.management_url}/models/{model}/{version}/set-default", self.tokens.management)

    def scale(self, model: str, version: str, min_workers: int, max_workers: int) -> dict[str, Any]:
        params = {"min_worker": min_workers, "max_worker": max_workers, "synchronous": "true"}
        return self._call(
            "PUT", f"{self.management_url}/models/{model}/{version}", self.tokens.management, params=params
        )

    def unregister(self, model: str, version: str) -> dict[str, Any]:
        """TorchServe 0.12 sometimes answers 500 ConcurrentModificationException when a version is
        unregistered while requests to it are in flight (a race in its frontend). Then the call is
        made again; a version that is gone by then was unregistered by the first call."""
        url = f"{self.management_url}/models/{model}/{version}"
        retries = 0
        while True:
            try:
                return self._call("DELETE", url, self.tokens.management)
            except ApiError as error:
                if retries and error.status == HTTPStatus.NOT_FOUND:
                    return {
                        "status": f'Model "{model}" version {version} unregistered (TorchServe reported a '
                        f"{CONCURRENT_MODIFICATION} first)"
                    }
                if CONCURRENT_MODIFICATION not in error.message or retries == UNREGISTER_RETRIES:
                    raise
            retries += 1
            time.sleep(0.5)

    def _call(self, method: str, url: str, token: str, **kwargs: Any) -> Any:
        headers = {"Authorization": f"Bearer {token}", **kwargs.pop("headers", {})}
        try:
            response = self.session.request(method, url, headers=headers, timeout=self.timeout, **kwargs)
        except requests.ConnectionError:
            raise ApiError(0, f"cannot reach TorchServe at {url}: is it running? (`make serve`)") from None
        except requests.Timeout:
            raise ApiError(0, f"TorchServe did not answer {method} {url} within {self.timeout:g} s") from None
        body = _json_or_text(response)
        if response.status_code >= HTTPStatus.BAD_REQUEST:
            if isinstance(body, dict) and "message" in body:
                body = f"{body['type']}: {body['message']}" if body.get("type") else body["message"]
            raise ApiError(response.status_code, explain(str(body)))
        return body


def _json_or_text(response: requests.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return response.text
