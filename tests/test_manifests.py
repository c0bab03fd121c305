"""The Kubernetes manifests under deploy/, checked offline: no cluster, no network.

Every YAML file parses and holds no literal secret; every kustomization (each base and overlay)
renders with `kubectl kustomize`; every Kubernetes object it renders validates against the API
schemas of KUBERNETES_VERSION, unknown fields included; every InferenceService goes through
kserve's own model and comes back with no field lost; and the decisions the manifests' comments
justify still hold: only inference ports behind a Service, GPU overlays on a GPU with a GPU
image, a canary percent only in the canary overlay, threads and the concurrency target from the
worker rule and the batching, Guaranteed QoS, and a locked-down security context.

Without kubectl on PATH the rendering tests skip and say what went unchecked.
"""

from __future__ import annotations

import re
from pathlib import Path

import kubernetes_validate
import pydantic
import pytest

from manifests import (
    DEPLOY_DIR,
    GPU,
    KUBECTL,
    KServeModels,
    batch_size,
    containers,
    differences,
    documents,
    is_kubernetes_api,
    kustomizations,
    name_of,
    of_kind,
    pod_specs,
    relative,
    rendered,
    serving_containers,
    walk,
    yaml_files,
)

# The Kubernetes API the manifests are validated against: of the schema sets kubernetes-validate
# 1.37 ships (1.25 to 1.37), the one matching the kubectl client these manifests are rendered
# with (v1.32). Manifests valid for 1.32 stay valid on later releases unless an API they use is
# removed, which bumping this constant would show.
KUBERNETES_VERSION = "1.32.0"
# Listeners that must stay inside the pod: TorchServe's management (REST 8081, gRPC 7071) and
# metrics (8082, scraped from the pods by annotation), and the KServe bundle's loopback-only
# inference and management (8085, 8086).
INTERNAL_PORTS = frozenset({8081, 7071, 8082, 8085, 8086})
SECRET_LIKE_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|CREDENTIAL", re.IGNORECASE)

needs_kubectl = pytest.mark.skipif(
    KUBECTL is None,
    reason="kubectl is not on PATH: the kustomizations under deploy/ were not rendered, so their schema "
    "validation, KServe round trip and semantic checks did not run (YAML parsing and the secret scan did)",
)


# --- Every file ----------------------------------------------------------------------------------


def test_deploy_holds_manifests_and_kustomizations() -> None:
    """The parametrized tests below iterate over what they find: finding nothing must fail."""
    assert yaml_files() and kustomizations(), f"no YAML or kustomization.yaml under {DEPLOY_DIR}"


@pytest.mark.parametrize("path", yaml_files(), ids=relative)
def test_yaml_parses(path: Path) -> None:
    """Every file is YAML kubectl can read: mappings, at least one."""
    parsed = documents(path)
    assert parsed and all(isinstance(document, dict) for document in parsed)


@pytest.mark.parametrize("path", yaml_files(), ids=relative)
def test_no_literal_secrets(path: Path) -> None:
    """Credentials reach pods by reference only (a ServiceAccount, a secretKeyRef to a Secret the
    user makes): no Secret with data, no secretGenerator, no env value under a secret-like name."""
    for document in documents(path):
        assert not (document.get("kind") == "Secret" and (document.get("data") or document.get("stringData"))), (
            f"{relative(path)}: a Secret with data"
        )
        assert "secretGenerator" not in document, f"{relative(path)}: a secretGenerator puts secrets in the repo"
        literal = [
            item["name"]
            for item in walk(document)
            if "value" in item and SECRET_LIKE_NAME.search(str(item.get("name", "")))
        ]
        assert not literal, f"{relative(path)}: literal values for {literal}; use valueFrom.secretKeyRef"


# --- Every kustomization -------------------------------------------------------------------------

directories = pytest.mark.parametrize("directory", kustomizations(), ids=relative)


@needs_kubectl
@directories
def test_kustomization_renders(directory: Path) -> None:
    objects = rendered(directory)
    assert objects and all(
        obj.get("apiVersion") and obj.get("kind") and obj.get("metadata", {}).get("name") for obj in objects
    )


@needs_kubectl
@directories
def test_every_object_is_checked_by_a_schema(directory: Path) -> None:
    """Each rendered object is either a built-in kind (validated below) or an InferenceService
    (round-tripped below); a new kind needs a check before it lands."""
    unchecked = [
        name_of(obj) for obj in rendered(directory) if not is_kubernetes_api(obj) and obj["kind"] != "InferenceService"
    ]
    assert not unchecked, f"no schema check for {unchecked}"


@needs_kubectl
@directories
def test_kubernetes_objects_match_the_api_schema(directory: Path) -> None:
    """Strict schemas: a misspelled or misplaced field fails here, not at `kubectl apply`."""
    errors = []
    for obj in filter(is_kubernetes_api, rendered(directory)):
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            errors.append(f"{name_of(obj)}: {'.'.join(map(str, error.path))}: {error.message}")
        except kubernetes_validate.SchemaNotFoundError as error:
            errors.append(f"{name_of(obj)}: {error.message}")
    assert not errors, f"against Kubernetes {KUBERNETES_VERSION}:\n" + "\n".join(errors)


@needs_kubectl
@directories
def test_inference_services_round_trip_through_kserve(directory: Path) -> None:
    """kserve's V1beta1InferenceService keeps every field we set: none misspelled, none at a
    level KServe does not read it from, every value of the type KServe expects."""
    for obj in of_kind(rendered(directory), "InferenceService"):
        try:
            returned = KServeModels().round_trip(obj)
        except pydantic.ValidationError as error:
            pytest.fail(f"{name_of(obj)}: a Kubernetes type inside it refuses a field:\n{error}")
        lost = differences(obj, returned)
        assert not lost, f"{name_of(obj)} through kserve's V1beta1InferenceService:\n" + "\n".join(lost)


