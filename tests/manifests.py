"""Reading the manifests under deploy/ as tests/test_manifests.py and tests/test_kserve_admission.py
check them: the YAML files and kustomizations there, what `kubectl kustomize` renders from each,
the pod KServe builds from an InferenceService and its ServingRuntime, the serving container of
every pod (a RayService's Ray nodes included), the Service KubeRay makes for a RayService,
kserve's own deserializer, and the PodMonitor and RayService schemas of the Prometheus Operator
and of KubeRay."""

from __future__ import annotations

import functools
import json
import shutil
import subprocess
import types
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import kserve
import kserve.models
import kubernetes.client.models
import pytest
import yaml

from scripts.harness.private_hooks import kserve_api_client
from scripts.model_config import version_settings
from scripts.packaging.kserve_bundle import Pod
from scripts.paths import DEFAULT_VERSION, ROOT
from scripts.worker_plan import WorkerPlan

DEPLOY_DIR = ROOT / "deploy"
KUBECTL = shutil.which("kubectl")
GPU = "nvidia.com/gpu"
# The serving image (deploy/image/) under the placeholder registry the manifests name, and its
# tag for each kind of pod.
SERVING_IMAGE = "registry.example.com/resnet50-serving"
CPU_TAG, GPU_TAG = "cpu", "cuda"
# The image's readiness check (scripts/server/container_entry.py): every version's workers READY.
READY_COMMAND = ["/opt/venv/bin/python", "/opt/resnet50/container_entry.py", "ready"]
# The only paths the image writes: each pod gives them an emptyDir.
WRITABLE_PATHS = ("/tmp", "/home/model-server")
SERVING_KINDS = ("InferenceService", "Deployment")
# The runtime container KServe merges an InferenceService's model into.
KSERVE_CONTAINER = "kserve-container"
# The Deployment's container that runs TorchServe (deploy/kubernetes/base/deployment.yaml).
TORCHSERVE_CONTAINER = "torchserve"
MODE_ANNOTATION = "serving.kserve.io/deploymentMode"
# Field names as the Kubernetes API spells them: a pod spec's and a container's.
POD_FIELDS = frozenset(kubernetes.client.models.V1PodSpec.attribute_map.values())
CONTAINER_FIELDS = frozenset(kubernetes.client.models.V1Container.attribute_map.values())
# The ServingRuntime fields KServe copies into the pod spec (MergePodSpec, utils.go).
RUNTIME_POD_FIELDS = ("nodeSelector", "affinity", "tolerations", "volumes", "imagePullSecrets")
# The PodMonitor spec schema of the oldest Prometheus Operator the manifests support (0.79, the
# first with portNumber), descriptions removed: see its $comment.
PODMONITOR_SCHEMA = ROOT / "tests" / "podmonitor_spec_schema.json"
# The RayService spec schema of KubeRay v1.7.0, descriptions and pod templates removed: see its $comment.
RAYSERVICE_SCHEMA = ROOT / "tests" / "rayservice_spec_schema.json"
# KubeRay's names: the container port its Serve Service targets (the name, or this prefix).
SERVE_PORT_NAME = "serve"
# Where `ray start` writes unless told otherwise.
RAY_TEMP_DIR = "/tmp/ray"

Objects = tuple[dict[str, Any], ...]

needs_kubectl = pytest.mark.skipif(
    KUBECTL is None,
    reason="kubectl is not on PATH: the kustomizations under deploy/ were not rendered, so their schema "
    "validation, KServe round trip, KServe rules and semantic checks did not run (YAML parsing and the secret "
    "scan did)",
)


def relative(path: Path) -> str:
    """A test id that reads like the path a person would open."""
    return str(path.relative_to(ROOT))


def yaml_files() -> list[Path]:
    """Every YAML file under deploy/: resources, patches and kustomizations alike."""
    return sorted(path for path in DEPLOY_DIR.rglob("*") if path.suffix in (".yaml", ".yml"))


