"""The version suite (tests/test_versions.py) against the Ray Serve engine, unchanged: the canary
workflow and its refusals, with the same calls and answers. Its version commands are Serve config
updates (scripts/client/ray_versions.py), whichever protocol the inference calls use, so `api`
below pairs the two; everything else is the suite's own."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from conftest import restore
from scripts.client.cli import protocol_client
from scripts.client.ray_versions import RayServeVersions
from scripts.endpoints import Server
from test_versions import *  # noqa: F403


@pytest.fixture(scope="module")
def server(ray_server: Server) -> Server:
    return ray_server


@dataclass(frozen=True)
class RayEngineApi:
    """Inference over REST or gRPC, and the version commands as the engine has them."""

    inference: Any
    versions: RayServeVersions

    def predict(self, *args: Any, **kwargs: Any) -> Any:
        return self.inference.predict(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.versions, name)


@pytest.fixture(params=["rest", "grpc"])  # type: ignore[no-redef]
def api(request: pytest.FixtureRequest, server: Server) -> Iterator[Any]:
    inference = protocol_client(server, grpc=request.param == "grpc")
    yield RayEngineApi(inference, RayServeVersions.for_server(server))
    restore(server)
    if hasattr(inference, "close"):
        inference.close()
