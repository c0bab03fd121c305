"""The Kubernetes manifests under deploy/, checked offline: no cluster, no network.

Every YAML file parses and holds no literal secret; every kustomization (each base, overlay and
monitoring kustomization) renders with `kubectl kustomize`; every Kubernetes object it renders
validates against the API schemas of KUBERNETES_VERSION, unknown fields included, and so does
every pod template a RayService embeds; every InferenceService and ServingRuntime goes through
kserve's own model and comes back with no field lost; every PodMonitor and RayService validates
against its operator's schema, every PodMonitor scrapes its own pods' metrics, and every
RayService's Serve config goes through Ray Serve's own schema with no field lost; and the
decisions the manifests' comments justify still hold: our serving image everywhere, run as built
(its probes, no preStop), a read-only root, only inference ports behind a Service (KubeRay's
included), GPU pods on the CUDA image, a canary percent only in the canary overlay, threads and
the concurrency target from the worker rule and the batching, requests = limits (a Guaranteed
plain or Ray pod), a locked-down security context, and Ray Serve running our application on the
pinned Ray, its replicas and threads from the worker rule, on the ports its pods declare. Every
value docs/deployment.md promises is held to tests/promised.py: each pod's CPUs, memory and GPU,
replicas and scaling targets, protocols, the canary percent, the plain Service's ports, its HPA,
PodDisruptionBudget and NetworkPolicy, and the uid. KServe's own rules are
tests/test_kserve_admission.py's.

Without kubectl on PATH the rendering tests skip and say what went unchecked.
"""

from __future__ import annotations

import ast
import posixpath
import re
import warnings
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

import jsonschema
import kubernetes_validate
import pydantic
import pytest

import promised
from manifests import (
    CPU_TAG,
    DEPLOY_DIR,
    GPU,
    GPU_TAG,
    KSERVE_MODELS,
    MODE_ANNOTATION,
    READY_COMMAND,
    SERVE_PORT_NAME,
    SERVING_IMAGE,
    KServeModels,
    Objects,
    Serving,
    annotations_of,
    batch_size,
    containers,
    declared_ports,
    differences,
    documents,
    is_kubernetes_api,
    kustomizations,
    name_of,
    needs_kubectl,
    of_kind,
    pod_template,
    podmonitor_spec_schema,
    ray_nodes,
    rayservice_spec_schema,
    relative,
    rendered,
    serve_config,
    serve_service,
    serving_containers,
    walk,
    yaml_files,
)
from scripts.paths import DEFAULT_VERSION, MODEL_NAME, ROOT, SERVED_VERSIONS, archive_name
from scripts.serve_config import VERSION_BUILDER, engine_config

with warnings.catch_warnings():
    # Ray Serve 2.60 declares its config with pydantic 1's Field() extras: a deprecation warning
    # per field at import, none of them ours.
    warnings.simplefilter("ignore", DeprecationWarning)
    from ray.serve.schema import ServeDeploySchema

