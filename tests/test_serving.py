"""Against a real TorchServe: ping, both versions, every payload form, describe."""

from __future__ import annotations

import pytest
import requests

from answers import same_answer
from conftest import inference_auth, post_inference
from images import b64, photo_bytes
from scripts.client.rest_api import ApiError, RestClient
from scripts.endpoints import Server
from scripts.paths import MODEL_NAME


def test_ping_reports_healthy(client: RestClient) -> None:
    assert client.ping() == {"status": "Healthy"}


@pytest.mark.parametrize(
    "path", [f"predictions/{MODEL_NAME}", f"predictions/{MODEL_NAME}/1.0", f"predictions/{MODEL_NAME}/2.0"]
)
def test_every_payload_form_is_classified_alike(server: Server, path: str) -> None:
    image = photo_bytes((500, 400))
    answers = [
        post_inference(server, path, {"Content-Type": "image/jpeg"}, data=image),
        requests.put(
            f"{server.inference_url}/{path}", data=image, timeout=60, headers=inference_auth(server)
        ),  # curl -T
        post_inference(server, path, files={"data": ("photo.jpg", image, "image/jpeg")}),
        post_inference(server, path, json={"data": b64(image)}),
    ]
    assert [answer.status_code for answer in answers] == [200] * 4
    first = answers[0].json()
    assert len(first) == 5 and {"label", "index", "probability"} == set(first[0])
    assert all(same_answer(answer.json(), first) for answer in answers[1:])


def test_the_default_version_is_2_0(client: RestClient) -> None:
    image = photo_bytes()
    assert same_answer(client.predict(MODEL_NAME, image), client.predict(MODEL_NAME, image, version="2.0"))
    assert not same_answer(
        client.predict(MODEL_NAME, image, version="1.0"), client.predict(MODEL_NAME, image, version="2.0")
    )
    assert client.describe(MODEL_NAME)[0]["modelVersion"] == "2.0"


def test_describe_lists_both_versions_with_ready_workers(client: RestClient) -> None:
    described = {entry["modelVersion"]: entry for entry in client.describe(MODEL_NAME, "all")}
    assert set(described) >= {"1.0", "2.0"}
    for version in ("1.0", "2.0"):
        assert described[version]["modelUrl"] == f"{MODEL_NAME}-{version}.mar"
        assert [worker["status"] for worker in described[version]["workers"]] == ["READY"]
        assert described[version]["batchSize"] == 8


def test_an_unknown_version_is_404(client: RestClient) -> None:
    with pytest.raises(ApiError) as refused:
        client.predict(MODEL_NAME, photo_bytes(), version="9.9")
    assert refused.value.status == 404
