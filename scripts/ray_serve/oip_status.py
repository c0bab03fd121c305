"""The Open Inference Protocol's REST routes that say what is served rather than infer: server
liveness, readiness and metadata, and a model's metadata and readiness. TorchServe 0.12 answers
the first three and not the model's two (docs/protocols.md); on Ray Serve the frontend answers
all five itself. One small module at the edge of the Ray Serve engine (docs/engines.md)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import ray

from model_identity import CLASSES
from model_signature import IMAGE, PROBABILITIES, TensorSpec

SERVER_LIVE, SERVER_READY, SERVER_METADATA = "/v2/health/live", "/v2/health/ready", "/v2"
_MODEL = re.compile(r"^/v2/models/(?P<model>[^/]+)(?:/versions/(?P<version>[^/]+))?(?P<ready>/ready)?$")
# What the engine adds to the protocol: binary tensors, and the classification extension (top k as text).
EXTENSIONS = ("binary_tensor_data", "classification")


@dataclass(frozen=True)
class ModelQuery:
    """`GET /v2/models/{model}[/versions/{version}][/ready]`."""

    model: str
    version: str | None
    ready: bool


def model_query(path: str) -> ModelQuery | None:
    """The model metadata or readiness request `path` names, or None."""
    match = _MODEL.match(path)
    return ModelQuery(match["model"], match["version"], bool(match["ready"])) if match else None


def server_answers() -> dict[str, dict[str, Any]]:
    """The answer to each server route (`/v2`, `/v2/health/live`, `/v2/health/ready`). Liveness and
    readiness as TorchServe words them; the metadata names this engine, and its extensions under
    the protocol's own key (TorchServe's reads `extenstion`)."""
    return {
        SERVER_LIVE: {"live": True},
        SERVER_READY: {"ready": True},
        SERVER_METADATA: {"name": "Ray Serve", "version": ray.__version__, "extensions": list(EXTENSIONS)},
    }


def model_metadata(model: str, versions: list[str]) -> dict[str, Any]:
    """The model's signature (model_signature.py): one BYTES input of N encoded images, and the
    N x 1000 probabilities; -1 marks the batch dimension, as the protocol writes a variable one."""
    return {
        "name": model,
        "versions": versions,
        "platform": "pytorch",
        "inputs": [_tensor(IMAGE)],
        "outputs": [_tensor(PROBABILITIES)],
    }


def model_ready(model: str, version: str) -> dict[str, Any]:
    """A deployed version is ready: Serve routes requests to replicas that passed their health check."""
    return {"name": model, "version": version, "ready": True}


def _tensor(spec: TensorSpec) -> dict[str, Any]:
    shape = [CLASSES if dimension == "classes" else dimension for dimension in spec.shape]
    return {
        "name": spec.name,
        "datatype": spec.datatype,
        "shape": [dimension if isinstance(dimension, int) else -1 for dimension in shape],
    }
