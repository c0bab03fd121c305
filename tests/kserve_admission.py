"""KServe's rules that touch deploy/kserve, as data: one entry per rule, with the KServe releases it
applies to, where KServe (or Knative, which KServe's Knative mode runs on) states it, and a check
of what `kubectl kustomize` renders. Some are admission webhooks (refused at `kubectl apply`),
some the controller's (the InferenceService is accepted, then fails), some Knative's (the
Knative Service KServe makes is refused). Each bites only on a cluster; the checks find a
breach offline.

tests/test_kserve_admission.py holds every rendered kustomization to every rule on every
supported release; docs/kserve-admission.md lists the same rules for people.

Sources are file:line at a release tag of kserve/kserve, abbreviated:
VAL  pkg/apis/serving/v1beta1/inference_service_validation.go
CMP  pkg/apis/serving/v1beta1/component.go
CONST pkg/constants/constants.go
PRED pkg/controller/v1beta1/inferenceservice/components/predictor.go
UTILS pkg/controller/v1beta1/inferenceservice/utils/utils.go
and, for Knative, knative/serving at knative-v1.15.2 (what KServe 0.16's installer ships):
KVAL pkg/apis/serving/k8s_validation.go, KMASK pkg/apis/serving/fieldmask.go.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from manifests import (
    KSERVE_CONTAINER,
    MODE_ANNOTATION,
    Objects,
    annotations_of,
    containers,
    kserve_pod,
    name_of,
    of_kind,
    runtime_of,
)

Version = tuple[int, int]
# The KServe releases the manifests support: 0.16 (the first to know the mode names Standard and
# Knative) to 0.20 (the newest).
SUPPORTED: tuple[Version, ...] = ((0, 16), (0, 17), (0, 18), (0, 19), (0, 20))

STANDARD, KNATIVE = "Standard", "Knative"
AUTOSCALER_CLASS = "serving.kserve.io/autoscalerClass"
SERVER_TYPE = "serving.kserve.io/server-type"
# The predictor implementations KServe counts (PredictorSpec.GetImplementations); containers
# count apart.
IMPLEMENTATIONS = (
    "xgboost",
    "pytorch",
    "triton",
    "sklearn",
    "tensorflow",
    "onnx",
    "pmml",
    "lightgbm",
    "paddle",
    "huggingface",
    "model",
)
ISVC_NAME = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
# storageUri schemes KServe's storage initializer reads (ValidateStorageURI, inferenceservice/utils).
STORAGE_SCHEMES = (
    "gs://",
    "s3://",
    "pvc://",
    "file://",
    "https://",
    "http://",
    "hdfs://",
    "webhdfs://",
    "oci://",
    "hf://",
)
# The ports Knative keeps for its queue-proxy and profiling (KVAL reservedPorts).
KNATIVE_RESERVED_PORTS = frozenset({8012, 8013, 8022, 9090, 9091, 8008})
# Pod spec fields Knative refuses (KMASK PodSpecMask: never, or behind a feature flag that is
# off by default).
KNATIVE_REFUSED_POD_FIELDS = (
    "terminationGracePeriodSeconds",
    "securityContext",
    "initContainers",
    "tolerations",
    "nodeSelector",
    "affinity",
)
# Container securityContext fields Knative accepts (KMASK SecurityContextMask).
KNATIVE_SECURITY_FIELDS = frozenset(
    [
        "capabilities",
        "readOnlyRootFilesystem",
        "runAsUser",
        "runAsGroup",
        "runAsNonRoot",
        "allowPrivilegeEscalation",
        "seccompProfile",
        "privileged",
    ]
)

Problems = Iterator[str]
Check = Callable[[Objects], Problems]


@dataclass(frozen=True)
class Rule:
    """One rule: `since` is the first supported KServe release it applies to (every later one too)."""

    id: str
    what: str
    since: Version
    source: str
    check: Check

    def applies_to(self, version: Version) -> bool:
        return version >= self.since


# --- What the checks read ------------------------------------------------------------------------


def inference_services(objects: Objects) -> list[dict[str, Any]]:
    return of_kind(objects, "InferenceService")


def predictor(isvc: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = isvc["spec"].get("predictor", {})
    return found


def model(isvc: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = predictor(isvc).get("model", {})
    return found


def mode(isvc: dict[str, Any]) -> str | None:
    return annotations_of(isvc).get(MODE_ANNOTATION)


def knative_pods(objects: Objects) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, pod spec) of each InferenceService in Knative mode whose runtime is rendered."""
    for isvc in inference_services(objects):
        runtime = runtime_of(isvc, objects)
        if mode(isvc) == KNATIVE and runtime is not None:
            yield name_of(isvc), kserve_pod(isvc, runtime)


