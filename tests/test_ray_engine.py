"""The Ray Serve engine (scripts/ray_serve/, docs/engines.md) serves the same archives with the
same handler: both versions, 2.0 the default; on every inference route the same bytes,
status and content type as TorchServe for the same request; TorchServe's token and request-size
limit; the Open Inference Protocol routes TorchServe lacks, read by an unmodified tritonclient;
and stopping it leaves no process of it behind."""

from __future__ import annotations

import base64
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
import requests
import tritonclient.http as triton

import promised
from conftest import TEST_PLAN, inference_auth
from images import encode, noise_image, photo_bytes
from model_signature import IMAGE, PROBABILITIES
from oip import image_input, requested
from scripts.client.rest_api import RestClient
from scripts.endpoints import HOST, Ports, Server
from scripts.paths import MODEL_NAME, SERVED_VERSIONS
from scripts.ray_serve import lifecycle as ray_engine

LOOPBACK = {"127.0.0.1", "::ffff:127.0.0.1"}
PHOTO, NOISE = photo_bytes((500, 400)), encode(noise_image((320, 240)), "PNG")


@pytest.fixture(scope="module")
def ray_server(model_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The test archives on Ray Serve, on free ports; stopped at the end, and held to leave nothing."""
    instance = Server(run_dir=tmp_path_factory.mktemp("ray-run"), model_store=model_store, ports=Ports.free())
    ray_engine.start(instance, TEST_PLAN)
    try:
        yield instance
    finally:
        ray_engine.stop(instance)
    assert ray_engine.members(instance) == [], "make stop left processes of the engine running"
    for port in (instance.ports.inference, instance.ports.metrics):
        with socket.socket() as sock:
            assert sock.connect_ex((HOST, port)) != 0, f"port {port} still listens after the engine stopped"


def both(server: Server, ray_server: Server, path: str, **request: Any) -> tuple[requests.Response, requests.Response]:
    """The same POST to TorchServe and to Ray Serve, each with its own token."""
    headers = request.pop("headers", {})
    return tuple(  # type: ignore[return-value]
        requests.post(f"{s.inference_url}/{path}", headers={**inference_auth(s), **headers}, timeout=120, **request)
        for s in (server, ray_server)
    )


def v2_binary(image: bytes) -> tuple[bytes, dict[str, str]]:
    """An OIP request with the image in the binary-data extension, as tritonclient sends it."""
    header = json.dumps(
        {
            "inputs": [
                {"name": "image", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": len(image) + 4}}
            ]
        }
    ).encode()
    return header + len(image).to_bytes(4, "little") + image, {"Inference-Header-Content-Length": str(len(header))}


ROUTES: dict[str, dict[str, Any]] = {
    "the default version": {
        "path": f"predictions/{MODEL_NAME}",
        "data": PHOTO,
        "headers": {"Content-Type": "image/jpeg"},
    },
    "version 1.0": {"path": f"predictions/{MODEL_NAME}/1.0", "data": PHOTO},
    "version 2.0, a PNG": {"path": f"predictions/{MODEL_NAME}/2.0", "data": NOISE},
    "a form": {"path": f"predictions/{MODEL_NAME}", "files": {"data": PHOTO}},
    "an explanation with classes": {
        "path": f"explanations/{MODEL_NAME}",
        "files": {"data": NOISE},
        "data": {"classes": "1,2"},
    },
    "KServe v1": {
        "path": f"v1/models/{MODEL_NAME}:predict",
        "json": {"instances": [{"b64": base64.b64encode(image).decode()} for image in (PHOTO, NOISE)]},
    },
    "OIP JSON": {
        "path": f"v2/models/{MODEL_NAME}/infer",
        "json": {
            "inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [base64.b64encode(PHOTO).decode()]}]
        },
    },
    "OIP binary": {
        "path": f"v2/models/{MODEL_NAME}/infer",
        "data": v2_binary(NOISE)[0],
        "headers": v2_binary(NOISE)[1],
    },
    "a bad image": {"path": f"predictions/{MODEL_NAME}", "data": b"%PDF-1.4 not a photo"},
    # The promised limit (tests/promised.py): a body of exactly that reaches the handler, one byte more does not.
    "a body at the size limit": {"path": f"predictions/{MODEL_NAME}", "data": b"\xff" * promised.MAX_REQUEST_BYTES},
    "a body over the size limit": {
        "path": f"predictions/{MODEL_NAME}",
        "data": b"\xff" * (promised.MAX_REQUEST_BYTES + 1),
    },
    "an unknown version": {"path": f"predictions/{MODEL_NAME}/9.9", "data": PHOTO},
}


@pytest.mark.parametrize("name", ROUTES)
def test_ray_serve_answers_as_torchserve_does(server: Server, ray_server: Server, name: str) -> None:
    request = dict(ROUTES[name])
    torchserve, ray = both(server, ray_server, request.pop("path"), **request)
    assert (ray.status_code, ray.headers.get("Content-Type")) == (
        torchserve.status_code,
        torchserve.headers.get("Content-Type"),
    )
    assert ray.content == torchserve.content


@pytest.mark.parametrize("token", [None, "Bearer not-the-key", "bearer {key}"])
def test_a_request_without_the_inference_token_is_refused_alike(
    server: Server, ray_server: Server, token: str | None
) -> None:
    """TorchServe answers 400 InvalidKeyException, and its scheme "Bearer" is case-sensitive."""
    answers = []
    for s in (server, ray_server):
        key = RestClient.for_server(s).tokens.inference
        headers = {"Authorization": token.format(key=key)} if token else {}
        answers.append(
            requests.post(f"{s.inference_url}/predictions/{MODEL_NAME}", data=PHOTO, headers=headers, timeout=60)
        )
    assert [answer.status_code for answer in answers] == [400, 400]
    assert answers[1].content == answers[0].content


def test_a_body_over_the_size_limit_is_refused_before_the_token_is_read(server: Server, ray_server: Server) -> None:
    """TorchServe's HTTP layer answers 413, with no body, before its token check runs."""
    answers = [
        requests.post(
            f"{s.inference_url}/predictions/{MODEL_NAME}", data=b"\xff" * (promised.MAX_REQUEST_BYTES + 1), timeout=120
        )
        for s in (server, ray_server)
    ]
    assert [answer.status_code for answer in answers] == [413, 413]
    assert answers[1].content == answers[0].content == b""


def test_every_listener_of_the_engine_is_on_loopback(ray_server: Server) -> None:
    """Ray opens a dozen ports for one node (GCS, raylet, agents, each replica's gRPC server), on
    the node's network address unless told otherwise (lifecycle.py, loopback.py)."""
    listening = {
        (process.name(), connection.laddr.ip, connection.laddr.port)
        for process in ray_engine.members(ray_server)
        for connection in process.net_connections(kind="inet")
        if connection.status == psutil.CONN_LISTEN
    }
    assert {ray_server.ports.inference, ray_server.ports.metrics} <= {port for _, _, port in listening}
    assert {entry for entry in listening if entry[1] not in LOOPBACK} == set()


@pytest.mark.parametrize("path", ["ping", "v2/health/live", "v2/health/ready"])
def test_health_answers_alike(server: Server, ray_server: Server, path: str) -> None:
    answers = [
        requests.get(f"{s.inference_url}/{path}", headers=inference_auth(s), timeout=60) for s in (server, ray_server)
    ]
    assert [answer.status_code for answer in answers] == [200, 200]
    assert answers[1].content == answers[0].content


@pytest.fixture(scope="module")
def tritonclient_on_ray(ray_server: Server) -> Iterator[triton.InferenceServerClient]:
    """tritonclient, unmodified, on Ray Serve's inference port, sending the token with each call."""
    client = triton.InferenceServerClient(ray_server.inference_url.removeprefix("http://"))
    try:
        yield client
    finally:
        client.close()


def test_tritonclient_finds_the_server_and_the_model_ready(
    ray_server: Server, tritonclient_on_ray: triton.InferenceServerClient
) -> None:
    """What TorchServe 0.12 answers 404 (docs/protocols.md): a model's readiness, each version's."""
    auth = inference_auth(ray_server)
    assert tritonclient_on_ray.is_server_live(headers=auth)
    assert tritonclient_on_ray.is_server_ready(headers=auth)
    assert tritonclient_on_ray.is_model_ready(MODEL_NAME, headers=auth)
    assert all(tritonclient_on_ray.is_model_ready(MODEL_NAME, version, headers=auth) for version in SERVED_VERSIONS)
    assert not tritonclient_on_ray.is_model_ready(MODEL_NAME, "9.9", headers=auth)
    ready = requests.get(
        f"{ray_server.inference_url}/v2/models/{MODEL_NAME}/versions/1.0/ready", headers=auth, timeout=60
    )
    assert ready.json() == {"name": MODEL_NAME, "version": "1.0", "ready": True}
    extensions = tritonclient_on_ray.get_server_metadata(headers=auth)["extensions"]
    assert extensions == ["binary_tensor_data", "classification"]


def test_tritonclient_reads_the_models_signature(
    ray_server: Server, tritonclient_on_ray: triton.InferenceServerClient
) -> None:
    """The model metadata is the signature every route serves (model_signature.py), with -1 for
    the batch dimension, and names both versions."""
    metadata = tritonclient_on_ray.get_model_metadata(MODEL_NAME, headers=inference_auth(ray_server))
    assert metadata["name"] == MODEL_NAME
    assert metadata["versions"] == list(SERVED_VERSIONS)
    assert metadata["inputs"] == [{"name": IMAGE.name, "datatype": "BYTES", "shape": [-1]}]
    assert metadata["outputs"] == [{"name": PROBABILITIES.name, "datatype": "FP32", "shape": [-1, 1000]}]


@pytest.mark.parametrize("version", SERVED_VERSIONS)
def test_tritonclient_infers_on_a_named_version_as_predictions_does(
    ray_server: Server, tritonclient_on_ray: triton.InferenceServerClient, version: str
) -> None:
    """TorchServe answers /v2/models/{m}/versions/{v}/infer 501; Ray Serve serves the version named,
    the same probabilities as /predictions/{m}/{v} gives for the same image."""
    auth = inference_auth(ray_server)
    answer = tritonclient_on_ray.infer(
        MODEL_NAME, [image_input([PHOTO])], model_version=version, outputs=[requested()], headers=auth
    )
    ranked = RestClient.for_server(ray_server).predict(MODEL_NAME, PHOTO, version=version)
    probabilities = answer.as_numpy(PROBABILITIES.name)[0]
    assert [entry["index"] for entry in ranked] == list(np.argsort(-probabilities)[: len(ranked)])
    assert [entry["probability"] for entry in ranked] == pytest.approx(
        [float(probabilities[entry["index"]]) for entry in ranked], abs=1e-6
    )
