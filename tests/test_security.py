"""The security promises (README, docs/security.md), each against the real server or the repository itself."""

from __future__ import annotations

import ipaddress
import os
import shutil
import socket
import stat
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpc
import psutil
import pytest
import requests
import torch
from google.protobuf import empty_pb2

import promised
from conftest import TEST_PLAN, refused, served_versions
from images import b64, photo_bytes
from resnet50_handler import ResNet50Handler
from scripts.client.grpc_client import GrpcClient
from scripts.client.rest_api import RestClient, Tokens
from scripts.client.torchserve_grpc import inference_pb2, management_pb2, open_inference_grpc_pb2
from scripts.endpoints import Ports, Server, ServerError, read_properties
from scripts.paths import CONFIG_DIR, MODEL_NAME, ROOT, archive_name
from scripts.server.lifecycle import running_pid, start, stop

REFUSED = "Token Authorization failed"
WRONG = Tokens(inference="wrong-inference-token-1f3a", management="wrong-management-token-9c2e")


Clients = Callable[[Tokens], tuple[RestClient, GrpcClient]]


@pytest.fixture
def clients(server: Server) -> Iterator[Clients]:
    """Makes a REST and a gRPC client holding the given tokens; closes the gRPC channels after."""
    made: list[GrpcClient] = []

    def with_tokens(tokens: Tokens) -> tuple[RestClient, GrpcClient]:
        made.append(
            GrpcClient(
                f"127.0.0.1:{server.ports.grpc_inference}",
                f"127.0.0.1:{server.ports.grpc_management}",
                tokens,
                server.max_request_size(),
                model_store=server.model_store,
            )
        )
        return RestClient(server.inference_url, server.management_url, tokens), made[-1]

    yield with_tokens
    for grpc_client in made:
        grpc_client.close()


def test_the_key_file_is_readable_by_its_owner_only(server: Server) -> None:
    mode = stat.S_IMODE(server.key_file.stat().st_mode)
    assert mode & (stat.S_IRWXG | stat.S_IRWXO) == 0, f"key_file.json is {oct(mode)}"


def test_a_wrong_token_is_refused_over_rest_and_grpc(clients: Clients) -> None:
    rest, grpc_client = clients(WRONG)
    for client, status in ((rest, 400), (grpc_client, 403)):
        for error in (refused(client.predict, MODEL_NAME, photo_bytes()), refused(client.list_models)):
            assert error.status == status and REFUSED in error.message


def test_the_inference_token_does_not_open_management(server: Server, clients: Clients) -> None:
    token = RestClient.for_server(server).tokens.inference
    inference_only = Tokens(inference=token, management=token)
    for client in clients(inference_only):
        assert REFUSED in refused(client.list_models).message


def test_a_rest_request_with_no_authorization_header_is_refused(server: Server) -> None:
    """On every inference route (TorchServe's, KServe v1, the Open Inference Protocol) and management."""
    image = b64(photo_bytes())
    inference: dict[str, dict[str, Any]] = {
        f"predictions/{MODEL_NAME}": {"data": photo_bytes(), "headers": {"Content-Type": "image/jpeg"}},
        f"v1/models/{MODEL_NAME}:predict": {"json": {"instances": [image]}},
        f"v2/models/{MODEL_NAME}/infer": {
            "json": {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [image]}]}
        },
    }
    answers = [requests.post(f"{server.inference_url}/{path}", timeout=30, **sent) for path, sent in inference.items()]
    for answer in [*answers, requests.get(f"{server.management_url}/models", timeout=30)]:
        assert answer.status_code == 400 and answer.json()["type"] == "InvalidKeyException"