# The Kubernetes API the manifests are validated against: of the schema sets kubernetes-validate
# 1.37 ships (1.25 to 1.37), the one matching the kubectl client these manifests are rendered
# with (v1.32). Manifests valid for 1.32 stay valid on later releases unless an API they use is
# removed, which bumping this constant would show.
KUBERNETES_VERSION = "1.32.0"
# Listeners that must stay inside the cluster: TorchServe's management (REST and gRPC) and metrics
# (scraped from the pods), and Ray's on every Ray node: the GCS, the dashboard (which runs
# submitted jobs), Ray Client and the dashboard agent (KubeRay's defaults,
# ray-operator/controllers/ray/utils/constant.go; Ray's metrics are on METRICS_PORT, rayStartParams).
RAY_INTERNAL_PORTS = frozenset({6379, 8265, 10001, 52365})
INTERNAL_PORTS = (
    frozenset({promised.MANAGEMENT_PORT, promised.GRPC_MANAGEMENT_PORT, promised.METRICS_PORT}) | RAY_INTERNAL_PORTS
)
SECRET_LIKE_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|CREDENTIAL", re.IGNORECASE)
# The one image the manifests run besides ours: KServe's storage initializer (plain Deployment, Ray pods).
STORAGE_INITIALIZER = "kserve/storage-initializer:"
GRACE_PERIOD_S = 30
DRAIN_S = 5
KSERVE_DIR = DEPLOY_DIR / "kserve"
# Each kustomization that renders an InferenceService, with the deployment mode and protocol
# docs/deployment.md promises for it (each overlay is the base plus one change).
KSERVE_MODES_AND_PROTOCOLS = {
    KSERVE_DIR / "base": ("Standard", "v2"),
    KSERVE_DIR / "overlays" / "v1": ("Standard", "v1"),
    KSERVE_DIR / "overlays" / "gpu": ("Standard", "v2"),
    KSERVE_DIR / "overlays" / "knative": ("Knative", "v2"),
    KSERVE_DIR / "overlays" / "canary": ("Knative", "v2"),
}
KSERVE_CPU_KUSTOMIZATIONS = [path for path in KSERVE_MODES_AND_PROTOCOLS if path.name != "gpu"]
GPU_KUSTOMIZATIONS = [KSERVE_DIR / "overlays" / "gpu", DEPLOY_DIR / "kubernetes" / "overlays" / "gpu"]
# The plain Deployment with its Service, HPA, PodDisruptionBudget and NetworkPolicy.
PLAIN_KUSTOMIZATIONS = [DEPLOY_DIR / "kubernetes" / "base", DEPLOY_DIR / "kubernetes" / "overlays" / "gpu"]
# The label Kubernetes gives every namespace, its name: what a NetworkPolicy selects a namespace by.
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"
# Each kustomization that renders a RayService (Ray Serve under KubeRay).
RAY_KUSTOMIZATIONS = [DEPLOY_DIR / "ray" / "base"]
# What each tree's Services expose, as (Service port, container port): TorchServe's inference
# ports, REST and gRPC, onto TorchServe in the plain Deployment and onto Serve's proxies under Ray.
EXPOSED_PORTS = {
    "kubernetes": {(number, number) for number in promised.SERVICE_PORTS},
    "ray": {
        (promised.INFERENCE_PORT, promised.RAY_SERVE_PORT),
        (promised.GRPC_INFERENCE_PORT, promised.RAY_SERVE_GRPC_PORT),
    },
}
# The Ray the project pins for a RayService.
RAY_PIN = re.search(r"^ray\[serve\]==(\S+)$", (ROOT / "requirements-ray.txt").read_text(), re.MULTILINE)
# Where every pod mounts the bundle (the serving image's default, scripts/server/container_entry.py).
BUNDLE_DIR = "/mnt/models"
# The schema of each operator's kind, from its CRD and closed to unknown fields, with the
# apiVersion it is for.
OPERATOR_SCHEMAS: dict[str, tuple[str, Callable[[], dict[str, Any]]]] = {
    "PodMonitor": ("monitoring.coreos.com/v1", podmonitor_spec_schema),
    "RayService": ("ray.io/v1", rayservice_spec_schema),
}


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
    """Each rendered object is a built-in kind, a KServe kind, a PodMonitor or a RayService, each
    checked below; a new kind needs a check before it lands."""
    unchecked = [
        name_of(obj)
        for obj in rendered(directory)
        if not is_kubernetes_api(obj) and obj["kind"] not in {*KSERVE_MODELS, *OPERATOR_SCHEMAS}
    ]
    assert not unchecked, f"no schema check for {unchecked}"


@needs_kubectl
@directories
def test_kubernetes_objects_match_the_api_schema(directory: Path) -> None:
    """Strict schemas: a misspelled or misplaced field fails here, not at `kubectl apply`. A
    RayService's pod templates are Kubernetes' own type, checked here as core PodTemplates."""
    objects = rendered(directory)
    errors = []
    for obj in [*filter(is_kubernetes_api, objects), *map(pod_template, ray_nodes(objects))]:
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            errors.append(f"{name_of(obj)}: {'.'.join(map(str, error.path))}: {error.message}")
        except kubernetes_validate.SchemaNotFoundError as error:
            errors.append(f"{name_of(obj)}: {error.message}")
    assert not errors, f"against Kubernetes {KUBERNETES_VERSION}:\n" + "\n".join(errors)


@needs_kubectl
@directories
def test_kserve_objects_round_trip_through_kserve(directory: Path) -> None:
    """kserve's V1beta1InferenceService and V1alpha1ServingRuntime keep every field we set: none
    misspelled, none at a level KServe does not read it from, every value of the type KServe
    expects."""
    for obj in of_kind(rendered(directory), *KSERVE_MODELS):
        try:
            returned = KServeModels().round_trip(obj)
        except pydantic.ValidationError as error:
            pytest.fail(f"{name_of(obj)}: a Kubernetes type inside it refuses a field:\n{error}")
        lost = differences(obj, returned)
        assert not lost, f"{name_of(obj)} through kserve's {KSERVE_MODELS[obj['kind']]}:\n" + "\n".join(lost)


