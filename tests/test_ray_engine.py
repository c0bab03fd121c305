"""The Ray Serve engine (scripts/ray_serve/, docs/engines.md) serves the same archives with the
same handler: both versions, 2.0 the default; on every inference route the same bytes,
status and content type as TorchServe for the same request; TorchServe's token and request-size
limit; the Open Inference Protocol routes TorchServe lacks, read by an unmodified tritonclient;
TorchServe's gRPC calls answered alike, and the protocol's standard gRPC service for an
unmodified tritonclient.grpc; and stopping it leaves no process of it behind."""

from __future__ import annotations

import base64
import json
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

import grpc
import numpy as np
import psutil
import pytest
import requests
import tritonclient.http as triton
from google.protobuf import empty_pb2
from google.protobuf.message import Message
from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc

import promised
from conftest import inference_auth, post_inference
from images import encode, noise_image, photo_bytes
from model_signature import IMAGE, PROBABILITIES
from oip import image_input, requested
from scripts.client.grpc_client import GrpcClient
from scripts.client.ray_dashboard import DASHBOARD_PROPERTY, ServeControl, cluster_token
from scripts.client.rest_api import RestClient
from scripts.client.torchserve_grpc import inference_pb2, open_inference_grpc_pb2 as torchserve_oip
from scripts.endpoints import HOST, Server, read_properties
from scripts.paths import DEFAULT_VERSION, MODEL_NAME, SERVED_VERSIONS
from scripts.ray_serve import lifecycle as ray_engine

LOOPBACK = {"127.0.0.1", "::ffff:127.0.0.1"}
PHOTO, NOISE = photo_bytes((500, 400)), encode(noise_image((320, 240)), "PNG")


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
    ports = {ray_server.ports.inference, ray_server.ports.grpc_inference, ray_server.ports.metrics}
    ports.add(urlsplit(dashboard(ray_server)).port or 0)
    assert ports <= {port for _, _, port in listening}
    assert {entry for entry in listening if entry[1] not in LOOPBACK} == set()
    # TorchServe's management ports: versions change by Serve config updates instead.
    assert {ray_server.ports.management, ray_server.ports.grpc_management}.isdisjoint(port for *_, port in listening)


def dashboard(ray_server: Server) -> str:
    return read_properties(ray_server.config_file)[DASHBOARD_PROPERTY]


@pytest.mark.parametrize(("token", "status"), [(None, 401), ("a-token-of-another-ray", 403)])
def test_rays_dashboard_takes_no_call_without_the_clusters_token(
    ray_server: Server, token: str | None, status: int
) -> None:
    """The dashboard takes Serve configs and jobs, code to run: only with the run's own token,
    which the version commands send."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    for path in ("api/serve/applications/", "api/jobs/"):
        assert requests.get(f"{dashboard(ray_server)}/{path}", headers=headers, timeout=10).status_code == status
    assert ServeControl(ray_server).details()["applications"].keys() == {MODEL_NAME, "resnet50-1.0", "resnet50-2.0"}


@pytest.mark.parametrize("token", [None, "a-token-of-another-ray"])
def test_rays_gcs_takes_no_call_without_the_clusters_token(ray_server: Server, token: str | None) -> None:
    """The GCS, where a driver submits work: the run's token, or UNAUTHENTICATED."""
    (port,) = {
        connection.laddr.port
        for process in ray_engine.members(ray_server)
        if process.name() == "gcs_server"
        for connection in process.net_connections(kind="inet")
        if connection.status == psutil.CONN_LISTEN
    }
    with grpc.insecure_channel(f"{HOST}:{port}") as channel:
        nodes = gcs_service_pb2_grpc.NodeInfoGcsServiceStub(channel).GetAllNodeInfo
        request = gcs_service_pb2.GetAllNodeInfoRequest()
        own = (("authorization", f"Bearer {cluster_token(ray_server).read_text().strip()}"),)
        assert len(nodes(request, metadata=own, timeout=30).node_info_list) == 1
        with pytest.raises(grpc.RpcError) as refused:
            nodes(request, metadata=(("authorization", f"Bearer {token}"),) if token else (), timeout=30)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_the_run_folders_keys_are_its_owners_alone(ray_server: Server) -> None:
    """The clients' tokens (TorchServe's key_file.json) and the cluster's, mode 600."""
    for path in (ray_server.key_file, cluster_token(ray_server)):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_the_run_folder_names_its_engine(server: Server, ray_server: Server) -> None:
    """Where the command-line client reads which engine it talks to (scripts/client/cli.py)."""
    assert (server.engine, ray_server.engine) == ("torchserve", "ray")


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
    unknown = requests.get(
        f"{ray_server.inference_url}/v2/models/{MODEL_NAME}/versions/9.9/ready", headers=auth, timeout=60
    )
    assert (unknown.status_code, unknown.json()["type"]) == (404, "ModelVersionNotFoundException")
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