def test_a_grpc_call_with_no_authorization_metadata_is_refused(server: Server, clients: Clients) -> None:
    _, stub_client = clients(RestClient.for_server(server).tokens)  # its stubs, called without the metadata
    calls = [
        (
            stub_client.inference.Predictions,
            inference_pb2.PredictionsRequest(model_name=MODEL_NAME, input={"data": photo_bytes()}),
        ),
        (stub_client.inference.Ping, empty_pb2.Empty()),
        (stub_client.open_inference.ModelInfer, open_inference_grpc_pb2.ModelInferRequest(model_name=MODEL_NAME)),
        (stub_client.management.ListModels, management_pb2.ListModelsRequest(limit=10)),
    ]
    for method, request in calls:
        with pytest.raises(grpc.RpcError) as error:
            method(request, timeout=30)  # no metadata at all
        assert error.value.code() == grpc.StatusCode.PERMISSION_DENIED and REFUSED in error.value.details()


def test_no_token_right_or_wrong_is_written_to_the_logs(server: Server, clients: Clients) -> None:
    """After good requests and refused ones (the likeliest to be logged), over REST and gRPC."""
    access_log = server.log_dir / "access_log.log"
    logged_before = len(access_log.read_text().splitlines())
    for client in clients(RestClient.for_server(server).tokens):
        client.predict(MODEL_NAME, photo_bytes())
        client.list_models()
    for client in clients(WRONG):
        refused(client.predict, MODEL_NAME, photo_bytes())
        refused(client.list_models)
    new_lines = access_log.read_text().splitlines()[logged_before:]
    assert sum(" 400 " in line for line in new_lines) >= 2, "the refused REST requests should be logged"
    tokens = [*vars(RestClient.for_server(server).tokens).values(), *vars(WRONG).values()]
    for log in (path for path in server.log_dir.rglob("*") if path.is_file()):
        text = log.read_text(errors="replace")
        assert not [token for token in tokens if token in text], f"a token leaked into {log}"