def kustomizations() -> list[Path]:
    """Every directory kustomize can build: each base, overlay and monitoring kustomization."""
    return sorted(path.parent for path in DEPLOY_DIR.rglob("kustomization.yaml"))


def documents(path: Path) -> list[Any]:
    """The YAML documents of a file, empty ones left out."""
    return [document for document in yaml.safe_load_all(path.read_text()) if document is not None]


@functools.cache
def rendered(directory: Path) -> Objects:
    """What `kubectl kustomize` makes of `directory`: the objects the cluster would receive.
    Cached, so each directory renders once however many tests read it."""
    # cast: the tests that render are skipped when kubectl is not installed (KUBECTL None).
    result = subprocess.run(
        [cast(str, KUBECTL), "kustomize", str(directory)], capture_output=True, text=True, timeout=60, check=False
    )
    if result.returncode:
        pytest.fail(f"kubectl kustomize {relative(directory)} failed:\n{result.stderr}")
    return tuple(document for document in yaml.safe_load_all(result.stdout) if document is not None)


def of_kind(objects: Objects, *kinds: str) -> list[dict[str, Any]]:
    return [obj for obj in objects if obj.get("kind") in kinds]


def name_of(obj: dict[str, Any]) -> str:
    return f"{obj['kind']}/{obj['metadata']['name']}"


def annotations_of(obj: dict[str, Any]) -> dict[str, str]:
    found: dict[str, str] = obj["metadata"].get("annotations", {})
    return found


def is_kubernetes_api(obj: dict[str, Any]) -> bool:
    """A built-in API group (core, apps, policy, *.k8s.io...), which kubernetes-validate has schemas for."""
    group = obj["apiVersion"].rpartition("/")[0]
    return group == "" or "." not in group or group.endswith(".k8s.io")


def walk(node: Any) -> Iterator[dict[str, Any]]:
    """Every mapping in a YAML document, depth first."""
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk(value)


def containers(pod_spec: dict[str, Any], init: bool = False) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = pod_spec.get("containers", []) + (pod_spec.get("initContainers", []) if init else [])
    return found


def declared_ports(container: dict[str, Any]) -> dict[str, int]:
    """A container's named ports: what a Service's or a probe's port name resolves to."""
    return {port["name"]: port["containerPort"] for port in container.get("ports", []) if "name" in port}


# --- The pod KServe builds ---------------------------------------------------------------------


def runtime_of(isvc: dict[str, Any], objects: Objects) -> dict[str, Any] | None:
    """The ServingRuntime of the same render that the InferenceService's model names, if any."""
    wanted = isvc["spec"]["predictor"].get("model", {}).get("runtime")
    return next((obj for obj in of_kind(objects, "ServingRuntime") if obj["metadata"]["name"] == wanted), None)


def merged(base: Any, patch: Any) -> Any:
    """`patch` merged onto `base` as KServe merges a model into its runtime's container (a
    strategic merge): mappings key by key, lists of named items (env) by name, anything else
    replaced."""
    if isinstance(base, dict) and isinstance(patch, dict):
        return {**base, **{key: merged(base[key], value) if key in base else value for key, value in patch.items()}}
    if isinstance(base, list) and isinstance(patch, list) and all(is_named(item) for item in base + patch):
        by_name = {item["name"]: item for item in base}
        by_name.update({item["name"]: merged(by_name.get(item["name"], {}), item) for item in patch})
        return list(by_name.values())
    return patch


def is_named(item: Any) -> bool:
    return isinstance(item, dict) and "name" in item


