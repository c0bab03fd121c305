"""Against the real server: bad requests under concurrency, size limits, worker death, version
switches under load, restart, and the security defaults."""

from __future__ import annotations

import ipaddress
import os
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest
import requests
import torch

from answers import same_answer
from conftest import TEST_PLAN, restore
from images import photo_bytes
from scripts import build_archives
from scripts.paths import DEFAULT_VERSION, MODEL_NAME, ROOT, SERVED_VERSIONS
from scripts.rest_api import ApiError
from scripts.serve import register_versions
from scripts.server import Server, start, stop
from scripts.soak import soak
from scripts.weights import RANDOM


def post(server: Server, body: bytes, version: str = "", timeout: float = 60) -> requests.Response:
    path = f"{MODEL_NAME}/{version}" if version else MODEL_NAME
    return requests.post(f"{server.inference_url}/predictions/{path}", data=body, timeout=timeout, headers={
        "Authorization": f"Bearer {server.client().tokens.inference}", "Content-Type": "application/octet-stream"})


def test_bad_requests_fail_alone_under_concurrency(server: Server) -> None:
    """batchSize is 8: concurrent good and bad requests share batches; only the bad ones fail."""
    good, bad = photo_bytes((400, 300)), b"not an image"
    bodies = [good, bad] * 8
    with ThreadPoolExecutor(max_workers=len(bodies)) as pool:
        answers = list(pool.map(lambda body: post(server, body), bodies))
    assert [a.status_code for a in answers] == [200, 400] * 8
    assert all(a.json()["type"] == "InvalidImage" for a in answers[1::2])
    assert all(same_answer(answer.json(), answers[0].json()) for answer in answers[2::2])


def test_a_body_over_the_size_limit_is_413(server: Server) -> None:
    answer = post(server, b"\xff" * (server.max_request_size() + 1))
    assert answer.status_code == 413


def test_every_listener_is_on_loopback(server: Server) -> None:
    frontend = psutil.Process(server.pid())
    listening = [c.laddr for c in frontend.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
    ports = server.ports
    assert {address.port for address in listening} >= {ports.inference, ports.management, ports.metrics,
                                                       ports.grpc_inference, ports.grpc_management}
    for address in listening:  # Java reports IPv4 loopback as ::ffff:127.0.0.1
        ip = ipaddress.ip_address(address.ip)
        assert (getattr(ip, "ipv4_mapped", None) or ip).is_loopback, f"listening on {address.ip}"


def test_no_token_is_written_to_the_logs(server: Server) -> None:
    post(server, photo_bytes())
    server.client().list_models()
    tokens = [server.client().tokens.inference, server.client().tokens.management]
    for log in server.log_dir.rglob("*"):
        if log.is_file():
            text = log.read_text(errors="replace")
            assert not any(token in text for token in tokens), f"a token leaked into {log}"


def test_nothing_secret_or_built_is_committed() -> None:
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert "key_file.json" not in tracked
    assert not [name for name in tracked.splitlines() if name.endswith((".mar", ".pth", ".pt"))]


def test_weights_are_loaded_without_running_pickled_code(tmp_path: Path) -> None:
    from resnet50_handler import ResNet50Handler

    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self) -> tuple:
            return (os.system, (f"touch {marker}",))

    torch.save({"conv1.weight": Payload()}, tmp_path / "weights.pth")
    handler = ResNet50Handler()
    handler.config = SimpleNamespace(categories=tuple(str(i) for i in range(1000)))
    handler.device = torch.device("cpu")
    context = SimpleNamespace(system_properties={"model_dir": str(tmp_path)},
                              manifest={"model": {"serializedFile": "weights.pth"}})
    with pytest.raises(Exception, match="Weights only load failed"):
        handler._load_model(context)
    assert not marker.exists()