TORCHSERVE_INFERENCE = "/org.pytorch.serve.grpc.inference.InferenceAPIsService"
TORCHSERVE_OIP = "/org.pytorch.serve.grpc.openinference.GRPCInferenceService"
NOT_AN_IMAGE = b"%PDF-1.4 not a photo"


def predictions(image: bytes, version: str = "", model: str = MODEL_NAME) -> tuple[str, Message]:
    """TorchServe's Predictions call, as our gRPC client makes it."""
    call = inference_pb2.PredictionsRequest(model_name=model, model_version=version, input={"data": image})
    return f"{TORCHSERVE_INFERENCE}/Predictions", call


def model_infer(*images: bytes, version: str = "", model: str = MODEL_NAME) -> tuple[str, Message]:
    """ModelInfer on TorchServe's copy of the Open Inference Protocol's service, the images in bytes_contents."""
    tensor = torchserve_oip.ModelInferRequest.InferInputTensor(
        name=IMAGE.name,
        datatype=IMAGE.datatype,
        shape=[len(images)],
        contents=torchserve_oip.InferTensorContents(bytes_contents=images),
    )
    call = torchserve_oip.ModelInferRequest(model_name=model, model_version=version, id="7", inputs=[tensor])
    return f"{TORCHSERVE_OIP}/ModelInfer", call


GRPC_CALLS: dict[str, tuple[str, Message]] = {
    "Ping": (f"{TORCHSERVE_INFERENCE}/Ping", empty_pb2.Empty()),
    "Predictions": predictions(PHOTO),
    "Predictions on 1.0": predictions(NOISE, version="1.0"),
    "Predictions of a bad image (refused in the body, the call OK)": predictions(NOT_AN_IMAGE),
    "Predictions on an unknown version": predictions(PHOTO, version="9.9"),
    "Predictions of an unknown model": predictions(PHOTO, model="densenet"),
    "Predictions without a model name": predictions(PHOTO, model=""),
    "ModelInfer": model_infer(PHOTO, NOISE),
    "ModelInfer on 1.0": model_infer(NOISE, version="1.0"),
    "ModelInfer of a bad image (an error output)": model_infer(PHOTO, NOT_AN_IMAGE),
    "ModelInfer on an unknown version": model_infer(PHOTO, version="9.9"),
    "ModelInfer without a model name": model_infer(PHOTO, model=""),
    "ModelReady on 1.0": (
        f"{TORCHSERVE_OIP}/ModelReady",
        torchserve_oip.ModelReadyRequest(name=MODEL_NAME, version="1.0"),
    ),
    "ModelReady on an unknown version": (
        f"{TORCHSERVE_OIP}/ModelReady",
        torchserve_oip.ModelReadyRequest(name=MODEL_NAME, version="9.9"),
    ),
    "ServerLive": (f"{TORCHSERVE_OIP}/ServerLive", torchserve_oip.ServerLiveRequest()),
    "ServerReady": (f"{TORCHSERVE_OIP}/ServerReady", torchserve_oip.ServerReadyRequest()),
}