@needs_kubectl
@directories
def test_services_expose_only_inference_ports(directory: Path) -> None:
    """Management and metrics stay off every Service, whether named by number or by port name."""
    objects = rendered(directory)
    named = {
        port["name"]: port["containerPort"]
        for deployment in of_kind(objects, "Deployment")
        for container in containers(deployment["spec"]["template"]["spec"])
        for port in container.get("ports", [])
        if "name" in port
    }
    for service in of_kind(objects, "Service"):
        for port in service["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            assert isinstance(target, int) or target in named, f"{name_of(service)}: no container port named {target!r}"
            exposed = {port["port"], named.get(target, target)}
            assert not exposed & INTERNAL_PORTS, f"{name_of(service)} exposes {sorted(exposed & INTERNAL_PORTS)}"


@needs_kubectl
@directories
def test_gpus_and_gpu_images_go_together(directory: Path) -> None:
    """A GPU overlay requests a GPU and runs a -gpu image (runtimeVersion for KServe); nothing
    else pulls a GPU image onto a CPU pod or holds a GPU it cannot use."""
    for serving in serving_containers(rendered(directory)):
        gpu_image = serving.image.endswith("-gpu")
        assert (serving.gpus() > 0) == gpu_image, f"{serving.where}: {serving.gpus()} GPU(s) with {serving.image}"
        if directory.name == "gpu":
            assert serving.gpus() > 0, f"{serving.where}: the GPU overlay requests no {GPU}"


@needs_kubectl
@directories
def test_canary_percent_only_in_the_canary_overlay(directory: Path) -> None:
    """The canary overlay splits traffic (1 to 99% to the new revision); no other kustomization
    does, so applying the base or raw mode (which has no canary) never leaves a split behind."""
    for service in of_kind(rendered(directory), "InferenceService"):
        percent = service["spec"]["predictor"].get("canaryTrafficPercent")
        if directory.name == "canary":
            assert isinstance(percent, int) and 1 <= percent <= 99, (
                f"{name_of(service)}: canaryTrafficPercent {percent!r}"
            )
        else:
            assert percent is None, f"{name_of(service)}: canaryTrafficPercent {percent} outside the canary overlay"


@needs_kubectl
@directories
def test_threads_follow_the_worker_rule(directory: Path) -> None:
    """OMP_NUM_THREADS divides the CPU request and equals the threads per worker of the bundle
    built for the pod (workers inherit the container's environment)."""
    for serving in serving_containers(rendered(directory)):
        threads = serving.env.get("OMP_NUM_THREADS")
        assert threads and threads.isdigit(), f"{serving.where}: OMP_NUM_THREADS {threads!r}"
        assert serving.cpus() % int(threads) == 0, f"{serving.where}: {threads} threads on {serving.cpus()} CPUs"
        assert int(threads) == serving.plan().threads_per_worker, (
            f"{serving.where}: OMP_NUM_THREADS {threads}, the worker rule gives {serving.plan().describe()}"
        )


@needs_kubectl
@directories
def test_concurrency_target_fills_the_default_versions_batches(directory: Path) -> None:
    """Knative's per-pod concurrency target is the default version's workers times batchSize."""
    for service in of_kind(rendered(directory), "InferenceService"):
        predictor = service["spec"]["predictor"]
        if predictor.get("scaleMetric", "concurrency") != "concurrency":
            continue
        (serving,) = serving_containers((service,))
        workers = serving.plan().workers_per_version
        expected = workers * batch_size()
        assert predictor.get("scaleTarget") == expected, (
            f"{name_of(service)}: scaleTarget "
            f"{predictor.get('scaleTarget')}, but {workers} worker(s) x batchSize {batch_size()} = {expected}"
        )


@needs_kubectl
@directories
def test_serving_pods_get_guaranteed_qos(directory: Path) -> None:
    """Requests equal limits, and both name CPU and memory."""
    for serving in serving_containers(rendered(directory)):
        requests, limits = serving.resources.get("requests"), serving.resources.get("limits")
        assert requests and requests == limits and {"cpu", "memory"} <= requests.keys(), (
            f"{serving.where}: requests {requests} and limits {limits}"
        )


@needs_kubectl
@directories
def test_every_container_runs_locked_down(directory: Path) -> None:
    """Non-root, no privilege escalation, no capabilities, the runtime's seccomp profile: set on the
    container or inherited from its pod (runAsNonRoot, seccompProfile), for init containers too."""
    for where, pod, pod_containers in pod_specs(rendered(directory)):
        for container in pod_containers:
            context = container.get("securityContext", {})
            effective = {key: context.get(key, pod.get(key)) for key in ("runAsNonRoot", "seccompProfile")}
            problems = [
                problem
                for problem, failed in (
                    ("runAsNonRoot", effective["runAsNonRoot"] is not True),
                    ("seccompProfile", (effective["seccompProfile"] or {}).get("type") != "RuntimeDefault"),
                    ("allowPrivilegeEscalation", context.get("allowPrivilegeEscalation") is not False),
                    ("capabilities", context.get("capabilities", {}).get("drop") != ["ALL"]),
                )
                if failed
            ]
            assert not problems, f"{where} container {container.get('name', 'model')}: {problems}"
