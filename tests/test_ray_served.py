"""The served suites (protocols with real clients, bad input, explanations, metrics) against the
Ray Serve engine, unchanged: they are imported below and run on `ray_server`. Where the engine
differs on purpose, a test of the same name below replaces the suite's, and says how (mypy's
no-redef is that replacement)."""

from __future__ import annotations

import pytest
import requests

from bad_requests import JPEG
from conftest import post_inference
from scripts.client.grpc_client import GrpcClient
from scripts.client.prometheus_scrape import increase
from scripts.client.torchserve_grpc import open_inference_grpc_pb2
from scripts.endpoints import Server
from scripts.paths import MODEL_NAME
from test_bad_input_served import *  # noqa: F403
from test_bad_input_served import CURL_DATA_DEFAULT, error_of
from test_explanations_served import *  # noqa: F403
from test_metrics_served import *  # noqa: F403
from test_metrics_served import Counted
from test_protocols_served import *  # noqa: F403


@pytest.fixture(scope="module")
def server(ray_server: Server) -> Server:
    return ray_server


def test_a_photo_sent_as_curls_default_form_is_refused_by_torchserve_before_our_handler(server: Server) -> None:  # type: ignore[no-redef]
    """Better on purpose: TorchServe answers a photo sent as curl's default form (bytes that are not
    URL encoding) with its decoder's 500. The engine's edge reads the form leniently, so the
    handler refuses it with the 400 that says which Content-Type to send."""
    answer = post_inference(server, data=JPEG, headers={"Content-Type": CURL_DATA_DEFAULT})
    assert error_of(answer) == (400, "UnsupportedContentType")
    assert "Content-Type: image/jpeg" in answer.json()["message"]


def test_what_torchserve_does_not_route_on_v2(server: Server, auth: dict[str, str]) -> None:  # type: ignore[no-redef]
    """Better on purpose: what TorchServe 0.12 leaves out of the Open Inference Protocol is served
    (docs/engines.md): model metadata and readiness, versioned paths, gRPC ServerMetadata."""

    def get(path: str) -> requests.Response:
        return requests.get(f"{server.inference_url}/{path}", headers=auth, timeout=30)

    assert get(f"v2/models/{MODEL_NAME}").json()["name"] == MODEL_NAME
    for path, version in ((f"v2/models/{MODEL_NAME}", "2.0"), (f"v2/models/{MODEL_NAME}/versions/1.0", "1.0")):
        assert get(f"{path}/ready").json() == {"name": MODEL_NAME, "version": version, "ready": True}
    assert get("v2/health/ready").json() == {"ready": True}
    versioned = post_inference(server, f"v2/models/{MODEL_NAME}/versions/1.0/infer", json={"inputs": []})
    assert versioned.status_code == 400, "a versioned path reaches the version's handler, which wants an image"
    client = GrpcClient.for_server(server)
    try:
        metadata = client.open_inference.ServerMetadata(
            open_inference_grpc_pb2.ServerMetadataRequest(),
            timeout=30,
            metadata=(("authorization", f"Bearer {client.tokens.inference}"),),
        )
    finally:
        client.close()
    assert metadata.name == "Ray Serve"


def test_the_handler_counts_open_inference_grpc_which_the_frontend_does_not(counted: Counted) -> None:  # type: ignore[no-redef]
    """Better on purpose: Ray Serve's own counters, on the same page, miss no transport. Its HTTP
    proxy counts every POST, its gRPC proxy every call by method (TorchServe 0.12's request
    counter misses OIP gRPC altogether)."""
    sent, before, after = counted
    over = {transport: sum(n for key, n in sent.items() if key[2] == transport) for transport in ("http", "grpc")}
    assert increase(before, after, "ray_serve_num_http_requests_total", method="POST") == over["http"]
    assert increase(before, after, "ray_serve_num_grpc_requests_total") == over["grpc"]
    oip_grpc = "/org.pytorch.serve.grpc.openinference.GRPCInferenceService/ModelInfer"
    assert increase(before, after, "ray_serve_num_grpc_requests_total", method=oip_grpc) == sum(
        n for key, n in sent.items() if key[1:3] == ("open_inference", "grpc")
    )