def grpc_call(server: Server, method: str, call: Message, token: str | None = "") -> tuple[grpc.StatusCode, str, bytes]:
    """One call on the server's gRPC inference port, its reply left as bytes: (status, details,
    reply). `token`: the Authorization value, "" for the inference token, None for none."""
    authorization = token if token != "" else f"Bearer {RestClient.for_server(server).tokens.inference}"
    metadata = [] if authorization is None else [("authorization", authorization)]
    with grpc.insecure_channel(
        f"{HOST}:{server.ports.grpc_inference}", [("grpc.max_send_message_length", -1)]
    ) as channel:
        method_call = channel.unary_unary(method, request_serializer=type(call).SerializeToString)
        try:
            reply = method_call(call, metadata=metadata, timeout=120)
        except grpc.RpcError as error:
            return error.code(), error.details() or "", b""
    return grpc.StatusCode.OK, "", reply


@pytest.mark.parametrize("name", GRPC_CALLS)
def test_ray_serve_answers_grpc_calls_as_torchserve_does(server: Server, ray_server: Server, name: str) -> None:
    """TorchServe's gRPC inference API and its copy of the Open Inference Protocol's service: the
    same status, details and reply bytes for the same call."""
    method, call = GRPC_CALLS[name]
    torchserve, ray = (grpc_call(s, method, call) for s in (server, ray_server))
    assert ray == torchserve


@pytest.mark.parametrize("token", [None, "Bearer not-the-key", "bearer {key}"])
def test_a_grpc_call_without_the_inference_token_is_refused_alike(
    server: Server, ray_server: Server, token: str | None
) -> None:
    """TorchServe's interceptor answers PERMISSION_DENIED before any method runs."""
    method, call = GRPC_CALLS["Predictions"]
    answers = []
    for s in (server, ray_server):
        authorization = None if token is None else token.format(key=RestClient.for_server(s).tokens.inference)
        answers.append(grpc_call(s, method, call, authorization))
    assert answers[0][0] == grpc.StatusCode.PERMISSION_DENIED
    assert answers[1] == answers[0]


def predictions_of_size(size: int) -> tuple[str, Message]:
    """A Predictions call whose message is exactly `size` bytes (its image: bytes that are not one)."""
    method, call = predictions(b"")
    overhead = call.ByteSize()
    data = b"\xff" * (size - overhead)
    while (call := predictions(data)[1]).ByteSize() > size:  # the lengths' varints grow with the data
        data = data[:-1]
    assert call.ByteSize() == size, "no image length gives a message of exactly that size"
    return method, call


def test_a_grpc_message_of_the_size_limit_is_taken_and_one_byte_over_refused(
    server: Server, ray_server: Server
) -> None:
    """Both take messages up to max_request_size (the promised 10 MiB); gRPC refuses a larger one
    before any method runs: Ray Serve's with gRPC's RESOURCE_EXHAUSTED, TorchServe's grpc-java by
    cancelling the call."""
    at_limit, over_limit = (
        predictions_of_size(size) for size in (promised.MAX_REQUEST_BYTES, promised.MAX_REQUEST_BYTES + 1)
    )
    torchserve, ray = ([grpc_call(s, *call)[0] for call in (at_limit, over_limit)] for s in (server, ray_server))
    assert torchserve == [grpc.StatusCode.OK, grpc.StatusCode.CANCELLED]
    assert ray == [grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED]