@needs_kubectl
@directories
def test_operator_kinds_match_their_operators_schema(directory: Path) -> None:
    """The operators' own schemas, closed to unknown fields: the Prometheus Operator's for a
    PodMonitor (tests/podmonitor_spec_schema.json; a field newer than the oldest operator
    supported fails too) and KubeRay's for a RayService (tests/rayservice_spec_schema.json). A
    misspelled or misplaced field fails here."""
    for obj in of_kind(rendered(directory), *OPERATOR_SCHEMAS):
        api_version, schema = OPERATOR_SCHEMAS[obj["kind"]]
        assert obj["apiVersion"] == api_version, name_of(obj)
        errors = [
            f"spec.{'.'.join(map(str, error.path))}: {error.message}"
            for error in jsonschema.Draft7Validator(schema()).iter_errors(obj["spec"])
        ]
        assert not errors, f"{name_of(obj)}:\n" + "\n".join(errors)


@needs_kubectl
@directories
def test_serve_configs_round_trip_through_ray_serve(directory: Path) -> None:
    """A RayService's serveConfigV2 is a string to KubeRay's schema: Ray Serve's own
    (ServeDeploySchema, what the dashboard deploys it with) keeps every field, where a misspelled
    one would be dropped without a word."""
    for service in of_kind(rendered(directory), "RayService"):
        config = serve_config(service)
        returned = ServeDeploySchema.model_validate(config).model_dump(mode="json", exclude_unset=True)
        lost = differences(config, returned)
        assert not lost, f"{name_of(service)} serveConfigV2 through Ray Serve's ServeDeploySchema:\n" + "\n".join(lost)


