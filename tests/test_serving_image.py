"""The serving image (deploy/image/), run as Kubernetes and KServe run it: uid 1000, a read-only
root, the bundle mounted read-only at /mnt/models, no arguments. The served suites of protocols
(tritonclient binary and classification, kserve v1 and v2, OIP gRPC, our REST and gRPC
clients), explanations and metrics run against it unchanged: they are imported below, and this
module's `server` is the container. Then the image's own promises, and last its stop on SIGTERM.

The suite builds the CUDA variant: its torch is the package index's own build, which every
machine that runs the suite reaches (the CPU variant's comes from PyTorch's index); it serves on
the CPU all the same. Where no container can run here, every test skips and says what went
unchecked."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from manifests import READY_COMMAND
from scripts.client import smoke
from scripts.endpoints import HOST, Ports, Server
from scripts.packaging import image
from scripts.packaging.kserve_bundle import Pod, write_bundle
from scripts.paths import ROOT, SERVED_VERSIONS, archive_name

# The served suites, collected again here against the container (the `server` fixture below).
from test_explanations_served import *  # noqa: F403
from test_metrics_served import *  # noqa: F403
from test_protocols_served import *  # noqa: F403

TAG = "resnet50-serving:test-cuda"  # not the tag `make image VARIANT=cuda` gives a user's build
POD = Pod(cpus=2)
PYTHON = READY_COMMAND[0]  # the image's interpreter
DEPLOYMENT = ROOT / "deploy" / "kubernetes" / "base" / "deployment.yaml"
UNCHECKED = (
    "the serving image was not built or run here: its protocols, explanations, metrics, compiled "
    "forward, uid, read-only root and SIGTERM stop went unchecked"
)


def why_no_containers() -> str | None:
    """Why this machine cannot build and run the image, or None."""
    if shutil.which("podman") is None:
        return "no podman (apt-get install podman buildah)"
    if not image.image_exists(image.LOCAL_BASE) and shutil.which("mmdebstrap") is None:
        return "no mmdebstrap to make the Debian base (apt-get install mmdebstrap)"
    return None


pytestmark = pytest.mark.skipif(why_no_containers() is not None, reason=f"{why_no_containers()}: {UNCHECKED}")


def podman(*arguments: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["podman", *arguments], capture_output=True, text=True, timeout=timeout, check=False)


@dataclass(frozen=True)
class Container:
    name: str
    bundle: Path

    def published(self, port: int) -> int:
        """The loopback port the host reaches the container's `port` on."""
        return int(podman("port", self.name, f"{port}/tcp").stdout.strip().rsplit(":", 1)[1])

    def run(self, *command: str) -> subprocess.CompletedProcess[str]:
        return podman("exec", self.name, *command)

    def logs(self) -> str:
        logged = podman("logs", self.name)
        return logged.stdout + logged.stderr


@pytest.fixture(scope="module")
def container(model_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Container]:
    """The image, built here, serving a bundle of the test archives for a 2-CPU pod."""
    try:
        base = image.local_base()
    except image.ImageError as error:
        pytest.skip(f"no Debian base could be made ({error}): {UNCHECKED}")
    if (probe := podman("run", "--rm", base, "true")).returncode != 0:
        pytest.skip(f"containers do not run here ({probe.stderr.strip()}): {UNCHECKED}")
    image.build("cuda", "local", TAG)
    archives = {version: model_store / archive_name(version) for version in SERVED_VERSIONS}
    bundle = write_bundle(archives, POD, tmp_path_factory.mktemp("mnt") / "models")
    for path in (bundle, *bundle.rglob("*")):
        path.chmod(0o755 if path.is_dir() else 0o644)  # readable by uid 1000, as a volume is
    name = f"resnet50-test-{bundle.parent.name}"
    started = podman(
        *("run", "--detach", "--replace", "--name", name, "--user", "1000:1000", "--read-only"),
        *("--volume", f"{bundle}:/mnt/models:ro"),
        *(option for port in (8080, 7070, 8082) for option in ("--publish", f"{HOST}::{port}")),
        TAG,
    )
    assert started.returncode == 0, started.stderr
    try:
        yield Container(name, bundle)
    finally:
        podman("rm", "--force", name)


