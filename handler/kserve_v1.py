"""KServe's v1 protocol (`POST /v1/models/resnet50:predict`, `:explain`): several images per request.

    {"instances": ["<base64>", {"data": "<base64>"}, {"b64": "<base64>"}, {"image_bytes": {"b64": "<base64>"}}]}
 -> {"predictions": [[{"label": ..., "index": ..., "probability": ...}, ...], ...]}

One top-k list per instance, in order. On `:explain`, `{"explanations": [...]}` instead: per
instance, the top-k with its heatmaps; the request may name the classes, `"classes": [207, 281]`.
Errors are KServe's `{"error": "..."}`, naming the instance that failed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from request_errors import RequestError, bad_request
from wire_format import Explanation, Reply, Scores, WireRequest, from_base64

INSTANCE_KEYS = ("data", "b64")
INSTANCE_FORMS = '"<base64>", {"data": "<base64>"}, {"b64": "<base64>"} or {"image_bytes": {"b64": "<base64>"}}'
JSON = {"Content-Type": "application/json"}  # KServe's client reads an error only from JSON so declared
SHAPE = '{"instances": ["<base64 image>", ...]}'


class KServeV1Request(WireRequest):
    protocol = "kserve_v1"

    def __init__(self, body: Any) -> None:
        self.body = body

    def images(self) -> list[bytes]:
        if not isinstance(self.body, Mapping) or "instances" not in self.body:
            raise bad_request(
                "InvalidJSON",
                f'a KServe v1 request must be JSON {SHAPE}, and an Open Inference Protocol request {{"inputs": [...]}}',
            )
        instances = self.body["instances"]
        if not isinstance(instances, list) or not instances:
            raise bad_request("InvalidJSON", f"'instances' must be a non-empty list: {SHAPE}")
        return [_instance_image(index, instance) for index, instance in enumerate(instances)]

    def answer(self, scores: Scores) -> Reply:
        return Reply({"predictions": scores.predictions()}, JSON)

    def explain(self, scores: Scores, explanation: Explanation) -> Reply:
        return Reply({"explanations": explanation.per_image(scores)}, JSON)

    def refuse(self, error: RequestError, element: int | None = None) -> Reply:
        where = "" if element is None else f"instance {element}: "
        return Reply({"error": f"{error.kind}: {where}{error.message}"}, JSON)

    def named_classes(self) -> Any:
        return self.body.get("classes")  # asked only of a request whose images() it answered: a Mapping


def _instance_image(index: int, instance: Any) -> bytes:
    """An instance is the base64 text itself, or an object holding it: {"data": ...}, {"b64": ...},
    or TensorFlow Serving's {"image_bytes": {"b64": ...}}, which KServe's image examples use."""
    where = f"instance {index}"
    if isinstance(instance, Mapping) and isinstance(instance.get("image_bytes"), Mapping):
        instance = instance["image_bytes"]
    if isinstance(instance, Mapping):
        key = next((key for key in INSTANCE_KEYS if key in instance), None)
        if key is None:
            raise bad_request("InvalidJSON", f"{where} must be {INSTANCE_FORMS}; it has {sorted(instance)}")
        instance = instance[key]
    return from_base64(instance, where)
