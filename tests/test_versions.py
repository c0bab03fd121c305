"""Version management over REST and gRPC against the real server: the canary workflow and its errors.

Each test leaves the server as it found it: 1.0 and 2.0 registered, 2.0 the default.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from PIL import Image

import promised
from answers import same_answer
from conftest import refused, restore
from images import encode, photo_bytes
from scripts.client.cli import management_client
from scripts.client.grpc_client import GrpcClient
from scripts.client.rest_api import RestClient
from scripts.endpoints import Server
from scripts.paths import MODEL_NAME, archive_name


@pytest.fixture(params=["rest", "grpc"])
def api(request: pytest.FixtureRequest, server: Server) -> Iterator[Any]:
    client = GrpcClient.for_server(server) if request.param == "grpc" else RestClient.for_server(server)
    yield client
    restore(server)
    if isinstance(client, GrpcClient):
        client.close()


def versions(api: Any) -> set[str]:
    return {entry["modelVersion"] for entry in api.describe(MODEL_NAME, "all")}


def test_list_and_describe(api: Any) -> None:
    assert MODEL_NAME in [model["modelName"] for model in api.list_models()["models"]]
    assert versions(api) == {"1.0", "2.0"}
    assert api.describe(MODEL_NAME)[0]["modelVersion"] == "2.0"
    [one] = api.describe(MODEL_NAME, "1.0")
    assert one["modelVersion"] == "1.0" and one["workers"][0]["status"] == "READY"


def test_canary_promote_rollback_unregister(api: Any, canary_archive: str) -> None:
    image = photo_bytes()
    assert "registered" in api.register(canary_archive, initial_workers=1)["status"]
    assert versions(api) == {"1.0", "2.0", "2.1"}
    canary = api.predict(MODEL_NAME, image, version="2.1")
    assert same_answer(api.predict(MODEL_NAME, image), api.predict(MODEL_NAME, image, version="2.0"))

    api.set_default(MODEL_NAME, "2.1")
    assert api.describe(MODEL_NAME)[0]["modelVersion"] == "2.1"
    assert same_answer(api.predict(MODEL_NAME, image), canary)

    api.set_default(MODEL_NAME, "2.0")  # roll back
    assert api.describe(MODEL_NAME)[0]["modelVersion"] == "2.0"
    api.unregister(MODEL_NAME, "2.1")
    assert versions(api) == {"1.0", "2.0"}


def test_scale_workers(api: Any) -> None:
    api.scale(MODEL_NAME, "1.0", min_workers=2, max_workers=2)
    try:
        workers = api.describe(MODEL_NAME, "1.0")[0]["workers"]
        assert [worker["status"] for worker in workers] == ["READY", "READY"]
    finally:
        api.scale(MODEL_NAME, "1.0", min_workers=1, max_workers=1)
    assert len(api.describe(MODEL_NAME, "1.0")[0]["workers"]) == 1


def served_state(server: Server) -> dict[str, Any]:
    """What the server serves, read over REST (or from the Ray Serve engine's Serve config)
    whichever protocol the test used: versions, each one's worker pids, and the default."""
    versions = management_client(server)
    return {
        "workers": {
            entry["modelVersion"]: [worker["pid"] for worker in entry["workers"]]
            for entry in versions.describe(MODEL_NAME, "all")
        },
        "default": versions.describe(MODEL_NAME)[0]["modelVersion"],
    }


def test_a_duplicate_version_is_refused_and_the_served_one_is_untouched(api: Any, server: Server) -> None:
    before = served_state(server)
    error = refused(api.register, archive_name("2.0"), 1)
    assert error.status == 409 and "already registered" in error.message
    assert served_state(server) == before  # same versions, same workers (not reloaded), same default
    assert api.predict(MODEL_NAME, photo_bytes(), version="2.0")


@pytest.mark.parametrize(("model", "version"), [("no-such-model", None), (MODEL_NAME, "9.9")])
def test_an_unknown_model_or_version_is_404(api: Any, model: str, version: str | None) -> None:
    assert refused(api.describe, model, version).status == 404
    assert refused(api.predict, model, photo_bytes(), version).status == 404
    if version:
        assert refused(api.set_default, model, version).status == 404
        assert refused(api.unregister, model, version).status == 404


def test_the_default_cannot_be_unregistered_while_others_exist(api: Any, server: Server) -> None:
    before = served_state(server)
    error = refused(api.unregister, MODEL_NAME, "2.0")
    assert error.status == 403 and "default version" in error.message
    assert served_state(server) == before  # 2.0 still served, by the same workers, still the default
    assert api.predict(MODEL_NAME, photo_bytes())


def test_an_archive_missing_from_the_store_is_404(api: Any) -> None:
    error = refused(api.register, "resnet50-7.7.mar", 1)
    assert error.status == 404 and "resnet50-7.7.mar" in error.message


def test_an_image_rest_accepts_is_accepted_over_grpc(server: Server) -> None:
    """Bigger than gRPC's default 4 MiB message limit, within the promised 10 MiB."""
    noise = np.random.default_rng(0).integers(0, 256, (1400, 1400, 3), dtype=np.uint8)
    image = encode(Image.fromarray(noise), "PNG")
    assert 4 * promised.MIB < len(image) < promised.MAX_REQUEST_BYTES
    by_rest = RestClient.for_server(server).predict(MODEL_NAME, image)
    assert same_answer(GrpcClient.for_server(server).predict(MODEL_NAME, image), by_rest)
