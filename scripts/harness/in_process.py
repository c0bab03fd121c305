"""Run the handler in this process exactly as a TorchServe worker does, without a server.

The archive is loaded by TorchServe's own model loader, requests are decoded from the same wire
frames the frontend sends (so JSON and text bodies are parsed as in a worker), and a batch goes
through the same steps as `ts.service.Service.predict`. The tests use it to check the handler
in detail; the benchmark uses it to measure the handler without the server. The private
TorchServe APIs this takes are reached through private_hooks.py.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from ts.metrics.metric_cache_yaml_impl import MetricsCacheYamlImpl
from ts.model_loader import TsModelLoader
from ts.service import Service

from scripts.harness.private_hooks import decode_parameter, entry_point, handler_of
from scripts.paths import CONFIG_DIR, MODEL_NAME

METRICS_CONFIG = CONFIG_DIR / "metrics.yaml"  # what the served handler gets (metrics_config)


# TorchServe adds this header to requests on /predictions (empty unless the path goes on), and
# to no request on the KServe routes (/v1/models/..., /v2/models/...).
PREDICTIONS_ROUTE = (("url_path", ""),)
# TorchServe sets it to "True" on its explanation routes ("False" on the prediction routes).
EXPLAIN_HEADER = "explain"
# What every HTTP client sends, whatever else it leaves out (tritonclient sends no Content-Type).
HTTP_HEADERS = (("Host", "127.0.0.1:8080"),)


@dataclass(frozen=True)
class Request:
    """One request as the frontend forwards it: its parameters and HTTP headers."""

    parameters: tuple[tuple[str, str, bytes], ...]  # (name, content type, raw bytes)
    headers: tuple[tuple[str, str], ...] = ()

    @classmethod
    def raw(cls, body: bytes, content_type: str = "image/jpeg") -> Request:
        """A body POSTed to /predictions."""
        return cls((("body", content_type, body),), (("Content-Type", content_type), *PREDICTIONS_ROUTE))

    @classmethod
    def form(cls, **fields: bytes) -> Request:
        return cls(
            tuple((name, "application/octet-stream", value) for name, value in fields.items()),
            (("Content-Type", "multipart/form-data; boundary=x"), *PREDICTIONS_ROUTE),
        )

    @classmethod
    def json(cls, document: Any) -> Request:
        return cls.raw(_json_bytes(document), "application/json")

    @classmethod
    def kserve(cls, body: Any, content_type: str | None = "application/json", **headers: str) -> Request:
        """A body POSTed to a KServe route: /v1/models/{m}:predict or /v2/models/{m}/infer. Extra
        headers are given with underscores for dashes (Inference_Header_Content_Length=...);
        content_type None sends none, as tritonclient does."""
        raw = body if isinstance(body, bytes) else _json_bytes(body)
        sent = tuple((name.replace("_", "-"), value) for name, value in headers.items())
        declared = (("Content-Type", content_type),) if content_type is not None else ()
        return cls((("body", content_type or "", raw),), (*HTTP_HEADERS, *declared, *sent))

    @classmethod
    def grpc(cls, document: Any) -> Request:
        """What TorchServe's OIP gRPC frontend forwards for ModelInfer: JSON, and no headers."""
        return cls((("body", "application/json", _json_bytes(document)),))

    def explaining(self) -> Request:
        """The same request on an explanation route (/explanations, :explain, /explain)."""
        return Request(self.parameters, (*self.headers, (EXPLAIN_HEADER, "True")))


def _json_bytes(document: Any) -> bytes:
    return document if isinstance(document, bytes) else json.dumps(document).encode()


@dataclass(frozen=True)
class Response:
    status: int
    body: Any
    headers: dict[str, str]


class InProcessModel:
    """An archive loaded as a worker loads it. Close it when done (or use it as a context manager):
    TorchServe calls no handler hook when a worker stops, so the handler's threads outlive the
    model unless close() finalizes it."""

    def __init__(
        self,
        model_dir: Path,
        batch_size: int = 8,
        gpu_id: int | None = None,
        metrics_config: Path = METRICS_CONFIG,
        metrics_kind: type[MetricsCacheYamlImpl] = MetricsCacheYamlImpl,
    ) -> None:
        """Load an archive already extracted to `model_dir`, as a worker loads it. The handler's
        metrics go where `metrics_kind` sends them: TorchServe's cache prints them for its frontend."""
        self.model_dir = model_dir
        self.service = TsModelLoader().load(
            MODEL_NAME,
            str(model_dir),
            handler="resnet50_handler",
            gpu_id=gpu_id,
            batch_size=batch_size,
            metrics_cache=metrics_cache(metrics_config, metrics_kind),
        )

    @classmethod
    def from_archive(
        cls,
        archive: Path,
        extract_to: Path,
        batch_size: int = 8,
        gpu_id: int | None = None,
        metrics_config: Path = METRICS_CONFIG,
        metrics_kind: type[MetricsCacheYamlImpl] = MetricsCacheYamlImpl,
    ) -> InProcessModel:
        """Extract the archive to `extract_to`, as TorchServe does, and load it."""
        with zipfile.ZipFile(archive) as mar:
            mar.extractall(extract_to)
        return cls(extract_to, batch_size, gpu_id, metrics_config, metrics_kind)

    @property
    def handler(self) -> Any:
        return handler_of(self.service)

    @property
    def version(self) -> str:
        """The model version the archive's manifest gives."""
        return str(self.service.context.manifest["model"]["modelVersion"])

    def infer(self, requests: list[Request]) -> list[Response]:
        batch = [_wire_request(f"request-{i}", request) for i, request in enumerate(requests)]
        headers, inputs, ids = Service.retrieve_data_for_inference(batch)
        context = self.service.context
        context.request_ids = ids
        context.request_processor = headers
        context.metrics.request_ids = ids
        outputs = entry_point(self.service)(inputs, context)
        assert len(outputs) == len(requests), "one response per request"
        return [
            Response(context.get_response_status(i)[0] or 200, output, context.get_response_headers(i))
            for i, output in enumerate(outputs)
        ]

    def close(self) -> None:
        """Finalize the handler (it stops its preprocessing threads); closing twice is harmless."""
        self.handler.finalize()

    def __enter__(self) -> InProcessModel:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()


def metrics_cache(config: Path, kind: type[MetricsCacheYamlImpl] = MetricsCacheYamlImpl) -> MetricsCacheYamlImpl:
    """The worker's metrics cache, built as TorchServe's worker builds it from metrics_config."""
    cache = kind(str(config))
    cache.initialize_cache()
    return cache


def _wire_request(request_id: str, request: Request) -> dict[str, Any]:
    return {
        "requestId": request_id.encode(),
        "headers": [{"name": name.encode(), "value": value.encode()} for name, value in request.headers],
        "parameters": [decode_parameter(*parameter) for parameter in request.parameters],
    }