def kserve_pod(isvc: dict[str, Any], runtime: dict[str, Any]) -> dict[str, Any]:
    """The predictor's pod spec as KServe builds it from the InferenceService and its runtime,
    before its webhooks inject the storage initializer (and Knative its queue-proxy): the
    runtime's pod fields under the predictor's, the model merged into the runtime's
    kserve-container, then the predictor's own containers."""
    predictor = isvc["spec"]["predictor"]
    model = {key: value for key, value in predictor.get("model", {}).items() if key in CONTAINER_FIELDS}
    runtime_containers = [
        merged(container, model) if container["name"] == KSERVE_CONTAINER else container
        for container in runtime["spec"]["containers"]
    ]
    pod = merged(
        {key: runtime["spec"][key] for key in RUNTIME_POD_FIELDS if key in runtime["spec"]},
        {key: value for key, value in predictor.items() if key in POD_FIELDS and key != "containers"},
    )
    return {**pod, "containers": runtime_containers + predictor.get("containers", [])}


def kserve_pod_labels(isvc: dict[str, Any], runtime: dict[str, Any]) -> dict[str, str]:
    """The labels KServe gives the predictor's pods (buildObjectMeta, components/predictor.go):
    the runtime's, the InferenceService's, the predictor's, then its own two."""
    return {
        **runtime["spec"].get("labels", {}),
        **isvc["metadata"].get("labels", {}),
        **isvc["spec"]["predictor"].get("labels", {}),
        "serving.kserve.io/inferenceservice": isvc["metadata"]["name"],
        "component": "predictor",
    }


# --- The serving container of every pod ---------------------------------------------------------


@dataclass(frozen=True)
class Serving:
    """The container that serves the model, in the pod that runs it: TorchServe in a KServe
    predictor's kserve-container (the runtime's, with the model merged in) or in the Deployment's
    container, or Ray on a RayService's node (RayNode)."""

    where: str
    source: dict[str, Any]
    container: dict[str, Any]
    pod: dict[str, Any]
    labels: dict[str, str]

    @property
    def mode(self) -> str | None:
        """KServe's deployment mode (Standard, Knative); None for a plain Deployment."""
        return annotations_of(self.source).get(MODE_ANNOTATION) if self.source["kind"] == "InferenceService" else None

    @property
    def image(self) -> str:
        image: str = self.container["image"]
        return image

    @property
    def resources(self) -> dict[str, Any]:
        resources: dict[str, Any] = self.container.get("resources", {})
        return resources

    @property
    def mounts(self) -> dict[str, dict[str, Any]]:
        """The pod's volumes, by the path the container mounts each at."""
        volumes = {volume["name"]: volume for volume in self.pod.get("volumes", [])}
        return {mount["mountPath"]: volumes[mount["name"]] for mount in self.container.get("volumeMounts", [])}

    @property
    def writable_paths(self) -> tuple[str, ...]:
        """Where the container writes: the image's paths."""
        return WRITABLE_PATHS

    @property
    def env(self) -> dict[str, str]:
        return {
            variable["name"]: variable["value"] for variable in self.container.get("env", []) if "value" in variable
        }

    def cpus(self) -> int:
        """Whole CPUs requested: the worker rule counts cores."""
        cpu = str(self.resources.get("requests", {}).get("cpu"))
        assert cpu.isdigit(), f"{self.where}: CPU request {cpu!r} is not a whole number of CPUs"
        return int(cpu)

    def gpus(self) -> int:
        return int(self.resources.get("limits", {}).get(GPU, 0))

    def plan(self) -> WorkerPlan:
        """The worker plan the bundle for this pod is built with (`make kserve-bundle POD_CPUS POD_GPUS`)."""
        return Pod(self.cpus(), self.gpus()).plan()