def test_every_listener_is_on_loopback(server: Server) -> None:
    frontend = psutil.Process(running_pid(server))
    listening = [c.laddr for c in frontend.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
    ports = server.ports
    assert {address.port for address in listening} >= {
        ports.inference,
        ports.management,
        ports.metrics,
        ports.grpc_inference,
        ports.grpc_management,
    }
    for address in listening:  # Java reports IPv4 loopback as ::ffff:127.0.0.1
        ip = ipaddress.ip_address(address.ip)
        assert (getattr(ip, "ipv4_mapped", None) or ip).is_loopback, f"listening on {address.ip}"


def test_the_shipped_listeners_are_the_promised_loopback_ports() -> None:
    """A plain `torchserve --start` reads them from config/config.properties, and `make serve`
    writes them from scripts/endpoints.py: both must be the promised ones (the served tests move
    every port, so only this holds the shipped addresses)."""
    loopback = promised.LOOPBACK
    expected = {
        "inference_address": f"http://{loopback}:{promised.INFERENCE_PORT}",
        "management_address": f"http://{loopback}:{promised.MANAGEMENT_PORT}",
        "metrics_address": f"http://{loopback}:{promised.METRICS_PORT}",
        "grpc_inference_address": loopback,
        "grpc_management_address": loopback,
        "grpc_inference_port": str(promised.GRPC_INFERENCE_PORT),
        "grpc_management_port": str(promised.GRPC_MANAGEMENT_PORT),
    }
    shipped = read_properties(CONFIG_DIR / "config.properties")
    assert {key: shipped.get(key) for key in expected} == expected
    written_by_make_serve = {key: str(value) for key, value in Server().listeners().items()}
    assert written_by_make_serve.items() <= expected.items()


def test_the_shipped_body_limits_and_token_lifetime_are_the_promised_ones() -> None:
    shipped = read_properties(CONFIG_DIR / "config.properties")
    assert int(shipped["max_request_size"]) == promised.MAX_REQUEST_BYTES
    assert int(shipped["max_response_size"]) == promised.MAX_RESPONSE_BYTES
    assert int(shipped["token_expiration_min"]) == promised.TOKEN_EXPIRATION_MIN


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A local port that would see TorchServe connect if it fetched a registration URL."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        sock.settimeout(1.0)
        yield sock


@pytest.mark.parametrize("protocol", ["rest", "grpc"])
def test_registration_urls_are_refused_without_being_fetched(
    server: Server, clients: Clients, listener: socket.socket, protocol: str
) -> None:
    rest, grpc_client = clients(RestClient.for_server(server).tokens)
    client = grpc_client if protocol == "grpc" else rest
    port = listener.getsockname()[1]
    for url in (f"http://127.0.0.1:{port}/resnet50.mar", "https://example.com/resnet50.mar", "file:///etc/passwd"):
        error = refused(client.register, url, 1)
        assert error.status == 404 and f"Given URL {url} does not match any allowed URL(s)" in error.message
    with pytest.raises(socket.timeout):
        listener.accept()  # nothing connected: the URL was refused before any fetch
    error = refused(client.register, "../model_store/resnet50-2.0.mar", 1)
    assert error.status == 404 and "Relative path is not allowed in url" in error.message
    assert served_versions(server) == {"1.0", "2.0"}


def test_an_archive_outside_the_model_store_cannot_be_registered(
    server: Server, clients: Clients, tmp_path: Path
) -> None:
    outside = tmp_path / "resnet50-3.0.mar"
    shutil.copy(server.model_store / archive_name("2.0"), outside)
    for client in clients(RestClient.for_server(server).tokens):
        error = refused(client.register, str(outside), 1)
        assert error.status == 404 and f"Model not found at: {outside}" in error.message
    assert served_versions(server) == {"1.0", "2.0"}


BUILD_OUTPUTS = (".mar", ".pth", ".pt", ".pt2", ".so")


def test_nothing_secret_or_built_is_committed() -> None:
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert "key_file.json" not in tracked
    assert not [name for name in tracked.splitlines() if name.endswith(BUILD_OUTPUTS)]


def test_build_outputs_and_keys_are_ignored_wherever_they_land() -> None:
    outputs = [
        "run/key_file.json",
        "key_file.json",
        "model_store/resnet50-2.0.mar",
        *(f"handler/model{suffix}" for suffix in BUILD_OUTPUTS),
    ]
    checked = subprocess.run(
        ["git", "check-ignore", "--no-index", *outputs], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert set(checked.stdout.split()) == set(outputs)


def test_weights_are_loaded_without_running_pickled_code(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self) -> tuple[Callable[[str], int], tuple[str]]:
            return (os.system, (f"touch {marker}",))

    torch.save({"conv1.weight": Payload()}, tmp_path / "weights.pth")
    handler = ResNet50Handler()
    # A stand-in for the HandlerConfig initialize() reads: loading the weights uses only its categories.
    handler.config = SimpleNamespace(categories=tuple(str(i) for i in range(1000)))  # type: ignore[assignment]
    handler.device, handler.dtype = torch.device("cpu"), torch.float32
    context = SimpleNamespace(
        system_properties={"model_dir": str(tmp_path)}, manifest={"model": {"serializedFile": "weights.pth"}}
    )
    with pytest.raises(Exception, match="Weights only load failed"):
        handler._load_model(context)
    assert not marker.exists()


def test_a_start_with_token_authorization_off_is_refused_at_once(tmp_path: Path, model_store: Path) -> None:
    unsafe = Server(
        run_dir=tmp_path,
        model_store=model_store,
        ports=Ports.free(),
        properties={"disable_token_authorization": "true"},
    )
    asked = time.monotonic()
    try:
        with pytest.raises(ServerError, match="disable_token_authorization=true"):
            start(unsafe, TEST_PLAN)
    finally:
        stop(unsafe)  # should the guard ever fail, no unauthenticated server is left running
    assert time.monotonic() - asked < 5, "refused at once, not after waiting for a key file"
