"""The storage bundle, laid out as KServe mounts it (/mnt/models, here a temp dir) and served by
the serving image's entry point (scripts/server/container_entry.py) as the image runs it, here
as a plain process on free loopback ports: its readiness check, both versions, v1 and v2
answers without a token, and its stop on SIGTERM. tests/test_serving_image.py runs the same
entry point inside the built image."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import astuple, dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest
import requests
import tritonclient.http as triton

import oip
import promised
from answers import indices, same_answer, top5
from images import b64, photo_bytes
from scripts.endpoints import HOST, Ports, Server, properties_text, read_properties
from scripts.packaging.kserve_bundle import Pod, write_bundle
from scripts.paths import CONFIG_DIR, MODEL_NAME, ROOT, SERVED_VERSIONS, archive_name
from scripts.server import container_entry
from scripts.server.lifecycle import environment

# The addresses the image's users are promised (docs/image.md, docs/deployment.md): inference,
# gRPC and metrics on the pod's address, management on its loopback.
LISTENERS = {
    "inference_address": f"http://{promised.POD_HOST}:{promised.INFERENCE_PORT}",
    "grpc_inference_address": promised.POD_HOST,
    "grpc_inference_port": str(promised.GRPC_INFERENCE_PORT),
    "metrics_address": f"http://{promised.POD_HOST}:{promised.METRICS_PORT}",
    "management_address": f"http://{promised.LOOPBACK}:{promised.MANAGEMENT_PORT}",
    "grpc_management_address": promised.LOOPBACK,
    "grpc_management_port": str(promised.GRPC_MANAGEMENT_PORT),
}
POD = Pod(cpus=8)  # two workers per version by the worker rule
DRAIN_S = 10  # long enough for one prediction on a busy machine
ENTRY = ROOT / "scripts" / "server" / "container_entry.py"
PHOTO = photo_bytes((500, 400))


@pytest.fixture(scope="module")
def bundle(model_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    archives = {version: model_store / archive_name(version) for version in SERVED_VERSIONS}
    return write_bundle(archives, POD, tmp_path_factory.mktemp("mnt") / "models")


def entry(*arguments: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """container_entry.py with these arguments, to its end."""
    command = [sys.executable, str(ENTRY), *arguments]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=30, check=False)


@dataclass(frozen=True)
class EntryPoint:
    """The entry point serving a bundle, and the server it started."""

    process: subprocess.Popen[bytes]
    server: Server
    environment: dict[str, str]

    def ready(self) -> subprocess.CompletedProcess[str]:
        """The image's readiness probe."""
        return entry("ready", env=self.environment)


def start(bundle: Path, run_dir: Path, ports: Ports, drain: float = 0) -> EntryPoint:
    """`container_entry.py` serving the bundle's archives with its config, the listeners moved to
    `ports` on loopback (a machine has one 8080); everything else as the bundle says."""
    served = run_dir / "mnt" / "models"
    (served / "config").mkdir(parents=True)
    (served / "model-store").symlink_to(bundle / "model-store")
    server = Server(run_dir=run_dir, model_store=served / "model-store", ports=ports)
    (served / "config" / "config.properties").write_text(
        (bundle / "config" / "config.properties").read_text()
        + properties_text({**server.listeners(), "metrics_config": bundle / "config" / "metrics.yaml"})
    )
    for folder in (server.run_dir / "tmp", server.log_dir):
        folder.mkdir(parents=True)
    env = {**environment(server), "MODEL_BUNDLE": str(served), "DRAIN_SECONDS": str(drain)}
    with open(server.log_dir / "console.log", "wb") as console:
        process = subprocess.Popen(
            [sys.executable, str(ENTRY)], env=env, cwd=server.run_dir, stdout=console, stderr=subprocess.STDOUT
        )
    return EntryPoint(process, server, env)


@pytest.fixture(scope="module")
def pod(bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EntryPoint]:
    started = start(bundle, tmp_path_factory.mktemp("pod"), Ports.free(), drain=DRAIN_S)
    process = started.process
    try:
        yield started
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=60)


def describe(server: Server, version: str = "") -> list[dict[str, Any]]:
    """The management API's description, asked as KServe's wrapper asks: with no token."""
    path = f"{MODEL_NAME}/{version}" if version else MODEL_NAME
    described: list[dict[str, Any]] = requests.get(f"{server.management_url}/models/{path}", timeout=10).json()
    return described


def test_the_bundle_is_laid_out_as_the_image_expects(bundle: Path) -> None:
    """Inference, gRPC and metrics on the pod's address, management on its loopback only (the
    ports the image declares and the manifests name); no token; no registration, from no URL;
    the request and response limits of a local TorchServe."""
    assert sorted(path.name for path in (bundle / "model-store").iterdir()) == [
        archive_name(v) for v in SERVED_VERSIONS
    ]
    properties = read_properties(bundle / "config" / "config.properties")
    assert {key: properties[key] for key in LISTENERS} == LISTENERS
    assert properties["model_store"] == "/mnt/models/model-store"
    assert properties["metrics_config"] == "/mnt/models/config/metrics.yaml"
    assert (bundle / "config" / "metrics.yaml").read_text() == (CONFIG_DIR / "metrics.yaml").read_text()
    assert properties["disable_token_authorization"] == "true" and properties["enable_model_api"] == "false"
    assert properties["allowed_urls"] == promised.ALLOWED_URLS
    assert (properties["max_request_size"], properties["max_response_size"]) == (
        str(promised.MAX_REQUEST_BYTES),
        str(promised.MAX_RESPONSE_BYTES),
    )
    assert properties.get("enable_envvars_config", "false") == "false"
    snapshot = json.loads(properties["model_snapshot"])
    versions = snapshot["models"][MODEL_NAME]
    assert {v: entry["defaultVersion"] for v, entry in versions.items()} == {"1.0": False, "2.0": True}
    assert {entry["minWorkers"] for entry in versions.values()} == {POD.plan().workers_per_version} == {2}


