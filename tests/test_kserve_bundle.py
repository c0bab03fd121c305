"""The KServe storage bundle, laid out as KServe mounts it (/mnt/models, here a temp dir) and
started exactly as KServe's TorchServe runtime starts it: the same command, arguments and
environment, on free loopback ports. Without a cluster, this is the closest we get to one."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import tritonclient.http as triton

import oip
from answers import indices, same_answer, top5
from images import b64, photo_bytes
from scripts.endpoints import HOST, Ports, Server, properties_text, read_properties
from scripts.packaging.kserve_bundle import Pod, write_bundle
from scripts.paths import CONFIG_DIR, MODEL_NAME, SERVED_VERSIONS, archive_name
from scripts.server.lifecycle import environment, launch, stop

POD = Pod(cpus=8)  # two workers per version by the worker rule
# What the runtime (kserve-torchserve) sets for protocol v2; the bundle must not depend on it.
RUNTIME_ENVIRONMENT = {"TS_SERVICE_ENVELOPE": "kservev2", "PROTOCOL_VERSION": "v2"}


@pytest.fixture(scope="module")
def bundle(model_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    archives = {version: model_store / archive_name(version) for version in SERVED_VERSIONS}
    return write_bundle(archives, POD, tmp_path_factory.mktemp("mnt") / "models")


@pytest.fixture(scope="module")
def runtime(bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """`torchserve --start --model-store=<bundle>/model-store --ts-config=<bundle>/config/config.properties`,
    with the listeners moved to free ports (a machine has one 8085) and /mnt/models to the bundle."""
    server = Server(run_dir=tmp_path_factory.mktemp("runtime"), model_store=bundle / "model-store", ports=Ports.free())
    config = bundle / "config" / "config.properties"
    config.write_text(
        config.read_text()
        + properties_text({**server.listeners(), "metrics_config": bundle / "config" / "metrics.yaml"})
    )
    launch(server, config, {**environment(server), **RUNTIME_ENVIRONMENT})
    try:
        yield server
    finally:
        stop(server)


def describe(server: Server, version: str = "") -> list[dict[str, Any]]:
    """The management API's description, asked as KServe's wrapper asks: with no token."""
    path = f"{MODEL_NAME}/{version}" if version else MODEL_NAME
    described: list[dict[str, Any]] = requests.get(f"{server.management_url}/models/{path}", timeout=10).json()
    return described


def wait_until(ready: Callable[[], bool], server: Server, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if ready():
                return
        except (requests.ConnectionError, KeyError, IndexError):
            pass  # not listening yet, or the model not registered yet
        time.sleep(1)
    raise AssertionError(f"not ready within {timeout:g} s; see {server.log_dir}")


def wait_until_ready(server: Server) -> None:
    """The wrapper's readiness check: the default version has a READY worker."""
    wait_until(lambda: any(worker["status"] == "READY" for worker in describe(server)[0]["workers"]), server)


def test_the_bundle_is_laid_out_as_the_runtime_expects(bundle: Path) -> None:
    assert sorted(path.name for path in (bundle / "model-store").iterdir()) == [
        archive_name(v) for v in SERVED_VERSIONS
    ]
    properties = read_properties(bundle / "config" / "config.properties")
    assert properties["model_store"] == "/mnt/models/model-store"
    assert properties["metrics_config"] == "/mnt/models/config/metrics.yaml"
    assert (bundle / "config" / "metrics.yaml").read_text() == (CONFIG_DIR / "metrics.yaml").read_text()
    assert properties["disable_token_authorization"] == "true" and properties["enable_model_api"] == "false"
    assert properties.get("enable_envvars_config", "false") == "false"
    snapshot = json.loads(properties["model_snapshot"])
    versions = snapshot["models"][MODEL_NAME]
    assert {v: entry["defaultVersion"] for v, entry in versions.items()} == {"1.0": False, "2.0": True}
    assert {entry["minWorkers"] for entry in versions.values()} == {POD.plan().workers_per_version} == {2}


def test_the_kubernetes_config_serves_the_same_models_on_the_pod_address_with_management_inside(bundle: Path) -> None:
    """deploy/kubernetes/ has no KServe wrapper in front: TorchServe takes the Service's traffic."""
    kserve = read_properties(bundle / "config" / "config.properties")
    kubernetes = read_properties(bundle / "config" / "kubernetes.properties")
    assert (
        kubernetes["inference_address"] == "http://0.0.0.0:8080" and kubernetes["grpc_inference_address"] == "0.0.0.0"
    )
    assert kubernetes["management_address"].startswith("http://127.0.0.1:")
    listeners = {"inference_address", "management_address", "grpc_inference_address"}
    assert {key: value for key, value in kubernetes.items() if key not in listeners} == {
        key: value for key, value in kserve.items() if key not in listeners
    }


def test_a_canary_bundle_serves_its_new_version_as_the_default(
    model_store: Path, canary_archive: str, tmp_path: Path
) -> None:
    """KServe's canary rolls out a new storageUri: a bundle whose default is the new version."""
    archives = {"2.0": model_store / archive_name("2.0"), "2.1": model_store / canary_archive}
    canary = write_bundle(archives, POD, tmp_path / "models", default="2.1", recipes={"2.1": "2.0"})
    versions = json.loads(read_properties(canary / "config" / "config.properties")["model_snapshot"])["models"][
        MODEL_NAME
    ]
    assert {v: entry["defaultVersion"] for v, entry in versions.items()} == {"2.0": False, "2.1": True}
    assert sorted(path.name for path in (canary / "model-store").iterdir()) == [archive_name("2.0"), canary_archive]


def test_started_as_kserve_starts_it_both_versions_are_ready_with_2_0_the_default(runtime: Server) -> None:
    wait_until_ready(runtime)
    assert describe(runtime)[0]["modelVersion"] == "2.0"
    workers = ["READY"] * POD.plan().workers_per_version  # the others may still be starting: wait for them
    wait_until(
        lambda: (
            [[worker["status"] for worker in entry["workers"]] for entry in describe(runtime, "all")]
            == [workers] * len(SERVED_VERSIONS)
        ),
        runtime,
    )
    assert {entry["modelVersion"] for entry in describe(runtime, "all")} == set(SERVED_VERSIONS)


def test_v1_and_v2_predictions_answer_without_a_token_and_agree(runtime: Server) -> None:
    """The wrapper forwards KServe's v1 and v2 requests to these routes, tokenless."""
    wait_until_ready(runtime)
    image = photo_bytes((500, 400))
    v1 = requests.post(
        f"{runtime.inference_url}/v1/models/{MODEL_NAME}:predict", timeout=60, json={"instances": [b64(image)] * 2}
    )
    assert v1.status_code == 200
    first, second = v1.json()["predictions"]
    assert same_answer(first, second)
    client = triton.InferenceServerClient(f"{HOST}:{runtime.ports.inference}", network_timeout=60)
    try:
        answer = client.infer(MODEL_NAME, [oip.image_input([image])])
    finally:
        client.close()
    [row] = answer.as_numpy(oip.OUTPUT)
    assert answer.get_response()["model_version"] == "2.0"
    assert top5(row) == indices(first)