def serving_containers(objects: Objects) -> list[Serving]:
    """The TorchServe container of every InferenceService and Deployment rendered. An
    InferenceService whose runtime is not in the same render fails here (and rule R26)."""
    found = []
    for obj in of_kind(objects, *SERVING_KINDS):
        if obj["kind"] == "InferenceService":
            runtime = runtime_of(obj, objects)
            assert runtime is not None, f"{name_of(obj)}: its runtime is not in the same render"
            pod, labels, name = kserve_pod(obj, runtime), kserve_pod_labels(obj, runtime), KSERVE_CONTAINER
        else:
            template = obj["spec"]["template"]
            pod, labels, name = template["spec"], template["metadata"]["labels"], TORCHSERVE_CONTAINER
        (container,) = [container for container in containers(pod) if container["name"] == name]
        found.append(Serving(f"{name_of(obj)} container {name}", obj, container, pod, labels))
    return found


@dataclass(frozen=True)
class RayNode(Serving):
    """The Ray container of a RayService's head group or of one of its worker groups, from which
    KubeRay makes `count` pods, each a Ray node on which Serve may place replicas."""

    group: dict[str, Any]
    count: int

    @property
    def start_params(self) -> dict[str, str]:
        """`ray start`'s flags, as KubeRay passes them."""
        params: dict[str, str] = self.group.get("rayStartParams", {})
        return params

    @property
    def writable_paths(self) -> tuple[str, ...]:
        """The image's paths and Ray's temp dir (sessions, logs, the object store's spill files)."""
        return (*WRITABLE_PATHS, self.start_params.get("temp-dir", RAY_TEMP_DIR))


def ray_nodes(objects: Objects) -> list[RayNode]:
    """Every RayService's head (one pod) and worker groups (`replicas` pods each). KubeRay runs
    Ray in a pod template's first container (utils.RayContainerIndex)."""
    found = []
    for service in of_kind(objects, "RayService"):
        cluster = service["spec"]["rayClusterConfig"]
        groups = [("head", cluster["headGroupSpec"], 1)] + [
            (f"worker group {group['groupName']}", group, group["replicas"])
            for group in cluster.get("workerGroupSpecs", [])
        ]
        for role, group, count in groups:
            template = group["template"]
            container = template["spec"]["containers"][0]
            where = f"{name_of(service)} {role} container {container['name']}"
            found.append(
                RayNode(where, service, container, template["spec"], template["metadata"]["labels"], group, count)
            )
    return found


def pod_template(node: RayNode) -> dict[str, Any]:
    """A Ray node's pod template as a core v1 PodTemplate, which kubernetes-validate has the schema of."""
    return {
        "apiVersion": "v1",
        "kind": "PodTemplate",
        "metadata": {"name": node.where},
        "template": node.group["template"],
    }


def serve_service(service: dict[str, Any]) -> dict[str, Any]:
    """The Service KubeRay puts in front of a RayService's Serve proxies (BuildServeService,
    ray-operator/controllers/ray/common/service.go, v1.7.0): spec.serveService, whose ports are,
    for each head container port named serve or serve-*, serveService's port of that name or else
    one of KubeRay's on the container's number; serveService's own ports where the head names none."""
    head = service["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    given = service["spec"].get("serveService", {"metadata": {"name": f"{service['metadata']['name']}-serve-svc"}})
    own = {port.get("name"): port for port in given.get("spec", {}).get("ports", [])}
    serving = [
        own.get(name, {"name": name, "port": number})
        for name, number in declared_ports(head).items()
        if name == SERVE_PORT_NAME or name.startswith(f"{SERVE_PORT_NAME}-")
    ]
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": given["metadata"],
        "spec": {**given.get("spec", {}), "ports": serving or list(own.values())},
    }


def serve_config(service: dict[str, Any]) -> dict[str, Any]:
    """A RayService's Serve applications and options: serveConfigV2, which the CRD keeps as a string."""
    config: dict[str, Any] = yaml.safe_load(service["spec"]["serveConfigV2"])
    return config


def batch_size() -> int:
    """TorchServe's batchSize for the default version, which KServe's routes reach."""
    return int(version_settings(DEFAULT_VERSION)["batchSize"])


# --- Schemas -----------------------------------------------------------------------------------


