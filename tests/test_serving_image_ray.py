"""The serving image as a RayService's pod runs it (deploy/ray/base/rayservice.yaml): KubeRay's
`ray start` in place of the entry point, uid 1000 on a read-only root, the head container's
environment, the bundle and the key file mounted read-only, Ray's token auth on; then the
RayService's serveConfigV2 (REST and gRPC) deployed through the dashboard, as KubeRay deploys it,
sized for this machine (one replica of each version, each with this machine's threads). Where no
container can run here, every test skips and says so."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest
import requests
import yaml

from answers import indices, same_answer, top5
from conftest import TEST_PLAN, InProcessModels, refused
from images import photo_bytes
from scripts import serve_config
from scripts.client.grpc_client import GrpcClient
from scripts.client.ray_dashboard import DASHBOARD_PROPERTY, ServeControl, cluster_token
from scripts.client.ray_versions import RayServeVersions
from scripts.client.rest_api import RestClient
from scripts.endpoints import HOST, Ports, Server, properties_text, read_properties
from scripts.harness.in_process import Request
from scripts.packaging import image
from scripts.packaging.kserve_bundle import write_bundle
from scripts.paths import DEFAULT_VERSION, MODEL_NAME, ROOT, SERVED_VERSIONS, archive_name
from test_serving_image import POD, TAG, Container, podman, why_no_containers

RAYSERVICE = ROOT / "deploy" / "ray" / "base" / "rayservice.yaml"
KEYS = "/etc/resnet50/keys"  # where the RayService mounts the key file's Secret
SERVE_PORT, GRPC_PORT, DASHBOARD_PORT, METRICS_PORT = 8000, 9000, 8265, 8082
UNCHECKED = "the serving image was not run as a RayService's pod here: Ray Serve in the image went unchecked"

pytestmark = pytest.mark.skipif(why_no_containers() is not None, reason=f"{why_no_containers()}: {UNCHECKED}")


@dataclass(frozen=True)
class RayPod:
    container: Container
    key_file: Path  # TorchServe's format, mounted at KEYS
    token: str  # the cluster's, as KubeRay gives it


def rayservice() -> dict[str, Any]:
    (service,) = yaml.safe_load_all(RAYSERVICE.read_text())
    return cast(dict[str, Any], service)


def rayservice_serve_config() -> serve_config.Config:
    """The RayService's serveConfigV2, one replica of each version with this machine's threads."""
    config: serve_config.Config = yaml.safe_load(rayservice()["spec"]["serveConfigV2"])
    for version in SERVED_VERSIONS:
        config = serve_config.with_replicas(config, version, 1, 1, target_ongoing=0)
        serve_config.version_application(config, version)["args"]["threads"] = TEST_PLAN.threads_per_worker
    return config


def head_environment() -> list[str]:
    """The RayService's head container's environment, as podman options."""
    head = rayservice()["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    return [option for item in head["env"] for option in ("--env", f"{item['name']}={item['value']}")]


@pytest.fixture(scope="module")
def ray_pod(model_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayPod]:
    """The image, built here, started as KubeRay starts a RayService's head."""
    try:
        image.build("cuda", "local", TAG)
    except image.ImageError as error:
        pytest.skip(f"the image could not be built ({error}): {UNCHECKED}")
    archives = {version: model_store / archive_name(version) for version in SERVED_VERSIONS}
    bundle = write_bundle(archives, POD, tmp_path_factory.mktemp("mnt") / "models")
    keys = tmp_path_factory.mktemp("keys")
    key_file = keys / "key_file.json"
    key_file.write_text(json.dumps({kind: {"key": secrets.token_urlsafe(24)} for kind in ("inference", "management")}))
    for path in (bundle, *bundle.rglob("*"), keys, key_file):
        path.chmod(0o755 if path.is_dir() else 0o644)  # readable by uid 1000, as a volume is
    name, token = f"resnet50-ray-test-{bundle.parent.name}", secrets.token_hex(32)
    started = podman(
        *("run", "--detach", "--replace", "--name", name, "--user", "1000:1000", "--read-only"),
        *("--volume", f"{bundle}:/mnt/models:ro", "--volume", f"{keys}:{KEYS}:ro"),
        *head_environment(),
        *("--env", "RAY_AUTH_MODE=token", "--env", f"RAY_AUTH_TOKEN={token}"),
        *(
            option
            for port in (SERVE_PORT, GRPC_PORT, DASHBOARD_PORT, METRICS_PORT)
            for option in ("--publish", f"{HOST}::{port}")
        ),
        *("--entrypoint", "ray", TAG, "start", "--head", "--block", "--dashboard-host=0.0.0.0"),
        *(f"--metrics-export-port={METRICS_PORT}", f"--num-cpus={POD.cpus}", "--disable-usage-stats"),
    )
    assert started.returncode == 0, started.stderr
    try:
        yield RayPod(Container(name, bundle), key_file, token)
    finally:
        podman("rm", "--force", name)