@pytest.fixture(scope="module")
def tritonclient_grpc_session(ray_server: Server, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """What an unmodified tritonclient.grpc sees on Ray Serve's gRPC port (tritonclient_grpc_session.py,
    in a process of its own): the standard service, which TorchServe serves only under its own package."""
    images = tmp_path_factory.mktemp("tritonclient-grpc")
    files = []
    for name, image in (("photo.jpg", PHOTO), ("noise.png", NOISE)):
        (images / name).write_bytes(image)
        files.append(str(images / name))
    done = subprocess.run(
        [
            sys.executable,
            str(Path(__file__).with_name("tritonclient_grpc_session.py")),
            f"{HOST}:{ray_server.ports.grpc_inference}",
            RestClient.for_server(ray_server).tokens.inference,
            MODEL_NAME,
            ",".join(SERVED_VERSIONS),
            *files,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return cast(dict[str, Any], json.loads(done.stdout))


def test_tritonclient_grpc_finds_the_server_and_each_version_ready(tritonclient_grpc_session: dict[str, Any]) -> None:
    seen = tritonclient_grpc_session
    assert seen["live"] and seen["ready"]
    assert seen["versions_ready"] == dict.fromkeys(["", *SERVED_VERSIONS], True)
    assert seen["unknown_version"]["status"] == "StatusCode.NOT_FOUND"
    assert "Model version: 9.9 does not exist for model: resnet50" in seen["unknown_version"]["message"]
    assert seen["without_token"]["status"] == "StatusCode.PERMISSION_DENIED"
    assert seen["metadata"] == {
        "name": MODEL_NAME,
        "versions": list(SERVED_VERSIONS),
        "inputs": [[IMAGE.name, "BYTES", [-1]]],
        "outputs": [[PROBABILITIES.name, "FP32", [-1, 1000]]],
    }
    assert seen["extensions"] == ["binary_tensor_data", "classification"]


def test_tritonclient_grpc_gets_a_refusal_as_the_calls_status(tritonclient_grpc_session: dict[str, Any]) -> None:
    """As Triton refuses a call, not as TorchServe's package answers one (an OK reply with an
    `error` output): the handler's kind and message, its 400 as INVALID_ARGUMENT."""
    refused = tritonclient_grpc_session["not_an_image"]
    assert refused["status"] == "StatusCode.INVALID_ARGUMENT"
    assert refused["message"].startswith("InvalidImage: ")
    both = tritonclient_grpc_session["raw_and_contents"]
    assert both["status"] == "StatusCode.INVALID_ARGUMENT"
    assert "none in contents" in both["message"]


def test_tritonclient_grpc_asks_for_the_top_classes_by_the_classification_extension(
    tritonclient_grpc_session: dict[str, Any],
) -> None:
    """class_count=3: each image's three best classes as "probability:index:label", best first."""
    for ranked, probabilities in zip(
        tritonclient_grpc_session["top3"],
        tritonclient_grpc_session["answers"][DEFAULT_VERSION]["probabilities"],
        strict=True,
    ):
        assert [int(entry.split(":")[1]) for entry in ranked] == list(np.argsort(probabilities)[::-1][:3])


def test_torchserves_open_inference_package_also_gets_the_metadata_and_no_streaming_call(ray_server: Server) -> None:
    """Where TorchServe answers ServerMetadata UNIMPLEMENTED and never completes ModelMetadata; its
    streaming Predictions are not served here."""
    code, _, reply = grpc_call(ray_server, f"{TORCHSERVE_OIP}/ServerMetadata", torchserve_oip.ServerMetadataRequest())
    assert (code, torchserve_oip.ServerMetadataResponse.FromString(reply).name) == (grpc.StatusCode.OK, "Ray Serve")
    code, _, reply = grpc_call(
        ray_server, f"{TORCHSERVE_OIP}/ModelMetadata", torchserve_oip.ModelMetadataRequest(name=MODEL_NAME)
    )
    metadata = torchserve_oip.ModelMetadataResponse.FromString(reply)
    assert (code, list(metadata.versions), metadata.inputs[0].datatype) == (
        grpc.StatusCode.OK,
        list(SERVED_VERSIONS),
        "BYTES",
    )
    method, call = predictions(PHOTO)
    assert grpc_call(ray_server, method.replace("/Predictions", "/StreamPredictions"), call)[0] == (
        grpc.StatusCode.UNIMPLEMENTED
    )


@pytest.mark.parametrize("version", SERVED_VERSIONS)
def test_tritonclient_grpc_infers_as_torchserves_open_inference_grpc_does(
    server: Server, tritonclient_grpc_session: dict[str, Any], version: str
) -> None:
    """tritonclient.grpc sends the images as raw bytes and reads the answer as raw bytes (which
    TorchServe's service neither reads nor writes): the same probabilities as TorchServe's
    ModelInfer gives for the same images."""
    answer = tritonclient_grpc_session["answers"][version]
    assert (answer["model_version"], answer["id"]) == (version, "9")
    assert answer["probabilities"] == GrpcClient.for_server(server).infer(MODEL_NAME, [PHOTO, NOISE], version=version)


def test_a_killed_replica_is_replaced_and_its_requests_get_torchserves_dead_worker_answer(ray_server: Server) -> None:
    """As TorchServe restarts a killed worker (test_faults.py), Ray Serve's controller replaces a
    killed replica. The requests it held fail at once as TorchServe fails a dead worker's: over
    REST 500 InternalServerException "Worker died.", over gRPC INTERNAL with the exception's name
    on its own line (WorkerThread, RestJob and GRPCJob, v0.12.0). Then the version answers again;
    how long that took is printed (docs/engines.md records it)."""
    [replica] = ray_engine.replicas(ray_server, "1.0")
    image = photo_bytes((1632, 1224))  # a batch of eight takes about half a second here
    grpc_predictions = inference_pb2.PredictionsRequest(
        model_name=MODEL_NAME, model_version="1.0", input={"data": image}
    )

    def rest() -> tuple[int, object]:
        path = f"predictions/{MODEL_NAME}/1.0"
        answer = post_inference(ray_server, path, {"Content-Type": "image/jpeg"}, data=image)
        return answer.status_code, None if answer.status_code == 200 else tuple(sorted(answer.json().items()))

    def over_grpc() -> tuple[grpc.StatusCode, str]:
        code, details, _ = grpc_call(ray_server, f"{TORCHSERVE_INFERENCE}/Predictions", grpc_predictions)
        return code, details

    def cpu_seconds() -> float:
        times = replica.cpu_times()
        return float(times.user + times.system)

    idle = cpu_seconds()
    with ThreadPoolExecutor(max_workers=8) as pool:
        in_flight = [pool.submit(rest) for _ in range(4)] + [pool.submit(over_grpc) for _ in range(4)]
        deadline = time.monotonic() + 60
        while cpu_seconds() - idle < 0.2:  # the replica is at work on them, however slow the machine
            assert time.monotonic() < deadline, "the replica did not start on the requests within 60 s"
            time.sleep(0.02)
        killed_at = time.monotonic()
        replica.kill()
        outcomes = [future.result() for future in in_flight]  # raises if one hangs (60 s, 120 s)
    failed_at = time.monotonic()
    died = {
        (500, tuple(sorted({"code": 500, "type": "InternalServerException", "message": "Worker died."}.items()))),
        (grpc.StatusCode.INTERNAL, "Worker died.\norg.pytorch.serve.http.InternalServerException"),
    }
    assert set(outcomes) - {(200, None), (grpc.StatusCode.OK, "")} <= died, outcomes
    assert set(outcomes) & died, f"the kill missed the batch: {outcomes}"
    assert rest() == (200, None)  # Serve holds it until a new replica has loaded the archive
    print(
        f"{sum(outcome in died for outcome in outcomes)} of 8 in flight failed as a dead worker's within "
        f"{failed_at - killed_at:.1f} s; the next request answered {time.monotonic() - killed_at:.1f} s after the kill"
    )
    assert [process.pid for process in ray_engine.replicas(ray_server, "1.0")] != [replica.pid]
