"""KServe v1 and the Open Inference Protocol against a real TorchServe, with clients nobody here
wrote: tritonclient (binary by default, JSON, the classification extension) and kserve's REST
client (v1, v2), and the OIP gRPC service through our client. Every route's top-k agrees with
our REST answer for the same image, and concurrent good and bad requests are answered alone."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import httpx
import kserve
import numpy as np
import pytest
import requests
import tritonclient.http as triton
from kserve.protocol.infer_type import RequestedOutput
from tritonclient.utils import InferenceServerException

import oip
from answers import indices, same_answer, top5
from conftest import inference_auth, post_inference, refused
from images import b64, encode, noise_image, photo_bytes
from scripts.client.grpc_client import GrpcClient
from scripts.client.rest_api import ApiError, RestClient
from scripts.client.torchserve_grpc import open_inference_grpc_pb2
from scripts.endpoints import Server
from scripts.paths import MODEL_NAME

PHOTO, NOISE = photo_bytes((500, 400)), encode(noise_image((320, 240)))
NOT_AN_IMAGE = b"%PDF-1.4 definitely not a photo"


# Our REST answers, by version ("" for the default) and image.
RestAnswers = dict[str, dict[bytes, list[dict[str, Any]]]]


@pytest.fixture(scope="module")
def rest_answers(server: Server) -> RestAnswers:
    """Our REST answers for each image, from the default version and from 1.0."""
    client = RestClient.for_server(server)
    return {
        version: {image: client.predict(MODEL_NAME, image, version or None) for image in (PHOTO, NOISE)}
        for version in ("", "1.0")
    }


@pytest.fixture
def auth(server: Server) -> dict[str, str]:
    return inference_auth(server)


@pytest.fixture(scope="module")
def triton_client(server: Server) -> Iterator[triton.InferenceServerClient]:
    client = triton.InferenceServerClient(f"127.0.0.1:{server.ports.inference}", network_timeout=120)
    yield client
    client.close()


def test_tritonclient_with_its_defaults_classifies(
    triton_client: triton.InferenceServerClient, auth: dict[str, str], rest_answers: RestAnswers
) -> None:
    """Binary-data extension both ways: no outputs named, so tritonclient asks for all in binary."""
    answer = triton_client.infer(MODEL_NAME, [oip.image_input([PHOTO, NOISE])], headers=auth)
    probabilities = answer.as_numpy(oip.OUTPUT)
    assert probabilities.dtype == np.float32 and probabilities.shape == (2, 1000)
    assert [top5(row) for row in probabilities] == [indices(rest_answers[""][image]) for image in (PHOTO, NOISE)]
    assert answer.get_response()["model_version"] == "2.0"


def test_tritonclient_in_json_only(
    triton_client: triton.InferenceServerClient, auth: dict[str, str], rest_answers: RestAnswers
) -> None:
    answer = triton_client.infer(
        MODEL_NAME, [oip.image_input([b64(NOISE)], binary=False)], outputs=[oip.requested(binary=False)], headers=auth
    )
    [row] = answer.as_numpy(oip.OUTPUT)
    assert top5(row) == indices(rest_answers[""][NOISE])
    assert row[top5(row)] == pytest.approx([p["probability"] for p in rest_answers[""][NOISE]], abs=1e-4)


@pytest.mark.parametrize("binary", [True, False])
def test_tritonclient_classification_extension(
    triton_client: triton.InferenceServerClient, auth: dict[str, str], rest_answers: RestAnswers, binary: bool
) -> None:
    answer = triton_client.infer(
        MODEL_NAME, [oip.image_input([PHOTO])], outputs=[oip.requested(binary, classes=3)], headers=auth
    )
    [row] = oip.classifications(answer.as_numpy(oip.OUTPUT))
    expected = rest_answers[""][PHOTO][:3]
    assert [(index, label) for _, index, label in row] == [(p["index"], p["label"]) for p in expected]


def test_tritonclient_sees_a_bad_image_as_a_400_naming_it(
    triton_client: triton.InferenceServerClient, auth: dict[str, str]
) -> None:
    with pytest.raises(InferenceServerException) as error:
        triton_client.infer(MODEL_NAME, [oip.image_input([PHOTO, NOT_AN_IMAGE])], headers=auth)
    assert error.value.status() == "400"
    assert error.value.message().startswith("InvalidImage: input 'image' element 1:")


def kserve_infer(server: Server, protocol: str, body: Any, auth: dict[str, str]) -> Any:
    async def infer() -> Any:
        client = kserve.InferenceRESTClient(kserve.RESTConfig(protocol=protocol, timeout=120))
        try:
            return await client.infer(server.inference_url, body, model_name=MODEL_NAME, headers=dict(auth))
        finally:
            await client.close()

    return asyncio.run(infer())


def test_kserve_v1_client(server: Server, auth: dict[str, str], rest_answers: RestAnswers) -> None:
    instances = [{"image_bytes": {"b64": b64(PHOTO)}}, {"data": b64(NOISE)}, b64(PHOTO)]
    answer = kserve_infer(server, "v1", {"instances": instances}, auth)
    expected = [rest_answers[""][image] for image in (PHOTO, NOISE, PHOTO)]
    assert all(same_answer(got, want) for got, want in zip(answer["predictions"], expected, strict=True))


def test_kserve_v1_client_sees_a_bad_instance_as_a_400_naming_it(server: Server, auth: dict[str, str]) -> None:
    with pytest.raises(httpx.HTTPStatusError) as error:
        kserve_infer(server, "v1", {"instances": [b64(PHOTO), b64(NOT_AN_IMAGE)]}, auth)
    assert error.value.response.status_code == 400
    assert error.value.response.json()["error"].startswith("InvalidImage: instance 1:")


@pytest.mark.parametrize("binary", [True, False])
def test_kserve_v2_client(server: Server, auth: dict[str, str], rest_answers: RestAnswers, binary: bool) -> None:
    image = kserve.InferInput("image", [2], "BYTES")
    images = [PHOTO, NOISE] if binary else [b64(PHOTO), b64(NOISE)]
    image.set_data_from_numpy(np.array(images, dtype=object), binary_data=binary)
    output = RequestedOutput("probabilities", {"binary_data": binary})
    answer = kserve_infer(server, "v2", kserve.InferRequest(MODEL_NAME, [image], request_outputs=[output]), auth)
    assert answer.model_name == MODEL_NAME
    rows = answer.outputs[0].as_numpy()
    assert [top5(row) for row in rows] == [indices(rest_answers[""][image]) for image in (PHOTO, NOISE)]


@pytest.mark.parametrize("version", ["", "1.0"])
def test_oip_grpc_through_our_client(server: Server, rest_answers: RestAnswers, version: str) -> None:
    """Over gRPC the version can be chosen (REST's /v2 routes serve only the default)."""
    client = GrpcClient.for_server(server)
    try:
        rows = client.infer(MODEL_NAME, [PHOTO, NOISE], version=version or None)
        assert client.model_ready(MODEL_NAME, version or None)
    finally:
        client.close()
    assert [top5(row) for row in rows] == [indices(rest_answers[version][image]) for image in (PHOTO, NOISE)]


def test_oip_grpc_refusal_is_raised_by_our_client_with_its_status(server: Server) -> None:
    """Our refusal, from the `error` output; an unknown model or version, from TorchServe (INTERNAL)."""
    client = GrpcClient.for_server(server)
    try:
        error = refused(client.infer, MODEL_NAME, [NOT_AN_IMAGE])
        unknown = [
            refused(client.infer, model, [PHOTO], version) for model, version in (("nope", None), (MODEL_NAME, "9.9"))
        ]
    finally:
        client.close()
    assert error.status == 400 and error.message.startswith("InvalidImage: input 'image' element 0:")
    assert [(e.status, e.message.split(":")[0]) for e in unknown] == [(404, "INTERNAL")] * 2


def test_what_torchserve_does_not_route_on_v2(server: Server, auth: dict[str, str]) -> None:
    """docs/protocols.md: metadata and per-model readiness are not served; a version in the path
    is refused (use gRPC, or /predictions/resnet50/1.0); the server's health is; gRPC has no
    ServerMetadata."""

    def get(path: str) -> requests.Response:
        return requests.get(f"{server.inference_url}/{path}", headers=auth, timeout=30)

    assert get(f"v2/models/{MODEL_NAME}").status_code == 404
    assert get(f"v2/models/{MODEL_NAME}/ready").status_code == 404
    assert get("v2/health/ready").json() == {"ready": True}
    assert get("v2/health/live").json() == {"live": True}
    assert get("v2").json()["name"] == "Torchserve"
    for path in (f"v2/models/{MODEL_NAME}/versions/1.0/infer", f"v1/models/{MODEL_NAME}/versions/1.0:predict"):
        assert post_inference(server, path, json={"inputs": []}).status_code == 501
    client = GrpcClient.for_server(server)
    try:
        with pytest.raises(grpc.RpcError) as error:
            client.open_inference.ServerMetadata(
                open_inference_grpc_pb2.ServerMetadataRequest(),
                timeout=30,
                metadata=(("authorization", f"Bearer {client.tokens.inference}"),),
            )
    finally:
        client.close()
    assert error.value.code() == grpc.StatusCode.UNIMPLEMENTED


Outcome = tuple[int, Any]  # a status, and each image's top-5 classes or the error's kind


def via_v1(server: Server, instances: list[str]) -> Outcome:
    answer = post_inference(server, f"v1/models/{MODEL_NAME}:predict", json={"instances": instances})
    if answer.status_code != 200:
        return answer.status_code, answer.json()["error"].split(":")[0]
    return 200, [indices(prediction) for prediction in answer.json()["predictions"]]


def via_triton(server: Server, auth: dict[str, str], images: list[bytes]) -> Outcome:
    """A client of its own: tritonclient's runs on gevent, which one client's threads cannot share."""
    client = triton.InferenceServerClient(f"127.0.0.1:{server.ports.inference}", network_timeout=60)
    try:
        return 200, [
            top5(row)
            for row in client.infer(MODEL_NAME, [oip.image_input(images)], headers=dict(auth)).as_numpy(oip.OUTPUT)
        ]
    except InferenceServerException as error:
        return int(error.status()), error.message().split(":")[0]
    finally:
        client.close()


def via_grpc(client: GrpcClient, images: list[bytes]) -> Outcome:
    try:
        return 200, [top5(row) for row in client.infer(MODEL_NAME, images)]
    except ApiError as error:
        return error.status, error.message.split(":")[0]


def via_rest(server: Server, image: bytes) -> Outcome:
    answer = post_inference(server, headers={"Content-Type": "image/jpeg"}, data=image)
    return (200, [indices(answer.json())]) if answer.status_code == 200 else (answer.status_code, answer.json()["type"])


def test_concurrent_good_and_bad_requests_on_every_route_are_answered_alone(
    server: Server, auth: dict[str, str], rest_answers: RestAnswers
) -> None:
    """Sixteen requests at once (batchSize 8) over every protocol, one in two bad: each good one
    gets the right classes for each of its images, each bad one its own 4xx."""
    grpc = GrpcClient.for_server(server, timeout=60)

    def classes(*images: bytes) -> list[list[int]]:
        return [indices(rest_answers[""][image]) for image in images]

    cases: list[tuple[Callable[[], Outcome], Outcome]] = [
        (lambda: via_v1(server, [b64(PHOTO), b64(NOISE)]), (200, classes(PHOTO, NOISE))),
        (lambda: via_v1(server, [b64(PHOTO), "***"]), (400, "InvalidBase64")),
        (lambda: via_triton(server, auth, [NOISE, PHOTO]), (200, classes(NOISE, PHOTO))),
        (lambda: via_triton(server, auth, [PHOTO, NOT_AN_IMAGE]), (400, "InvalidImage")),
        (lambda: via_grpc(grpc, [PHOTO]), (200, classes(PHOTO))),
        (lambda: via_grpc(grpc, [NOISE, NOT_AN_IMAGE]), (400, "InvalidImage")),
        (lambda: via_rest(server, NOISE), (200, classes(NOISE))),
        (lambda: via_rest(server, NOT_AN_IMAGE), (400, "InvalidImage")),
    ] * 2
    try:
        with ThreadPoolExecutor(max_workers=len(cases)) as pool:
            outcomes = list(pool.map(lambda case: case[0](), cases))
    finally:
        grpc.close()
    assert outcomes == [expected for _, expected in cases]