def test_a_bundle_rewritten_in_place_holds_only_the_versions_asked_for(tmp_path: Path) -> None:
    """A bundle rewritten for a rollback must not keep the archive it rolls back from: the pod
    would serve nothing else from it, but the upload would carry it, and `ls` would mislead."""
    archives = {version: tmp_path / f"{version}.mar" for version in ("2.0", "2.1")}
    for archive in archives.values():
        archive.write_bytes(b"an archive")
    out = tmp_path / "bundle"
    write_bundle(archives, POD, out, default="2.1", recipes={"2.1": "2.0"})
    write_bundle({"2.0": archives["2.0"]}, POD, out)
    assert sorted(path.name for path in (out / "model-store").iterdir()) == [archive_name("2.0")]


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


def wait_until_ready(pod: EntryPoint, timeout: float = 300.0) -> None:
    """Until the image's readiness probe passes (bounded for a busy machine)."""
    deadline = time.monotonic() + timeout
    while (probe := pod.ready()).returncode != 0:
        assert pod.process.poll() is None, f"the entry point exited; see {pod.server.log_dir}"
        assert time.monotonic() < deadline, f"not ready within {timeout:g} s: {probe.stderr}"
        time.sleep(1)


def test_the_readiness_probe_passes_once_every_version_has_its_workers(pod: EntryPoint) -> None:
    """Not /ping, which asks only for each model's default version: 1.0's workers count too."""
    wait_until_ready(pod)
    statuses = {
        entry["modelVersion"]: [worker["status"] for worker in entry["workers"]]
        for entry in describe(pod.server, "all")
    }
    assert statuses == {version: ["READY"] * POD.plan().workers_per_version for version in SERVED_VERSIONS}
    assert describe(pod.server)[0]["modelVersion"] == "2.0"


def test_the_readiness_probe_fails_with_a_reason_while_nothing_answers(tmp_path: Path) -> None:
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "config.properties").write_text(
        f"management_address=http://{HOST}:{Ports.free().management}\n"
    )
    probe = entry("ready", env={"MODEL_BUNDLE": str(tmp_path)})
    assert probe.returncode == 1 and "not ready: TorchServe's management API" in probe.stderr


def test_without_a_bundle_the_entry_point_says_what_to_mount(tmp_path: Path) -> None:
    served = entry(env={"MODEL_BUNDLE": str(tmp_path / "nothing")})
    assert served.returncode == 2 and "no model bundle at" in served.stderr and "make kserve-bundle" in served.stderr
    probe = entry("ready", env={"MODEL_BUNDLE": str(tmp_path / "nothing")})
    assert probe.returncode == 1 and "not ready: no bundle config at" in probe.stderr


def test_v1_and_v2_predictions_answer_without_a_token_and_agree(pod: EntryPoint) -> None:
    """The bundle's own config: no token, as a Service in front of several replicas needs."""
    wait_until_ready(pod)
    runtime = pod.server
    image = PHOTO
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


def test_sigterm_drains_then_stops_the_server_and_every_worker(pod: EntryPoint) -> None:
    """As the kubelet stops the container: SIGTERM to the entry point, process 1 there. It still
    answers during DRAIN_SECONDS, then exits 0, and no frontend or worker outlives it."""
    wait_until_ready(pod)
    processes = psutil.Process(pod.process.pid).children(recursive=True)
    assert any("org.pytorch.serve.ModelServer" in " ".join(p.cmdline()) for p in processes)
    pod.process.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    drained = requests.post(
        f"{pod.server.inference_url}/v1/models/{MODEL_NAME}:predict", json={"instances": [b64(PHOTO)]}, timeout=60
    )
    assert drained.status_code == 200 and time.monotonic() - signalled < DRAIN_S
    assert pod.process.wait(timeout=DRAIN_S + container_entry.LEFTOVER_GRACE_S + 60) == 0
    _, alive = psutil.wait_procs(processes, timeout=container_entry.LEFTOVER_GRACE_S)
    assert not alive, [p.cmdline() for p in alive]


@pytest.mark.parametrize("drain", ["5s", "-1", "inf", "nan"])
def test_a_drain_that_is_not_a_number_of_seconds_is_refused_with_a_reason(bundle: Path, drain: str) -> None:
    served = entry(env={"MODEL_BUNDLE": str(bundle), "DRAIN_SECONDS": drain})
    assert served.returncode == 2 and "DRAIN_SECONDS must be a number of seconds" in served.stderr


def test_a_torchserve_that_exits_on_its_own_is_a_failure(bundle: Path, tmp_path: Path) -> None:
    """TorchServe's launcher exits 0 whatever its frontend did; the entry point must not, or a
    restart policy would take a crash for a finished job. Here the frontend cannot bind its port."""
    with socket.socket() as taken:
        taken.bind((HOST, 0))
        taken.listen()
        free = Ports.free()
        failed = start(bundle, tmp_path, Ports(taken.getsockname()[1], *astuple(free)[1:]))
        status = failed.process.wait(timeout=300)
    log = (failed.server.log_dir / "console.log").read_text()
    assert status != 0 and "TorchServe exited on its own" in log, log[-2000:]