def isvc_containers(isvc: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every container an InferenceService's own spec holds: each component's containers, the
    predictor's workers', and the container its model or framework spec is."""
    for component in ("predictor", "transformer", "explainer"):
        yield from isvc["spec"].get(component, {}).get("containers", [])
    yield from predictor(isvc).get("workerSpec", {}).get("containers", [])
    yield from (predictor(isvc)[key] for key in IMPLEMENTATIONS if key in predictor(isvc))


# --- The checks: each yields what KServe (or Knative) would refuse --------------------------------


def check_name(objects: Objects) -> Problems:
    for isvc in inference_services(objects):
        if not ISVC_NAME.fullmatch(isvc["metadata"]["name"]):
            yield f"{name_of(isvc)}: not a lowercase DNS label starting with a letter"


def check_one_implementation(objects: Objects) -> Problems:
    for isvc in inference_services(objects):
        spec = predictor(isvc)
        found = [key for key in IMPLEMENTATIONS if key in spec]
        listed = spec.get("containers", [])
        found += ["containers"] * sum(container.get("name") == KSERVE_CONTAINER for container in listed)
        if listed and not found:
            found.append("containers")  # KServe then takes the first container for the predictor
        if len(found) != 1:
            yield f"{name_of(isvc)}: {len(found)} predictor implementations {found}, not exactly one"


def check_no_model_name(objects: Objects) -> Problems:
    for isvc in inference_services(objects):
        for key in IMPLEMENTATIONS:
            if predictor(isvc).get(key, {}).get("name"):
                yield f"{name_of(isvc)}: spec.predictor.{key}.name is set"


def check_replicas(objects: Objects) -> Problems:
    for isvc in inference_services(objects):
        low, high = predictor(isvc).get("minReplicas", 1), predictor(isvc).get("maxReplicas", 0)
        if low < 0 or high < 0 or (high != 0 and low > high):
            yield f"{name_of(isvc)}: minReplicas {low}, maxReplicas {high}"


def check_autoscaler_class(objects: Objects) -> Problems:
    for isvc in inference_services(objects):
        value = annotations_of(isvc).get(AUTOSCALER_CLASS)
        if value is not None and value not in {"hpa", "external", "keda", "none"}:
            yield f"{name_of(isvc)}: autoscaler class {value!r}"


def check_hpa(objects: Objects) -> Problems:
    for isvc in inference_services(objects):
        if mode(isvc) != STANDARD:
            continue
        metric, target = predictor(isvc).get("scaleMetric", "cpu"), predictor(isvc).get("scaleTarget")
        if annotations_of(isvc).get(AUTOSCALER_CLASS) != "hpa":
            yield f"{name_of(isvc)}: Standard mode without {AUTOSCALER_CLASS}: hpa, so KServe checks no scaling field"
        if metric not in {"cpu", "memory"}:
            yield f"{name_of(isvc)}: scaleMetric {metric} for an HPA"
        if target is not None and not 1 <= target <= 100:
            yield f"{name_of(isvc)}: scaleTarget {target} outside 1..100"


def check_kpa(objects: Objects) -> Problems:
    for isvc in inference_services(objects):
        if mode(isvc) != KNATIVE:
            continue
        metric, target = predictor(isvc).get("scaleMetric", "concurrency"), predictor(isvc).get("scaleTarget")
        if "deploymentStrategy" in predictor(isvc):
            yield f"{name_of(isvc)}: deploymentStrategy in Knative mode"
        if metric not in {"concurrency", "rps"}:
            yield f"{name_of(isvc)}: scaleMetric {metric} in Knative mode"
        if metric == "rps" and target is not None and target < 1:
            yield f"{name_of(isvc)}: rps target {target}"


def check_mode_stated(objects: Objects) -> Problems:
    for isvc in inference_services(objects):
        if mode(isvc) is None:
            yield f"{name_of(isvc)}: no {MODE_ANNOTATION}; the cluster's default would decide it, once and for all"


def check_mode_name(objects: Objects) -> Problems:
    for isvc in inference_services(objects):
        if mode(isvc) not in {None, STANDARD, KNATIVE}:
            yield f"{name_of(isvc)}: deployment mode {mode(isvc)!r}, not Standard or Knative"


def check_one_storage_field(objects: Objects) -> Problems:
    for isvc in inference_services(objects):
        if "storageUri" in model(isvc) and "storageUris" in predictor(isvc):
            yield f"{name_of(isvc)}: both storageUri and storageUris"


def check_storage_scheme(objects: Objects) -> Problems:
    for isvc in inference_services(objects):
        uri = model(isvc).get("storageUri", "")
        if not uri.startswith(STORAGE_SCHEMES):
            yield f"{name_of(isvc)}: storageUri {uri!r} has no scheme the storage initializer reads"


def check_no_pythonpath(objects: Objects) -> Problems:
    runtime_containers = [
        (name_of(sr), c) for sr in of_kind(objects, "ServingRuntime") for c in sr["spec"]["containers"]
    ]
    isvc_owned = [(name_of(isvc), c) for isvc in inference_services(objects) for c in isvc_containers(isvc)]
    for where, container in runtime_containers + isvc_owned:
        if any(variable["name"] == "PYTHONPATH" for variable in container.get("env", [])):
            yield f"{where}: PYTHONPATH in container {container.get('name', 'model')!r}"


def check_canary_in_knative(objects: Objects) -> Problems:
    for isvc in inference_services(objects):
        if "canaryTrafficPercent" in predictor(isvc) and mode(isvc) != KNATIVE:
            yield f"{name_of(isvc)}: canaryTrafficPercent in {mode(isvc)} mode, where KServe ignores it"


def check_protocol(objects: Objects) -> Problems:
    for isvc in inference_services(objects):
        runtime = runtime_of(isvc, objects)
        listed = runtime["spec"].get("protocolVersions", []) if runtime else []
        protocol = model(isvc).get("protocolVersion", "v1")
        if listed and protocol not in listed:
            yield f"{name_of(isvc)}: protocol {protocol}, runtime lists {listed}"


def check_runtime(objects: Objects) -> Problems:
    for isvc in inference_services(objects):
        runtime = runtime_of(isvc, objects)
        if runtime is None:
            yield f"{name_of(isvc)}: runtime {model(isvc).get('runtime')!r} is not a ServingRuntime of the same render"
            continue
        spec, wanted = runtime["spec"], model(isvc).get("modelFormat", {})
        if spec.get("disabled"):
            yield f"{name_of(runtime)} is disabled"
        if not any(
            supported["name"] == wanted.get("name") and wanted.get("version") in {None, supported.get("version")}
            for supported in spec.get("supportedModelFormats", [])
        ):
            yield f"{name_of(runtime)} does not list model format {wanted}"
        if not any(container["name"] == KSERVE_CONTAINER for container in spec["containers"]):
            yield f"{name_of(runtime)} has no {KSERVE_CONTAINER}"


def check_schema(objects: Objects) -> Problems:
    for isvc in inference_services(objects):
        spec = predictor(isvc)
        if not spec:
            yield f"{name_of(isvc)}: no spec.predictor"
        if "model" in spec and not model(isvc).get("modelFormat", {}).get("name"):
            yield f"{name_of(isvc)}: model without modelFormat.name"
        if spec.get("scaleMetric") not in {None, "cpu", "memory", "concurrency", "rps"}:
            yield f"{name_of(isvc)}: scaleMetric {spec['scaleMetric']!r}"
    for runtime in of_kind(objects, "ServingRuntime"):
        spec = runtime["spec"]
        if not spec.get("containers") or not all(container.get("name") for container in spec["containers"]):
            yield f"{name_of(runtime)}: no containers, or one without a name"
        for supported in spec.get("supportedModelFormats", []):
            if not supported.get("name") or supported.get("priority", 1) < 1:
                yield f"{name_of(runtime)}: model format {supported}"


def check_knative_port(objects: Objects) -> Problems:
    for where, pod in knative_pods(objects):
        ports = [port for container in containers(pod) for port in container.get("ports", [])]
        if len(ports) > 1:
            yield f"{where}: {len(ports)} container ports; Knative allows one"
        for port in ports:
            if port.get("name", "") not in {"", "h2c", "http1"} or port.get("protocol", "TCP") != "TCP":
                yield f"{where}: port {port}: name must be empty, h2c or http1, protocol TCP"
            if port["containerPort"] in KNATIVE_RESERVED_PORTS:
                yield f"{where}: port {port['containerPort']} is Knative's"


def check_knative_pod_fields(objects: Objects) -> Problems:
    for where, pod in knative_pods(objects):
        if refused := [field for field in KNATIVE_REFUSED_POD_FIELDS if field in pod]:
            yield f"{where}: pod fields Knative refuses: {refused}"
        for container in containers(pod):
            context = container.get("securityContext", {})
            if refused := sorted(context.keys() - KNATIVE_SECURITY_FIELDS):
                yield f"{where} container {container['name']}: securityContext fields Knative refuses: {refused}"
            if context.get("capabilities", {}).get("add") or context.get("privileged"):
                yield f"{where} container {container['name']}: adds capabilities or privilege"


def check_knative_mounts(objects: Objects) -> Problems:
    for where, pod in knative_pods(objects):
        volumes = {volume["name"]: volume for volume in pod.get("volumes", [])}
        for container in containers(pod):
            mounts = container.get("volumeMounts", [])
            paths = [posixpath.normpath(mount["mountPath"]) for mount in mounts]
            if reserved := [path for path in paths if path in {"/", "/dev", "/dev/log"}]:
                yield f"{where} container {container['name']}: mounts at Knative's reserved {reserved}"
            if len(set(paths)) != len(paths):
                yield f"{where} container {container['name']}: a mount path twice"
            if writable := [
                mount["name"]
                for mount in mounts
                if not mount.get("readOnly")
                and not {"emptyDir", "persistentVolumeClaim"} & volumes[mount["name"]].keys()
            ]:
                yield f"{where} container {container['name']}: {writable} must be mounted readOnly"


def check_no_torchserve_server_type(objects: Objects) -> Problems:
    for runtime in of_kind(objects, "ServingRuntime"):
        if annotations_of(runtime).get(SERVER_TYPE) == "torchserve":
            yield f"{name_of(runtime)}: server-type torchserve (KServe's TorchServe defaults; -gpu tags on 0.20)"


# --- The rules -------------------------------------------------------------------------------------

# Rules in every supported release (many are older: the sources say since when).
ALL = SUPPORTED[0]

RULES: tuple[Rule, ...] = (
    Rule(
        "R1",
        "InferenceService name: a lowercase DNS label starting with a letter",
        ALL,
        "VAL v0.16.0 L276-278, v0.20.0 L469-471",
        check_name,
    ),
    Rule(
        "R2",
        "exactly one predictor implementation (model, a framework, or containers with a kserve-container)",
        ALL,
        "VAL v0.16.0 L143, v0.20.0 L163; CMP v0.16.0 L415-441; v1beta1/predictor.go v0.16.0 L136, v0.20.0 L168",
        check_one_implementation,
    ),
    Rule(
        "R3",
        "no name on spec.predictor.model (or a framework spec)",
        (0, 16),
        "VAL validatePredictor v0.16.0 L158-187, v0.20.0 L268-297 (PR #4535)",
        check_no_model_name,
    ),
    Rule(
        "R4",
        "replicas: min and max at least 0, min at most max (unless max is 0); min defaults to 1",
        ALL,
        "CMP validateReplicas v0.16.0 L374, v0.20.0 L374",
        check_replicas,
    ),
    Rule(
        "R6",
        "serving.kserve.io/autoscalerClass one of hpa, external, keda, none",
        ALL,
        "VAL v0.16.0 L284-294, v0.20.0 L477-487; CONST v0.16.0 L251, v0.20.0 L277",
        check_autoscaler_class,
    ),
    Rule(
        "R10",
        "Standard mode: autoscalerClass hpa (else nothing is checked), scaleMetric cpu or memory, scaleTarget 1..100",
        ALL,
        "VAL v0.16.0 L253-273 and L334, v0.20.0 L446-466 and L527-565",
        check_hpa,
    ),
    Rule(
        "R11",
        "Knative mode: scaleMetric concurrency or rps (never cpu or memory), no deploymentStrategy",
        ALL,
        "VAL v0.16.0 L452, v0.20.0 L645-668",
        check_kpa,
    ),
    Rule(
        "R13",
        "deploymentMode stated: an update may not change it, so the cluster's default must not pick it",
        ALL,
        "VAL validateDeploymentMode v0.16.0 L493-503, v0.20.0 L691-700 (PR #4423, from 0.15.1)",
        check_mode_stated,
    ),
    Rule(
        "R15",
        "deployment mode named Standard or Knative (the legacy RawDeployment/Serverless break updates on 0.16.0)",
        (0, 16),
        "CONST v0.16.0 L464-469, v0.20.0 L562-567 (PR #4608); VAL v0.16.0 L259",
        check_mode_name,
    ),
    Rule(
        "R17",
        "storageUri and storageUris not both set",
        (0, 16),
        "VAL v0.16.0 L506-629, v0.20.0 L728-852",
        check_one_storage_field,
    ),
    Rule(
        "R18",
        "storageUri in a scheme the storage initializer reads (checked when reconciled)",
        ALL,
        "UTILS ValidateStorageURI v0.20.0 L411",
        check_storage_scheme,
    ),
    Rule(
        "R22",
        "no PYTHONPATH env in an InferenceService's or ServingRuntime's containers",
        (0, 18),
        "VAL v0.18.1 L200, v0.20.0 L302-354; servingruntime_webhook.go v0.18.1 and v0.20.0 L270 (PR #5340)",
        check_no_pythonpath,
    ),
    Rule(
        "R24",
        "canaryTrafficPercent only in Knative mode (Standard mode ignores it silently)",
        ALL,
        "reconcilers/knative/ksvc_reconciler.go v0.20.0 L134-145, its only reader",
        check_canary_in_knative,
    ),
    Rule(
        "R25",
        "the InferenceService's protocolVersion (v1 when unset) listed by its runtime (checked when reconciled)",
        ALL,
        "PRED v0.16.0 L297, v0.20.0 L355",
        check_protocol,
    ),
    Rule(
        "R26",
        "the runtime named exists beside it, is enabled, lists its modelFormat and has a kserve-container "
        "(checked when reconciled)",
        ALL,
        "PRED v0.20.0 L346, L364, L388; UTILS v0.20.0 L489",
        check_runtime,
    ),
    Rule(
        "R27",
        "Knative mode: one container port in the pod, named '', h2c or http1, TCP, not one of Knative's",
        ALL,
        "KVAL L60-66, L466-495, L704-730",
        check_knative_port,
    ),
    Rule(
        "R28",
        "CRD schemas: a predictor, modelFormat.name, scaleMetric cpu|memory|concurrency|rps; runtime containers "
        "named, model formats named with priority at least 1",
        ALL,
        "the InferenceService and ServingRuntime CRDs at each tag; servingruntime_types.go v0.20.0 L45",
        check_schema,
    ),
    Rule(
        "KN1",
        "Knative mode: no pod field Knative refuses (terminationGracePeriodSeconds, pod securityContext, "
        "initContainers, tolerations, nodeSelector, affinity), container securityContext fields it allows",
        ALL,
        "KMASK PodSpecMask L204-282, SecurityContextMask L687",
        check_knative_pod_fields,
    ),
    Rule(
        "KN2",
        "Knative mode: no volume mounted at /, /dev or /dev/log or twice; only emptyDir and PVC mounts writable",
        ALL,
        "KVAL L43-47, L665-689",
        check_knative_mounts,
    ),
    Rule(
        "TS1",
        "our runtime without serving.kserve.io/server-type: torchserve (KServe would add its TorchServe "
        "wrapper's defaults, and on 0.20 a -gpu image tag on GPU pods)",
        (0, 17),
        "inference_service_defaults.go v0.17.1 L385-403; UTILS UpdateImageTag v0.20.0 L339-388",
        check_no_torchserve_server_type,
    ),
)
