"""Explanations over a real TorchServe: every explanation route it has (`/explanations` with and
without a version, KServe v1's `:explain` through kserve's own client, the OIP's `/explain`)
answers Grad-CAM that matches Grad-CAM by hand on the served version's weights; a bad image fails
alone among concurrent explanations; the explain stage is timed on /metrics."""

from __future__ import annotations

import asyncio
import io
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import kserve
import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from answers import HEATMAP_TOLERANCE, VERSION_WEIGHTS, grad_cam_by_hand, heatmaps, reference_model, same_answer
from classification_transforms import ClassificationPreset
from conftest import inference_auth, post_inference
from handler_config import PreprocessConfig
from images import b64, photo_bytes
from scripts.client.prometheus_scrape import increase, settled_scrape
from scripts.client.rest_api import RestClient
from scripts.endpoints import Server
from scripts.paths import MODEL_NAME, archive_name

PHOTO, OTHER = photo_bytes((500, 400)), photo_bytes((300, 450))


@pytest.fixture(scope="module")
def references(model_store: Path) -> dict[str, torchvision.models.ResNet]:
    return {version: reference_model(model_store / archive_name(version)) for version in VERSION_WEIGHTS}


def expected(
    references: dict[str, torchvision.models.ResNet], version: str, image: bytes, classes: list[int]
) -> torch.Tensor:
    """Grad-CAM by hand for `classes` of `image`, on torchvision's preprocessing of the version's weights."""
    tensor = VERSION_WEIGHTS[version].transforms()(Image.open(io.BytesIO(image)).convert("RGB"))
    return grad_cam_by_hand(references[version], tensor.expand(len(classes), -1, -1, -1), classes)


def preprocessing(version: str) -> PreprocessConfig:
    """The version's preset, as torchvision's weights define it."""
    preset = VERSION_WEIGHTS[version].transforms()
    return PreprocessConfig(preset.resize_size[0], preset.crop_size[0], tuple(preset.mean), tuple(preset.std))


def test_explanations_of_the_default_version_explain_its_top_class(server: Server, references: dict[str, Any]) -> None:
    response = post_inference(server, f"explanations/{MODEL_NAME}", data=PHOTO)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert same_answer(answer["predictions"], RestClient.for_server(server).predict(MODEL_NAME, PHOTO))
    top = answer["predictions"][0]["index"]
    assert [entry["index"] for entry in answer["heatmaps"]] == [top]
    assert (heatmaps(answer) - expected(references, "2.0", PHOTO, [top])).abs().max() <= HEATMAP_TOLERANCE


def test_explanations_of_a_version_explain_the_classes_a_form_names(server: Server, references: dict[str, Any]) -> None:
    response = post_inference(server, f"explanations/{MODEL_NAME}/1.0", files={"data": PHOTO}, data={"classes": "8,1"})
    assert response.status_code == 200, response.text
    answer = response.json()
    assert same_answer(answer["predictions"], RestClient.for_server(server).predict(MODEL_NAME, PHOTO, "1.0"))
    assert [entry["index"] for entry in answer["heatmaps"]] == [8, 1]
    assert (heatmaps(answer) - expected(references, "1.0", PHOTO, [8, 1])).abs().max() <= HEATMAP_TOLERANCE


def test_kserve_v1_explain_with_kserves_client(server: Server, references: dict[str, Any]) -> None:
    async def call() -> dict[str, Any]:
        client = kserve.InferenceRESTClient(kserve.RESTConfig(protocol="v1", timeout=120))
        try:
            explanation: dict[str, Any] = await client.explain(
                server.inference_url,
                MODEL_NAME,
                {"instances": [b64(PHOTO), {"b64": b64(OTHER)}], "classes": [3]},
                headers=inference_auth(server),
            )
        finally:
            await client.close()
        return explanation

    first, second = asyncio.run(call())["explanations"]
    for answer, image, size in ((first, PHOTO, (500, 400)), (second, OTHER, (300, 450))):
        assert [entry["index"] for entry in answer["heatmaps"]] == [3]
        assert (heatmaps(answer) - expected(references, "2.0", image, [3])).abs().max() <= HEATMAP_TOLERANCE
        assert answer["crop_box"] == list(ClassificationPreset(preprocessing("2.0")).crop_box(size))


def test_open_inference_explain(server: Server, references: dict[str, Any]) -> None:
    body = {
        "inputs": [{"name": "image", "datatype": "BYTES", "shape": [2], "data": [b64(PHOTO), b64(OTHER)]}],
        "parameters": {"classes": [5, 6]},
    }
    response = post_inference(server, f"v2/models/{MODEL_NAME}/explain", json=body)
    assert response.status_code == 200, response.text
    outputs = {output["name"]: output for output in response.json()["outputs"]}
    assert set(outputs) == {"probabilities", "explained_classes", "heatmaps", "crop_boxes"}
    assert outputs["explained_classes"]["data"] == [5, 6, 5, 6]
    assert outputs["heatmaps"]["shape"] == [2, 2, 7, 7] and outputs["crop_boxes"]["shape"] == [2, 4]
    served = torch.tensor(outputs["heatmaps"]["data"]).view(2, 2, 7, 7)
    for image, maps in zip((PHOTO, OTHER), served, strict=True):
        assert (maps - expected(references, "2.0", image, [5, 6])).abs().max() <= HEATMAP_TOLERANCE


def test_bad_requests_fail_alone_among_concurrent_explanations(server: Server) -> None:
    """Explanations, predictions, bad images and bad classes at once, so that they share
    batches: each bad request gets its own 400, every good one its answer."""
    calls = [
        ("explanations", {"data": PHOTO}),
        ("explanations", {"data": b"not an image"}),
        ("predictions", {"data": OTHER}),
        ("explanations", {"files": {"data": OTHER}, "data": {"classes": "1000"}}),
        ("explanations", {"files": {"data": OTHER}, "data": {"classes": "4"}}),
        ("predictions", {"data": PHOTO}),
    ] * 2
    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        responses = list(pool.map(lambda call: post_inference(server, f"{call[0]}/{MODEL_NAME}", **call[1]), calls))
    assert [r.status_code for r in responses] == [200, 400, 200, 400, 200, 200] * 2
    for (route, _), response in zip(calls, responses, strict=True):
        if response.status_code == 200:
            assert isinstance(response.json(), dict if route == "explanations" else list)
        else:
            assert response.json()["type"] in {"InvalidImage", "InvalidClasses"}


def test_the_explain_stage_is_timed_on_metrics(server: Server) -> None:
    """One prediction and one explanation: two batches through the handler, one of them explained."""
    before = settled_scrape(server.metrics_url, report_s=server.metrics_report_s)
    assert post_inference(server, f"predictions/{MODEL_NAME}", data=PHOTO).status_code == 200
    assert post_inference(server, f"explanations/{MODEL_NAME}", data=PHOTO).status_code == 200
    after = settled_scrape(
        server.metrics_url,
        report_s=server.metrics_report_s,
        until=lambda scraped: increase(before, scraped, "handler_stage_seconds_count", Stage="handler") >= 2,
    )
    assert increase(before, after, "handler_stage_seconds_count", Stage="explain", ModelVersion="2.0") == 1
    assert increase(before, after, "handler_stage_seconds_sum", Stage="explain") > 0
    assert np.isclose(increase(before, after, "handler_stage_seconds_count", Stage="forward"), 2)