def wait_until_ready(container: Container, timeout: float = 300.0) -> None:
    """Until the readiness probe passes, run as the manifests run it (bounded for a busy machine)."""
    deadline = time.monotonic() + timeout
    while (probe := container.run(*READY_COMMAND)).returncode != 0:
        assert time.monotonic() < deadline, (
            f"not ready within {timeout:g} s: {probe.stderr}\n{container.logs()[-3000:]}"
        )
        time.sleep(2)


@pytest.fixture(scope="module")
def server(container: Container, tmp_path_factory: pytest.TempPathFactory) -> Server:
    """The container as the served suites see a server: the bundle's config. It has token auth
    off, so the key file holds tokens TorchServe ignores; management is on the container's
    loopback, so its ports here are unused ones."""
    wait_until_ready(container)
    run_dir = tmp_path_factory.mktemp("container-client")
    shutil.copyfile(container.bundle / "config" / "config.properties", run_dir / "config.properties")
    (run_dir / "key_file.json").write_text(json.dumps({"inference": {"key": "-"}, "management": {"key": "-"}}))
    unused = Ports.free()
    ports = Ports(
        inference=container.published(8080),
        management=unused.management,
        metrics=container.published(8082),
        grpc_inference=container.published(7070),
        grpc_management=unused.grpc_management,
    )
    return Server(run_dir=run_dir, model_store=tmp_path_factory.mktemp("unused-store"), ports=ports)


def test_it_runs_as_uid_1000_on_a_read_only_root_with_the_bundle_read_only(
    server: Server, container: Container
) -> None:
    assert podman("image", "inspect", "--format", "{{.Config.User}}", TAG).stdout.strip() == "1000:1000"
    assert container.run("id", "-u").stdout.strip() == "1000"
    for path in ("/opt/venv/probe", "/mnt/models/probe"):
        assert "Read-only file system" in container.run("touch", path).stderr, path


def test_management_listens_on_the_containers_loopback_only(server: Server, container: Container) -> None:
    """From the pod's own address 8081 is closed while 8080 answers: only loopback reaches it."""
    connect = (
        "import socket, sys; address = socket.gethostbyname(socket.gethostname()); "
        "print(*(socket.socket().connect_ex((address, int(port))) for port in sys.argv[1:]))"
    )
    inference, management = container.run(PYTHON, "-c", connect, "8080", "8081").stdout.split()
    assert inference == "0" and management != "0"


def test_every_worker_serves_the_compiled_forward(server: Server, container: Container) -> None:
    """The image's torch is the build's, so no worker falls back to the eager model."""
    ready = re.findall(r"ResNet50 \(\w+\) ready on cpu with \d+ intra-op threads, (.+)$", container.logs(), re.M)
    assert ready == ["compiled forward"] * (len(SERVED_VERSIONS) * POD.plan().workers_per_version)


def test_the_smoke_check_passes_against_it(server: Server) -> None:
    """The check users run after `kubectl apply` (docs/deployment.md), all but its kubectl wait."""
    arguments = ["--url", server.inference_url, "--metrics-url", server.metrics_url, "--requests", "20"]
    assert smoke.main(arguments) == 0


def test_sigterm_stops_it_cleanly_well_inside_the_grace_period(server: Server, container: Container) -> None:
    """As the kubelet stops a pod: SIGTERM to process 1, no preStop hook. Exit status 0 in under
    half the manifests' grace period; the last part of the grace is for the kubelet's SIGKILL."""
    grace = yaml.safe_load(DEPLOYMENT.read_text())["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    started = time.monotonic()
    stopped = podman("stop", "--time", str(grace), container.name, timeout=grace + 30)
    took = time.monotonic() - started
    assert stopped.returncode == 0, stopped.stderr
    assert podman("inspect", "--format", "{{.State.ExitCode}}", container.name).stdout.strip() == "0"
    assert "SIGTERM: stopping TorchServe" in container.logs()
    assert took < grace / 2, f"took {took:.1f} s of a {grace} s grace period"
