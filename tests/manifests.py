"""Reading the manifests under deploy/ as tests/test_manifests.py checks them: the YAML files and
kustomizations there, what `kubectl kustomize` renders from each, the TorchServe container and
pod specs inside the rendered objects, and kserve's own deserializer for the InferenceServices."""

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
# The image KServe's TorchServe runtime (kserve-torchserve) runs; runtimeVersion is its tag.
KSERVE_RUNTIME_IMAGE = "pytorch/torchserve-kfs"
SERVING_KINDS = ("InferenceService", "Deployment")
# The Deployment's container that runs TorchServe (deploy/kubernetes/base/deployment.yaml).
TORCHSERVE_CONTAINER = "torchserve"


def relative(path: Path) -> str:
    """A test id that reads like the path a person would open."""
    return str(path.relative_to(ROOT))


def yaml_files() -> list[Path]:
    """Every YAML file under deploy/: resources, patches and kustomizations alike."""
    return sorted(path for path in DEPLOY_DIR.rglob("*") if path.suffix in (".yaml", ".yml"))


def kustomizations() -> list[Path]:
    """Every directory kustomize can build: each base and each overlay."""
    return sorted(path.parent for path in DEPLOY_DIR.rglob("kustomization.yaml"))


def documents(path: Path) -> list[Any]:
    """The YAML documents of a file, empty ones left out."""
    return [document for document in yaml.safe_load_all(path.read_text()) if document is not None]


@functools.cache
def rendered(directory: Path) -> tuple[dict[str, Any], ...]:
    """What `kubectl kustomize` makes of `directory`: the objects the cluster would receive.
    Cached, so each directory renders once however many tests read it."""
    # cast: the tests that render are skipped when kubectl is not installed (KUBECTL None).
    result = subprocess.run(
        [cast(str, KUBECTL), "kustomize", str(directory)], capture_output=True, text=True, timeout=60, check=False
    )
    if result.returncode:
        pytest.fail(f"kubectl kustomize {relative(directory)} failed:\n{result.stderr}")
    return tuple(document for document in yaml.safe_load_all(result.stdout) if document is not None)


def of_kind(objects: tuple[dict[str, Any], ...], *kinds: str) -> list[dict[str, Any]]:
    return [obj for obj in objects if obj.get("kind") in kinds]


def name_of(obj: dict[str, Any]) -> str:
    return f"{obj['kind']}/{obj['metadata']['name']}"


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


@dataclass(frozen=True)
class Serving:
    """The container that runs TorchServe, wherever the manifest puts it: an InferenceService's
    predictor model (KServe merges it into its runtime's container) or a Deployment's container."""

    where: str
    image: str
    resources: dict[str, Any]
    env: dict[str, str]

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


def containers(pod_spec: dict[str, Any], init: bool = False) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = pod_spec.get("containers", []) + (pod_spec.get("initContainers", []) if init else [])
    return found


def serving_containers(objects: tuple[dict[str, Any], ...]) -> list[Serving]:
    """The TorchServe container of every InferenceService and Deployment rendered."""
    found = []
    for obj in of_kind(objects, *SERVING_KINDS):
        if obj["kind"] == "InferenceService":
            model = obj["spec"]["predictor"]["model"]
            where, image, spec = f"{name_of(obj)} predictor", f"{KSERVE_RUNTIME_IMAGE}:{model['runtimeVersion']}", model
        else:
            (spec,) = [
                container
                for container in containers(obj["spec"]["template"]["spec"])
                if container["name"] == TORCHSERVE_CONTAINER
            ]
            where, image = f"{name_of(obj)} container {TORCHSERVE_CONTAINER}", spec["image"]
        env = {variable["name"]: variable["value"] for variable in spec.get("env", []) if "value" in variable}
        found.append(Serving(where, image, spec.get("resources", {}), env))
    return found


def pod_specs(objects: tuple[dict[str, Any], ...]) -> list[tuple[str, dict[str, Any], list[dict[str, Any]]]]:
    """(where, pod-level securityContext, containers) for every pod a manifest describes; an
    InferenceService's predictor is a pod spec whose serving container is its model."""
    pods = []
    for obj in of_kind(objects, *SERVING_KINDS):
        if obj["kind"] == "InferenceService":
            predictor = obj["spec"]["predictor"]
            pods.append((name_of(obj), predictor.get("securityContext", {}), [predictor["model"]]))
        else:
            spec = obj["spec"]["template"]["spec"]
            pods.append((name_of(obj), spec.get("securityContext", {}), containers(spec, init=True)))
    return pods


def batch_size() -> int:
    """TorchServe's batchSize for the default version, which KServe's routes reach."""
    return int(version_settings(DEFAULT_VERSION)["batchSize"])


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
        """obj -> V1beta1InferenceService -> dict, as kserve's client would send it."""
        model = self.deserialize(types.SimpleNamespace(data=json.dumps(obj)), "V1beta1InferenceService")
        assert isinstance(model, kserve.V1beta1InferenceService)
        serialized: dict[str, Any] = self.sanitize_for_serialization(model)
        return serialized


def differences(original: Any, returned: Any, path: str = "") -> list[str]:
    """Where two JSON values differ, by path: what a round trip lost, added or changed."""
    if isinstance(original, dict) and isinstance(returned, dict):
        found = []
        for key in sorted(original.keys() | returned.keys()):
            if key not in returned:
                found.append(f"{path}.{key}: lost")
            elif key not in original:
                found.append(f"{path}.{key}: added {returned[key]!r}")
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