def test_a_killed_worker_is_restarted_and_in_flight_requests_fail_fast(server: Server) -> None:
    [worker] = server.client().describe(MODEL_NAME, "1.0")[0]["workers"]
    image = photo_bytes((1632, 1224))  # a batch of eight takes about half a second here
    with ThreadPoolExecutor(max_workers=8) as pool:
        in_flight = [pool.submit(post, server, image, "1.0", 30) for _ in range(8)]
        time.sleep(0.15)
        killed_at = time.monotonic()
        psutil.Process(worker["pid"]).kill()
        statuses = [future.result().status_code for future in in_flight]  # raises if one hangs 30 s
    assert any(status >= 500 for status in statuses), f"the kill missed the batch: {statuses}"
    assert all(status == 200 or status >= 500 for status in statuses)

    while (restarted := server.client().describe(MODEL_NAME, "1.0")[0]["workers"])[0]["status"] != "READY" \
            or restarted[0]["pid"] == worker["pid"]:
        assert time.monotonic() - killed_at < 60, "the worker was not back within 60 s"
        time.sleep(0.2)
    print(f"worker restarted and ready {time.monotonic() - killed_at:.1f} s after the kill")
    assert [post(server, image, "1.0").status_code for _ in range(3)] == [200] * 3


def test_switching_versions_under_load_drops_no_request(server: Server, canary_archive: str) -> None:
    image, stop_at = photo_bytes((320, 240)), threading.Event()
    statuses: list[int] = []

    def keep_asking() -> None:
        while not stop_at.is_set():
            statuses.append(post(server, image).status_code)

    clients = [threading.Thread(target=keep_asking) for _ in range(4)]
    for thread in clients:
        thread.start()
    try:
        rest = server.client()
        rest.register(canary_archive, initial_workers=1)
        rest.set_default(MODEL_NAME, "2.1")
        rest.unregister(MODEL_NAME, "1.0")
        time.sleep(2)
    finally:
        stop_at.set()
        for thread in clients:
            thread.join()
        restore(server)
    assert len(statuses) > 8
    assert set(statuses) == {200}


def test_a_full_queue_is_answered_fast_not_timed_out(server: Server) -> None:
    """A version whose queue holds two jobs: a burst beyond it is refused at once, over REST
    and gRPC, and our clients say why."""
    archive = build_archives.build("9.0", RANDOM, server.model_store, recipe_version="2.0",
                                   with_compiled_forward=False, settings={"jobQueueSize": 2, "batchSize": 1})
    server.client().register(archive.name, initial_workers=1)
    clients = [server.client(), server.grpc_client()]
    image = photo_bytes((1632, 1224))

    def classify(index: int) -> tuple[ApiError | None, float]:
        started = time.monotonic()
        try:
            clients[index % 2].predict(MODEL_NAME, image, version="9.0")
            return None, time.monotonic() - started
        except ApiError as error:
            return error, time.monotonic() - started

    try:
        with ThreadPoolExecutor(max_workers=12) as pool:
            outcomes = list(pool.map(classify, range(12)))
    finally:
        server.client().unregister(MODEL_NAME, "9.0")
    refused = [(error, seconds) for error, seconds in outcomes if error is not None]
    assert refused and len(refused) < len(outcomes)
    assert all(error.status == 503 and "server busy" in error.message for error, _ in refused)
    assert max(seconds for _, seconds in refused) < 3


def test_a_short_soak_has_no_unexpected_answers_or_restarts(server: Server) -> None:
    report = soak(server, seconds=30, concurrency=8)
    print(report.summary())
    assert report.requests > 30
    assert report.unexpected == []
    assert report.worker_restarts == 0
    assert report.memory_growth_mib(0.5) < 100


def test_after_a_restart_the_same_versions_and_default_are_served(server: Server) -> None:
    stop(server)
    assert server.pid() is None
    start(server, TEST_PLAN)
    register_versions(server.client(), SERVED_VERSIONS, TEST_PLAN.workers_per_version, DEFAULT_VERSION)
    described = server.client().describe(MODEL_NAME, "all")
    assert {entry["modelVersion"] for entry in described} == set(SERVED_VERSIONS)
    assert server.client().describe(MODEL_NAME)[0]["modelVersion"] == DEFAULT_VERSION
    assert post(server, photo_bytes()).status_code == 200
