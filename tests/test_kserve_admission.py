"""KServe's rules (tests/kserve_admission.py) held against what deploy/ renders, offline.

Every kustomization is held to every rule on every supported KServe release the rule applies
to. Each rule is also shown to catch what it guards against: a copy of a rendered kustomization,
broken the way the rule forbids, must fail it (a rule that passes everything proves nothing).
docs/kserve-admission.md lists the same rules.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from kserve_admission import AUTOSCALER_CLASS, RULES, SERVER_TYPE, SUPPORTED, Rule, Version
from manifests import (
    DEPLOY_DIR,
    MODE_ANNOTATION,
    Objects,
    kustomizations,
    needs_kubectl,
    of_kind,
    relative,
    rendered,
    runtime_of,
)
from scripts.paths import ROOT

DOC = ROOT / "docs" / "kserve-admission.md"
KSERVE_DIR = DEPLOY_DIR / "kserve"


def release(version: Version) -> str:
    return ".".join(map(str, version))


@needs_kubectl
@pytest.mark.parametrize(
    ("directory", "version", "rule"),
    [
        pytest.param(directory, version, rule, id=f"{relative(directory)}-{release(version)}-{rule.id}")
        for directory in kustomizations()
        for version in SUPPORTED
        for rule in RULES
        if rule.applies_to(version)
    ],
)
def test_kustomization_keeps_the_rule(directory: Path, version: Version, rule: Rule) -> None:
    problems = list(rule.check(rendered(directory)))
    assert not problems, f"KServe {release(version)}, {rule.id} ({rule.what}; {rule.source}):\n" + "\n".join(problems)


@needs_kubectl
@pytest.mark.parametrize(
    "directory",
    [path for path in kustomizations() if path == KSERVE_DIR / "base" or KSERVE_DIR / "overlays" in path.parents],
    ids=relative,
)
def test_kserve_base_and_overlays_render_an_inference_service_with_its_runtime(directory: Path) -> None:
    """The rules that pair an InferenceService with its ServingRuntime (R25, R26, and the Knative
    ones, which read the pod KServe builds from both) have both to read in the base and every
    overlay."""
    objects = rendered(directory)
    services = of_kind(objects, "InferenceService")
    assert services and all(runtime_of(isvc, objects) is not None for isvc in services)


# --- Each rule catches its own breakage -------------------------------------------------------------

Break = Callable[[dict[str, Any], dict[str, Any]], object]


def set_in(node: dict[str, Any], path: str, value: Any) -> None:
    """node[a][b]... = value for path "a.b...", making the mappings on the way."""
    *parents, last = path.split(".")
    for key in parents:
        node = node.setdefault(key, {})
    node[last] = value


def kserve_container(runtime: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = runtime["spec"]["containers"][0]
    return found


# For each rule: the kustomization to break, and how (given its InferenceService and ServingRuntime).
BREAKAGES: dict[str, tuple[str, Break]] = {
    "R1": ("base", lambda isvc, _: set_in(isvc, "metadata.name", "ResNet50")),
    "R2": ("base", lambda isvc, _: set_in(isvc, "spec.predictor.containers", [{"name": "kserve-container"}])),
    "R3": ("base", lambda isvc, _: set_in(isvc, "spec.predictor.model.name", "kserve-container")),
    "R4": ("base", lambda isvc, _: set_in(isvc, "spec.predictor.minReplicas", 9)),
    "R6": ("base", lambda isvc, _: isvc["metadata"]["annotations"].update({AUTOSCALER_CLASS: "kpa"})),
    "R10": ("base", lambda isvc, _: set_in(isvc, "spec.predictor.scaleMetric", "concurrency")),
    "R11": ("knative", lambda isvc, _: set_in(isvc, "spec.predictor.scaleMetric", "cpu")),
    "R13": ("base", lambda isvc, _: isvc["metadata"]["annotations"].pop(MODE_ANNOTATION)),
    "R15": ("base", lambda isvc, _: isvc["metadata"]["annotations"].update({MODE_ANNOTATION: "RawDeployment"})),
    "R17": ("base", lambda isvc, _: set_in(isvc, "spec.predictor.storageUris", [{"uri": "s3://b/m"}])),
    "R18": ("base", lambda isvc, _: set_in(isvc, "spec.predictor.model.storageUri", "YOUR-BUCKET/resnet50")),
    "R22": ("base", lambda _, runtime: set_in(kserve_container(runtime), "env", [{"name": "PYTHONPATH"}])),
    "R24": ("base", lambda isvc, _: set_in(isvc, "spec.predictor.canaryTrafficPercent", 10)),
    "R25": ("base", lambda _, runtime: set_in(runtime, "spec.protocolVersions", ["v1"])),
    "R26": ("base", lambda _, runtime: set_in(kserve_container(runtime), "name", "torchserve")),
    "R27": ("knative", lambda _, runtime: kserve_container(runtime)["ports"].append({"containerPort": 7070})),
    "R28": ("base", lambda isvc, _: set_in(isvc, "spec.predictor.scaleMetric", "gpu")),
    "KN1": ("knative", lambda isvc, _: set_in(isvc, "spec.predictor.terminationGracePeriodSeconds", 30)),
    "KN2": ("knative", lambda _, runtime: kserve_container(runtime)["volumeMounts"][0].update(mountPath="/dev")),
    "TS1": ("base", lambda _, runtime: set_in(runtime, "metadata.annotations", {SERVER_TYPE: "torchserve"})),
}


def broken(kustomization: str, breakage: Break) -> Objects:
    """A copy of what deploy/kserve/<kustomization> renders, broken."""
    directory = KSERVE_DIR / kustomization if kustomization == "base" else KSERVE_DIR / "overlays" / kustomization
    objects = copy.deepcopy(rendered(directory))
    (isvc,) = of_kind(objects, "InferenceService")
    (runtime,) = of_kind(objects, "ServingRuntime")
    breakage(isvc, runtime)
    return objects


def test_every_rule_has_a_breakage() -> None:
    assert sorted(BREAKAGES) == sorted(rule.id for rule in RULES)


@needs_kubectl
@pytest.mark.parametrize("rule", [rule for rule in RULES if rule.id in BREAKAGES], ids=lambda rule: rule.id)
def test_rule_catches_its_breakage(rule: Rule) -> None:
    kustomization, breakage = BREAKAGES[rule.id]
    assert list(rule.check(broken(kustomization, breakage))), f"{rule.id} passes deploy/kserve/{kustomization} broken"


# --- The document ----------------------------------------------------------------------------------


def test_the_document_lists_the_same_rules() -> None:
    """docs/kserve-admission.md's table has one row per rule, in the same order, with the same
    releases and source (its other columns are prose)."""
    rows = re.findall(r"^\| ([A-Z]+\d+) \| ([^|]+) \| [^|]+ \| ([^|]+) \|", DOC.read_text(), re.MULTILINE)
    assert rows == [(rule.id, f"{release(rule.since)}+", rule.source) for rule in RULES]