@needs_kubectl
@directories
def test_podmonitors_scrape_their_own_pods_metrics(directory: Path) -> None:
    """Each PodMonitor selects the serving pods of its own tree (deploy/kserve or
    deploy/kubernetes), none of the other's, and scrapes /metrics on TorchServe's metrics port."""
    for monitor in of_kind(rendered(directory), "PodMonitor"):
        own_tree = relative(directory).split("/")[1]
        for tree in ("kserve", "kubernetes"):
            for serving in serving_containers(rendered(DEPLOY_DIR / tree / "base")):
                chosen = selects(monitor["spec"]["selector"], serving.labels)
                assert chosen == (tree == own_tree), f"{name_of(monitor)} selects {serving.where}: {chosen}"
                if chosen:
                    for endpoint in monitor["spec"]["podMetricsEndpoints"]:
                        assert endpoint["path"] == "/metrics", name_of(monitor)
                        assert scraped_port(endpoint, serving) == promised.METRICS_PORT, (
                            f"{name_of(monitor)} on {serving.where}"
                        )


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Whether a label selector (matchLabels and matchExpressions) selects these labels."""
    tests: dict[str, Callable[[str, list[str]], bool]] = {
        "In": lambda key, values: labels.get(key) in values,
        "NotIn": lambda key, values: labels.get(key) not in values,
        "Exists": lambda key, _: key in labels,
        "DoesNotExist": lambda key, _: key not in labels,
    }
    return all(labels.get(key) == value for key, value in selector.get("matchLabels", {}).items()) and all(
        tests[expression["operator"]](expression["key"], expression.get("values", []))
        for expression in selector.get("matchExpressions", [])
    )


def scraped_port(endpoint: dict[str, Any], serving: Serving) -> int | None:
    """The port Prometheus scrapes on the pod: the declared port the endpoint selects (by name or
    number; none if the pod does not declare it), moved by a relabeling of __address__."""
    declared = {port.get("name"): port["containerPort"] for port in serving.container.get("ports", [])}
    port = declared.get(endpoint["port"]) if "port" in endpoint else endpoint.get("portNumber")
    if port not in declared.values():
        return None
    for relabeling in endpoint.get("relabelings", []):
        if relabeling.get("targetLabel") == "__address__":
            port = int(relabeling["replacement"].rpartition(":")[2])
    return port


@needs_kubectl
@directories
def test_services_expose_only_inference_ports(directory: Path) -> None:
    """Every Service exposes its tree's inference ports (EXPOSED_PORTS), and nothing else:
    TorchServe's management and metrics and Ray's GCS, dashboard and metrics stay off, whether
    named by number or by port name. The plain Deployment has one; KubeRay makes one for each
    RayService, from its serveService and its head's ports named serve."""
    objects = rendered(directory)
    services = of_kind(objects, "Service") + [serve_service(service) for service in of_kind(objects, "RayService")]
    assert services or directory not in PLAIN_KUSTOMIZATIONS, f"{relative(directory)}: no Service"
    named = {
        name: number
        for serving in (*serving_containers(objects), *ray_nodes(objects))
        for name, number in declared_ports(serving.container).items()
    }
    for service in services:
        exposed = set()
        for port in service["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            assert isinstance(target, int) or target in named, f"{name_of(service)}: no container port named {target!r}"
            exposed.add((port["port"], named.get(target, target)))
        internal = {number for pair in exposed for number in pair} & INTERNAL_PORTS
        assert not internal, f"{name_of(service)} exposes {sorted(internal)}"
        assert exposed == EXPOSED_PORTS[relative(directory).split("/")[1]], (
            f"{name_of(service)}: (port, container port) {sorted(exposed)}"
        )


@needs_kubectl
@directories
def test_every_image_is_ours(directory: Path) -> None:
    """Every container runs the serving image (deploy/image/) or, in the plain Deployment, KServe's
    storage initializer: no stock TorchServe image, no KServe TorchServe runtime."""
    objects = rendered(directory)
    images = [item["image"] for obj in objects for item in walk(obj) if "image" in item and "name" in item]
    foreign = [
        image
        for image in images
        if image not in {f"{SERVING_IMAGE}:{CPU_TAG}", f"{SERVING_IMAGE}:{GPU_TAG}"}
        and not image.startswith(STORAGE_INITIALIZER)
    ]
    assert not foreign, f"images that are not ours: {foreign}"


@needs_kubectl
@directories
def test_gpus_and_gpu_images_go_together(directory: Path) -> None:
    """A GPU pod runs the CUDA image and a CPU pod the CPU one, Ray's included."""
    for serving in every_serving_container(rendered(directory)):
        expected = f"{SERVING_IMAGE}:{GPU_TAG if serving.gpus() else CPU_TAG}"
        assert serving.image == expected, f"{serving.where}: {serving.gpus()} GPU(s) with {serving.image}"


@needs_kubectl
@pytest.mark.parametrize("directory", GPU_KUSTOMIZATIONS, ids=relative)
def test_gpu_pods_get_one_gpu_and_8_cpus_and_tolerate_the_gpu_taint(directory: Path) -> None:
    (serving,) = serving_containers(rendered(directory))
    for bound in ("requests", "limits"):
        resources = serving.resources[bound]
        assert (resources.get("cpu"), resources.get(GPU)) == (promised.GPU_POD_CPUS, promised.GPU_POD_GPUS), (
            f"{serving.where} {bound}: {resources}"
        )
    tolerated = [
        toleration
        for toleration in serving.pod.get("tolerations", [])
        if toleration.get("key") == promised.GPU_TAINT
        and toleration.get("operator") == "Exists"
        and toleration.get("effect") in (None, "NoSchedule")
    ]
    assert tolerated, f"{serving.where}: no toleration of the {promised.GPU_TAINT} taint"


@needs_kubectl
@directories
def test_serving_containers_run_the_image_as_built(directory: Path) -> None:
    """The image's own command, its readiness check for startup and readiness, a TCP liveness
    check on 8080, and no preStop (process 1 stops TorchServe on SIGTERM). (KubeRay replaces the
    command of a Ray node's container with `ray start`.)"""
    for serving in serving_containers(rendered(directory)):
        container = serving.container
        assert not {"command", "args", "lifecycle"} & container.keys(), f"{serving.where} overrides the image"
        for probe in ("startupProbe", "readinessProbe"):
            assert container[probe]["exec"]["command"] == READY_COMMAND, f"{serving.where} {probe}"
        assert liveness_port(container) == promised.INFERENCE_PORT, f"{serving.where} livenessProbe"


def liveness_port(container: dict[str, Any]) -> int | None:
    """The port of the container's TCP liveness check, resolved from a port name."""
    port = container["livenessProbe"]["tcpSocket"]["port"]
    return port if isinstance(port, int) else declared_ports(container).get(port)


@needs_kubectl
@directories
def test_serving_containers_write_only_to_emptydirs(directory: Path) -> None:
    """A read-only root, and an emptyDir at or above each path the container writes: the image's,
    and on a Ray node Ray's temp dir."""
    for serving in every_serving_container(rendered(directory)):
        assert serving.container["securityContext"]["readOnlyRootFilesystem"] is True, serving.where
        for path in serving.writable_paths:
            on = [volume for mount, volume in serving.mounts.items() if PurePosixPath(path).is_relative_to(mount)]
            assert on and "emptyDir" in on[-1], f"{serving.where}: no emptyDir at {path}"


def every_serving_container(objects: Objects) -> list[Serving]:
    """TorchServe's container in each pod that runs it, and Ray's on each RayService node."""
    return [*serving_containers(objects), *ray_nodes(objects)]


@needs_kubectl
@directories
def test_grace_period_is_stated(directory: Path) -> None:
    """30 s wherever a pod spec may set it: the plain Deployment and KServe's Standard mode
    (Knative refuses the field and sets its own: rule KN1 of tests/test_kserve_admission.py)."""
    for serving in serving_containers(rendered(directory)):
        if serving.mode != "Knative":
            assert serving.pod.get("terminationGracePeriodSeconds") == GRACE_PERIOD_S, serving.where


@needs_kubectl
@directories
def test_every_pod_drains_5_s_within_its_grace_period(directory: Path) -> None:
    """The image serves DRAIN_SECONDS after SIGTERM while the pod leaves its endpoints: 5 s
    everywhere, and with the stop itself (bounded at half the grace period by
    tests/test_serving_image.py) inside the grace period."""
    for serving in serving_containers(rendered(directory)):
        assert serving.env.get("DRAIN_SECONDS") == str(DRAIN_S), serving.where
        assert serving.pod.get("terminationGracePeriodSeconds", GRACE_PERIOD_S) > DRAIN_S + GRACE_PERIOD_S / 2


@needs_kubectl
@directories
def test_canary_percent_only_in_the_canary_overlay(directory: Path) -> None:
    """The canary overlay sends 10% to the new revision; no other kustomization splits traffic, so
    applying the base or another overlay never leaves a split behind."""
    for service in of_kind(rendered(directory), "InferenceService"):
        percent = service["spec"]["predictor"].get("canaryTrafficPercent")
        if directory.name == "canary":
            assert percent == promised.CANARY_PERCENT, f"{name_of(service)}: canaryTrafficPercent {percent!r}"
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
    for serving in serving_containers(rendered(directory)):
        predictor = serving.source["spec"].get("predictor", {})
        if serving.mode != "Knative" or predictor.get("scaleMetric") != "concurrency":
            continue
        workers = serving.plan().workers_per_version
        expected = workers * batch_size()
        assert predictor.get("scaleTarget") == expected, (
            f"{serving.where}: scaleTarget "
            f"{predictor.get('scaleTarget')}, but {workers} worker(s) x batchSize {batch_size()} = {expected}"
        )


@needs_kubectl
def test_every_inference_service_is_held_to_its_promised_mode_and_protocol() -> None:
    """A new kustomization with an InferenceService needs its row in KSERVE_MODES_AND_PROTOCOLS."""
    rendering = {directory for directory in kustomizations() if of_kind(rendered(directory), "InferenceService")}
    assert rendering == KSERVE_MODES_AND_PROTOCOLS.keys()


# Each kustomization with an InferenceService, with its promised (mode, protocol).
EACH_KSERVE_KUSTOMIZATION = pytest.mark.parametrize(
    ("directory", "promised_mode_and_protocol"),
    KSERVE_MODES_AND_PROTOCOLS.items(),
    ids=[relative(directory) for directory in KSERVE_MODES_AND_PROTOCOLS],
)


@needs_kubectl
@EACH_KSERVE_KUSTOMIZATION
def test_kserve_advertises_its_promised_protocol(directory: Path, promised_mode_and_protocol: tuple[str, str]) -> None:
    _, protocol = promised_mode_and_protocol
    (service,) = of_kind(rendered(directory), "InferenceService")
    assert service["spec"]["predictor"]["model"].get("protocolVersion") == protocol, name_of(service)


@needs_kubectl
@EACH_KSERVE_KUSTOMIZATION
def test_kserve_scales_1_to_8_pods_on_70_percent_cpu_or_8_requests_in_flight(
    directory: Path, promised_mode_and_protocol: tuple[str, str]
) -> None:
    """Standard mode: KServe's HPA at 70% CPU; Knative mode: 8 requests in flight per pod (why 8:
    test_concurrency_target_fills_the_default_versions_batches). 1 to 8 pods either way."""
    mode, _ = promised_mode_and_protocol
    (service,) = of_kind(rendered(directory), "InferenceService")
    predictor = service["spec"]["predictor"]
    assert annotations_of(service).get(MODE_ANNOTATION) == mode, name_of(service)
    assert (predictor.get("minReplicas"), predictor.get("maxReplicas")) == promised.KSERVE_REPLICAS, name_of(service)
    metric = (
        ("cpu", promised.KSERVE_HPA_CPU_PERCENT)
        if mode == "Standard"
        else ("concurrency", promised.KNATIVE_CONCURRENCY_TARGET)
    )
    assert (predictor.get("scaleMetric"), predictor.get("scaleTarget")) == metric, name_of(service)


@needs_kubectl
@pytest.mark.parametrize("directory", KSERVE_CPU_KUSTOMIZATIONS, ids=relative)
def test_kserve_cpu_pods_get_4_cpus_and_6_gib(directory: Path) -> None:
    (serving,) = serving_containers(rendered(directory))
    size = {"cpu": promised.KSERVE_POD_CPUS, "memory": promised.KSERVE_POD_MEMORY}
    assert serving.resources == {"requests": size, "limits": size}, serving.where


@needs_kubectl
@pytest.mark.parametrize("directory", PLAIN_KUSTOMIZATIONS, ids=relative)
def test_the_plain_deployment_scales_2_to_8_pods_on_cpu(directory: Path) -> None:
    objects = rendered(directory)
    (deployment,) = of_kind(objects, "Deployment")
    (autoscaler,) = of_kind(objects, "HorizontalPodAutoscaler")
    spec = autoscaler["spec"]
    target = spec["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert (spec.get("minReplicas"), spec["maxReplicas"]) == promised.PLAIN_REPLICAS
    assert [
        (metric["type"], metric["resource"]["name"], metric["resource"]["target"]["type"]) for metric in spec["metrics"]
    ] == [("Resource", "cpu", "Utilization")]


@needs_kubectl
@pytest.mark.parametrize("directory", PLAIN_KUSTOMIZATIONS, ids=relative)
def test_a_node_drain_keeps_a_plain_replica_serving(directory: Path) -> None:
    """The PodDisruptionBudget covers the Deployment's pods and lets evictions take one at a time,
    and the HPA never runs fewer than two: a drain always leaves one serving."""
    objects = rendered(directory)
    (deployment,) = of_kind(objects, "Deployment")
    (budget,) = of_kind(objects, "PodDisruptionBudget")
    (autoscaler,) = of_kind(objects, "HorizontalPodAutoscaler")
    assert selects(budget["spec"]["selector"], deployment["spec"]["template"]["metadata"]["labels"])
    assert budget["spec"].get("maxUnavailable") == 1 and "minAvailable" not in budget["spec"]
    assert autoscaler["spec"].get("minReplicas", 1) >= 2


@needs_kubectl
@pytest.mark.parametrize("directory", PLAIN_KUSTOMIZATIONS, ids=relative)
def test_the_network_policy_admits_inference_from_anywhere_and_metrics_from_monitoring(directory: Path) -> None:
    """Inference from pods of any namespace, metrics only from the monitoring namespace, no other
    port (management) from anywhere."""
    objects = rendered(directory)
    (deployment,) = of_kind(objects, "Deployment")
    (policy,) = of_kind(objects, "NetworkPolicy")
    spec = policy["spec"]
    assert selects(spec["podSelector"], deployment["spec"]["template"]["metadata"]["labels"])
    assert "Ingress" in spec["policyTypes"]
    admitted: dict[tuple[int, str], list[dict[str, Any]]] = {}
    for rule in spec.get("ingress", []):
        assert "ports" in rule and "from" in rule, f"a rule without ports or sources admits them all: {rule}"
        for port in rule["ports"]:
            admitted.setdefault((port["port"], port.get("protocol", "TCP")), []).extend(rule["from"])
    anywhere: list[dict[str, Any]] = [{"namespaceSelector": {}}]
    monitoring = [{"namespaceSelector": {"matchLabels": {NAMESPACE_NAME_LABEL: promised.MONITORING_NAMESPACE}}}]
    assert admitted == {
        (promised.INFERENCE_PORT, "TCP"): anywhere,
        (promised.GRPC_INFERENCE_PORT, "TCP"): anywhere,
        (promised.METRICS_PORT, "TCP"): monitoring,
    }


@needs_kubectl
@directories
def test_serving_containers_request_their_limits(directory: Path) -> None:
    """Requests equal limits, and both name CPU and memory: no overcommit on the serving container,
    TorchServe's or Ray's."""
    for serving in every_serving_container(rendered(directory)):
        assert requests_its_limits(serving.container), f"{serving.where}: {serving.resources}"


@needs_kubectl
@directories
def test_plain_and_ray_pods_are_guaranteed(directory: Path) -> None:
    """Every container of the plain Deployment's pod and of each Ray node's, the storage
    initializer included, requests its limits: Kubernetes counts init containers too, so this
    makes the pod Guaranteed. (KubeRay's own wait-gcs-ready requests its limits; under KServe the
    containers it injects decide, as the manifests say.)"""
    objects = rendered(directory)
    pods = [
        (name_of(deployment), deployment["spec"]["template"]["spec"]) for deployment in of_kind(objects, "Deployment")
    ]
    for where, pod in pods + [(node.where, node.pod) for node in ray_nodes(objects)]:
        burstable = [
            container["name"] for container in containers(pod, init=True) if not requests_its_limits(container)
        ]
        assert not burstable, f"{where}: requests below limits in {burstable}"


def requests_its_limits(container: dict[str, Any]) -> bool:
    resources = container.get("resources", {})
    requests, limits = resources.get("requests"), resources.get("limits")
    return bool(requests) and requests == limits and {"cpu", "memory"} <= requests.keys()


@needs_kubectl
@directories
def test_every_container_runs_locked_down(directory: Path) -> None:
    """uid 1000 and non-root, no privilege escalation, every capability dropped and none added back,
    the runtime's seccomp profile: set on the container or inherited from its pod (runAsUser,
    runAsNonRoot, seccompProfile), for init containers too, in every serving pod and Ray node."""
    for serving in every_serving_container(rendered(directory)):
        pod = serving.pod.get("securityContext", {})
        for container in containers(serving.pod, init=True):
            context = container.get("securityContext", {})
            effective = {key: context.get(key, pod.get(key)) for key in ("runAsUser", "runAsNonRoot", "seccompProfile")}
            capabilities = context.get("capabilities", {})
            problems = [
                problem
                for problem, failed in (
                    ("runAsUser", effective["runAsUser"] != promised.POD_UID),
                    ("runAsNonRoot", effective["runAsNonRoot"] is not True),
                    ("seccompProfile", (effective["seccompProfile"] or {}).get("type") != "RuntimeDefault"),
                    ("allowPrivilegeEscalation", context.get("allowPrivilegeEscalation") is not False),
                    ("capabilities dropped", capabilities.get("drop") != ["ALL"]),
                    ("capabilities added", bool(capabilities.get("add"))),
                )
                if failed
            ]
            assert not problems, f"{serving.where}, pod container {container['name']}: {problems}"


# --- Ray Serve under KubeRay ---------------------------------------------------------------------


@needs_kubectl
def test_every_rayservice_is_held_to_the_ray_checks() -> None:
    """A new kustomization with a RayService needs its place in RAY_KUSTOMIZATIONS."""
    rendering = {directory for directory in kustomizations() if of_kind(rendered(directory), "RayService")}
    assert rendering == set(RAY_KUSTOMIZATIONS)


each_ray_kustomization = pytest.mark.parametrize("directory", RAY_KUSTOMIZATIONS, ids=relative)


@needs_kubectl
@each_ray_kustomization
def test_rayservice_serves_our_applications_on_the_pinned_ray(directory: Path) -> None:
    """KubeRay starts the Ray of requirements-ray.txt, and Serve runs the engine's applications and
    gRPC services as scripts/serve_config.py makes them on one machine: the frontend (2.0 the
    default, TorchServe's request-size limit, the key every node mounts from a Secret) and each
    version's archive from the bundle, which every node's storage initializer puts at BUNDLE_DIR.
    Each builder gets every argument it requires and none it does not read."""
    objects = rendered(directory)
    (service,) = of_kind(objects, "RayService")
    config = serve_config(service)
    applications = config["applications"]
    assert RAY_PIN and service["spec"]["rayClusterConfig"].get("rayVersion") == RAY_PIN[1], name_of(service)
    # The dashboard takes jobs (code to run): KubeRay's token or nothing.
    assert service["spec"]["rayClusterConfig"].get("authOptions") == {"mode": promised.RAY_AUTH_MODE}
    key_file = "/etc/resnet50/keys/key_file.json"
    # Sized as test_ray_replicas_and_threads_follow_the_worker_rule holds them.
    replicas, threads = serve_config_sizes(applications)
    expected = engine_config(
        http_port=promised.RAY_SERVE_PORT,
        grpc_port=promised.RAY_SERVE_GRPC_PORT,
        frontend_args={"model": MODEL_NAME, "key_file": key_file, "max_request_size": promised.MAX_REQUEST_BYTES},
        default=DEFAULT_VERSION,
        versions={
            version: {
                "model": MODEL_NAME,
                "version": version,
                "archive": f"{BUNDLE_DIR}/model-store/{archive_name(version)}",
                "threads": threads,
            }
            for version in SERVED_VERSIONS
        },
        replicas=replicas,
    )
    assert applications == expected["applications"], name_of(service)
    assert config["grpc_options"] == expected["grpc_options"], name_of(service)
    for application in applications:
        required, read = builder_keys(application["import_path"])
        given = application["args"].keys()
        assert read and required <= given <= read, (
            f"{application['name']}: requires {sorted(required)}, reads {sorted(read)}"
        )
    for node in ray_nodes(objects):
        assert "emptyDir" in node.mounts.get(BUNDLE_DIR, {}), f"{node.where}: no bundle at {BUNDLE_DIR}"
        assert [
            init["args"][-1]
            for init in node.pod.get("initContainers", [])
            if init["image"].startswith(STORAGE_INITIALIZER)
        ] == [BUNDLE_DIR], f"{node.where}: no storage initializer filling {BUNDLE_DIR}"
        assert "secret" in node.mounts.get(posixpath.dirname(key_file), {}), f"{node.where}: no key"


def serve_config_sizes(applications: list[dict[str, Any]]) -> tuple[int, int]:
    """(replicas, threads) of the version applications, which must all have the same."""
    ((replicas, threads),) = {
        (app["deployments"][0]["num_replicas"], app["args"]["threads"])
        for app in applications
        if app["import_path"] == VERSION_BUILDER
    }
    return replicas, threads


def builder_keys(import_path: str) -> tuple[set[str], set[str]]:
    """The keys the application builder `package.module:name` requires of its argument (indexes
    and never .get()s) and every key it reads; both empty if the module has no such function.
    Read from the source rather than imported: the module imports Ray Serve and TorchServe."""
    module, _, name = import_path.partition(":")
    tree = ast.parse((ROOT / f"{module.replace('.', '/')}.py").read_text())
    for function in tree.body:
        if isinstance(function, ast.FunctionDef) and function.name == name:
            args = function.args.args[0].arg
            nodes = list(ast.walk(function))
            indexed = {
                key
                for node in nodes
                if isinstance(node, ast.Subscript) and is_name(node.value, args) and (key := string_of(node.slice))
            }
            got = {
                key
                for node in nodes
                if isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "get"
                and is_name(node.func.value, args)
                and node.args
                and (key := string_of(node.args[0]))
            }
            return indexed - got, indexed | got
    return set(), set()


def is_name(node: ast.expr, name: str) -> bool:
    return isinstance(node, ast.Name) and node.id == name


def string_of(node: ast.expr) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


@needs_kubectl
@each_ray_kustomization
def test_ray_replicas_and_threads_follow_the_worker_rule(directory: Path) -> None:
    """A head and the promised worker pods, every node the promised size, and Serve runs as many
    replicas of each version as the worker rule gives that many TorchServe pods of that size, each
    with its threads: one pod's worth per node, as Serve spreads replicas over the nodes."""
    objects = rendered(directory)
    (service,) = of_kind(objects, "RayService")
    versions = [app for app in serve_config(service)["applications"] if app["import_path"] == VERSION_BUILDER]
    nodes = ray_nodes(objects)
    assert [node.count for node in nodes] == [1, promised.RAY_WORKER_PODS], [node.where for node in nodes]
    assert {node.cpus() for node in nodes} == {int(promised.RAY_POD_CPUS)}
    (plan,) = {node.plan() for node in nodes}
    pods = sum(node.count for node in nodes)
    assert len(versions) == len(SERVED_VERSIONS)
    for application in versions:
        (deployment,) = application["deployments"]
        assert deployment["num_replicas"] == pods * plan.workers_per_version, f"{pods} pods, {plan.describe()}"
        assert application["args"]["threads"] == plan.threads_per_worker, plan.describe()


@needs_kubectl
@each_ray_kustomization
def test_ray_listens_on_the_ports_its_pods_declare(directory: Path) -> None:
    """Serve's HTTP and gRPC proxies on every node's serve and serve-grpc ports (the Service's
    targets), Ray's metrics on every node's metrics port, which is TorchServe's; the head declares
    the ports KubeRay finds the GCS and the dashboard by, Ray's defaults. The gRPC proxy's message limit is
    TorchServe's request-size limit on every node."""
    objects = rendered(directory)
    (service,) = of_kind(objects, "RayService")
    config = serve_config(service)
    http, grpc = config["http_options"], config["grpc_options"]
    head, *_ = nodes = ray_nodes(objects)  # the head first
    internal = declared_ports(head.container)
    assert (internal.get("gcs-server"), internal.get("dashboard")) == (
        promised.RAY_GCS_PORT,
        promised.RAY_DASHBOARD_PORT,
    ), head.where
    for node in nodes:
        ports = declared_ports(node.container)
        assert ports.get(SERVE_PORT_NAME) == http["port"] == promised.RAY_SERVE_PORT, f"{node.where}: {ports}, {http}"
        assert ports.get(f"{SERVE_PORT_NAME}-grpc") == grpc["port"] == promised.RAY_SERVE_GRPC_PORT, (
            f"{node.where}: {ports}"
        )
        env = {item["name"]: item.get("value") for item in node.container.get("env", [])}
        assert env.get("RAY_SERVE_GRPC_MAX_MESSAGE_SIZE") == str(promised.MAX_REQUEST_BYTES), node.where
        metrics = int(node.start_params["metrics-export-port"])
        assert ports.get("metrics") == metrics == promised.METRICS_PORT, f"{node.where}: {ports}, {metrics}"