@pytest.fixture(scope="module")
def server(ray_pod: RayPod, tmp_path_factory: pytest.TempPathFactory) -> Server:
    """The pod as our clients see an engine, once the RayService's Serve config runs on it."""
    pod = ray_pod.container
    unused = Ports.free()
    ports = Ports(
        inference=pod.published(SERVE_PORT),
        management=unused.management,
        metrics=pod.published(METRICS_PORT),
        grpc_inference=pod.published(GRPC_PORT),
        grpc_management=unused.grpc_management,
    )
    run_dir = tmp_path_factory.mktemp("ray-pod-client")
    instance = Server(run_dir=run_dir, model_store=pod.bundle / "model-store", ports=ports)
    dashboard = f"http://{HOST}:{pod.published(DASHBOARD_PORT)}"
    listed = {
        "engine": "ray",
        **instance.listeners(),
        DASHBOARD_PROPERTY: dashboard,
        "model_store": instance.model_store,
    }
    (run_dir / "config.properties").write_text(properties_text(listed))
    (run_dir / "key_file.json").write_text(ray_pod.key_file.read_text())
    cluster_token(instance).write_text(ray_pod.token)
    wait_for_the_dashboard(dashboard, pod)
    ServeControl(instance).apply(rayservice_serve_config(), timeout=600)
    return instance


def wait_for_the_dashboard(address: str, pod: Container, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            requests.get(f"{address}/api/version", timeout=5)
            return
        except requests.ConnectionError:
            assert time.monotonic() < deadline, (
                f"Ray's dashboard did not answer in {timeout:g} s:\n{pod.logs()[-3000:]}"
            )
            time.sleep(2)


def test_the_rayservice_config_serves_each_version_as_the_handler_answers_in_process(
    server: Server, in_process_models: InProcessModels
) -> None:
    photo = photo_bytes()
    client = RestClient.for_server(server)
    for version in SERVED_VERSIONS:
        [expected] = in_process_models[version].infer([Request.raw(photo)])
        assert same_answer(client.predict(MODEL_NAME, photo, version), expected.body), version
    assert same_answer(client.predict(MODEL_NAME, photo), client.predict(MODEL_NAME, photo, DEFAULT_VERSION))


def test_grpc_on_the_pod_serves_each_version_as_the_handler_answers_in_process(
    server: Server, in_process_models: InProcessModels
) -> None:
    """The RayService's grpc_options, behind its Service's 7070: TorchServe's gRPC inference
    service and the Open Inference Protocol's, each version by name."""
    photo = photo_bytes()
    client = GrpcClient.for_server(server)
    try:
        for version in SERVED_VERSIONS:
            [expected] = in_process_models[version].infer([Request.raw(photo)])
            assert same_answer(client.predict(MODEL_NAME, photo, version), expected.body), version
            [probabilities] = client.infer(MODEL_NAME, [photo], version)
            assert top5(probabilities) == indices(expected.body), version
    finally:
        client.close()


def test_it_runs_as_uid_1000_on_a_read_only_root(server: Server, ray_pod: RayPod) -> None:
    pod = ray_pod.container
    assert pod.run("id", "-u").stdout.strip() == "1000"
    for path in ("/opt/venv/probe", "/opt/resnet50/app/probe", "/mnt/models/probe", f"{KEYS}/probe"):
        assert "Read-only file system" in pod.run("touch", path).stderr, path


def test_a_request_without_the_key_files_token_is_refused(server: Server) -> None:
    """The frontend checks the mounted key file's inference key, as on one machine."""
    answer = requests.post(f"{server.inference_url}/predictions/{MODEL_NAME}", data=photo_bytes(), timeout=60)
    assert answer.status_code == 400 and answer.json()["type"] == "InvalidKeyException"


def test_the_dashboard_takes_no_serve_config_without_the_clusters_token(server: Server) -> None:
    """Ray's dashboard deploys configs and jobs, code to run: KubeRay's token or nothing."""
    dashboard = read_properties(server.config_file)[DASHBOARD_PROPERTY]
    assert requests.put(f"{dashboard}/api/serve/applications/", json={}, timeout=10).status_code == 401


def test_a_new_default_is_a_serve_config_update_on_the_pod(server: Server) -> None:
    """The version commands as on one machine: here, what an edit of serveConfigV2 does."""
    versions, photo = RayServeVersions.for_server(server), photo_bytes()
    client = RestClient.for_server(server)
    try:
        versions.set_default(MODEL_NAME, "1.0")
        assert same_answer(client.predict(MODEL_NAME, photo), client.predict(MODEL_NAME, photo, "1.0"))
        assert refused(versions.unregister, MODEL_NAME, "1.0").status == 403
    finally:
        versions.set_default(MODEL_NAME, DEFAULT_VERSION)