# mypy takes no base class from a call; kserve_api_client() makes this one at run time (and
# kserve, which it subclasses, ships no types, so the base would be Any in any case).
class KServeModels(kserve_api_client()):  # type: ignore[misc]
    """kserve's own ApiClient deserializer, able to build the Kubernetes types its models name.

    kserve 0.21 looks every type name up in kserve.models, so V1ObjectMeta, V1ResourceRequirements,
    V1EnvVar... fail there. Those are built by the kubernetes client's models instead, whose
    validation refuses unknown fields: a Kubernetes field misspelled, or at the wrong level (a
    container field in the predictor's pod securityContext), fails. A misspelled KServe field is
    dropped by kserve's deserializer and shows up as lost in the round trip."""

    def deserialize_value(self, data: Any, klass: Any) -> Any:
        if (
            isinstance(klass, str)
            and data is not None
            and not hasattr(kserve.models, klass)
            and hasattr(kubernetes.client.models, klass)
        ):
            return getattr(kubernetes.client.models, klass).model_validate(data)
        return super().deserialize_value(data, klass)

    def round_trip(self, obj: dict[str, Any]) -> dict[str, Any]:
        """obj -> its kserve model (V1beta1InferenceService, V1alpha1ServingRuntime) -> dict, as
        kserve's client would send it."""
        klass = KSERVE_MODELS[obj["kind"]]
        model = self.deserialize(types.SimpleNamespace(data=json.dumps(obj)), klass)
        assert isinstance(model, getattr(kserve, klass))
        serialized: dict[str, Any] = self.sanitize_for_serialization(model)
        return serialized


# The kserve package's model for each KServe kind the manifests use.
KSERVE_MODELS = {"InferenceService": "V1beta1InferenceService", "ServingRuntime": "V1alpha1ServingRuntime"}


def differences(original: Any, returned: Any, path: str = "") -> list[str]:
    """Where two JSON values differ, by path: what a round trip lost, added or changed. An empty
    string added is the client's, not a difference: kserve's model requires the model's container
    name, which the manifests leave out (rule R3), and sends it as "", which KServe reads as unset."""
    if isinstance(original, dict) and isinstance(returned, dict):
        found = []
        for key in sorted(original.keys() | returned.keys()):
            if key not in returned:
                found.append(f"{path}.{key}: lost")
            elif key not in original:
                found += [f"{path}.{key}: added {returned[key]!r}"] if returned[key] != "" else []
            else:
                found += differences(original[key], returned[key], f"{path}.{key}")
        return found
    if isinstance(original, list) and isinstance(returned, list) and len(original) == len(returned):
        return [
            line
            for index, (before, after) in enumerate(zip(original, returned, strict=True))
            for line in differences(before, after, f"{path}[{index}]")
        ]
    if original == returned and type(original) is type(returned):
        return []
    return [f"{path}: {original!r} became {returned!r}"]


def closed(schema: dict[str, Any]) -> dict[str, Any]:
    """An OpenAPI schema that refuses unknown fields, as `kubectl apply` (strict field validation)
    does: every object with properties gets additionalProperties false, unless it preserves
    unknown fields."""
    result = dict(schema)
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            result[key] = closed(schema[key])
    for key in ("allOf", "anyOf", "oneOf"):
        if key in schema:
            result[key] = [closed(branch) for branch in schema[key]]
    if "properties" in schema:
        result["properties"] = {name: closed(field) for name, field in schema["properties"].items()}
        if not schema.get("x-kubernetes-preserve-unknown-fields"):
            result.setdefault("additionalProperties", False)
    return result


@functools.cache
def podmonitor_spec_schema() -> dict[str, Any]:
    schema: dict[str, Any] = closed(json.loads(PODMONITOR_SCHEMA.read_text()))
    return schema


@functools.cache
def rayservice_spec_schema() -> dict[str, Any]:
    schema: dict[str, Any] = closed(json.loads(RAYSERVICE_SCHEMA.read_text()))
    return schema
