"""config/models/resnet50/: a version's settings, and the `model_snapshot` that serves them.

A version's settings are the shared model-config.yaml overlaid with the version's own file
(Triton-style: configuration beside each version). The archive build packs them into the .mar
(scripts/packaging/build_archives.py); TorchServe's `model_snapshot` property loads the versions at
start-up with their workers and batching, and, unlike registration, honours `defaultVersion`.
Every way this project starts TorchServe uses the one snapshot written here:
- config/config.properties carries it for a plain `torchserve --start` (the model config's workers);
- `make serve` and the tests write it sized to the machine (scripts/server/lifecycle.py);
- `make kserve-bundle` writes it sized to the pod (scripts/packaging/kserve_bundle.py).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from scripts.paths import DEFAULT_VERSION, MODEL_CONFIG_DIR, MODEL_NAME, SERVED_VERSIONS, archive_name

SNAPSHOT_PROPERTY = "model_snapshot"
# Per-version settings the snapshot carries besides the workers (TorchServe reads each as a number).
SNAPSHOT_SETTINGS = ("batchSize", "maxBatchDelay", "responseTimeout")


def version_settings(recipe_version: str) -> dict[str, Any]:
    """The shared settings, then the version's own; their `handler` sections merged alike."""
    shared = _load_yaml(MODEL_CONFIG_DIR / "model-config.yaml")
    own = _load_yaml(MODEL_CONFIG_DIR / f"{recipe_version}.yaml")
    handler = {**shared.pop("handler", {}), **own.pop("handler", {})}
    return {**shared, **own, "handler": handler}


def model_snapshot(
    versions: Sequence[str] = SERVED_VERSIONS,
    default: str = DEFAULT_VERSION,
    workers: int | None = None,
    recipes: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """TorchServe's start-up snapshot of `versions`, `default` the default; of no versions, a
    snapshot of nothing (a server that is given its models over the management API).

    `workers` per version, or the model config's own minWorkers/maxWorkers; `recipes` maps a
    version built like another (2.1 like 2.0) to the version whose settings it has.
    """
    if versions and default not in versions:
        raise ValueError(f"the default version {default} is not among the versions served: {', '.join(versions)}")
    entries = {}
    for version in versions:
        settings = version_settings((recipes or {}).get(version, version))
        entries[version] = {
            "defaultVersion": version == default,
            "marName": archive_name(version),
            "minWorkers": workers or int(settings["minWorkers"]),
            "maxWorkers": workers or int(settings["maxWorkers"]),
            **{key: int(settings[key]) for key in SNAPSHOT_SETTINGS},
        }
    return {"name": "startup.cfg", "modelCount": len(entries), "models": {MODEL_NAME: entries} if entries else {}}


def snapshot_line(snapshot: dict[str, Any]) -> str:
    """The snapshot as a config.properties line (one line of compact JSON)."""
    return f"{SNAPSHOT_PROPERTY}={json.dumps(snapshot, separators=(',', ':'))}"  # pragma: no mutate (JSON alike)


def _load_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist; each version needs its own file there (or build with --like VERSION)"
        )
    return yaml.safe_load(path.read_text()) or {}


if __name__ == "__main__":
    print(snapshot_line(model_snapshot()))
