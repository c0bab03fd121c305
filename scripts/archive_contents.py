"""What a model archive (.mar) says about itself, read from the zip without unpacking it."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import yaml


def identity(archive: Path) -> tuple[str, str]:
    """(model name, version), as the archive's manifest gives them."""
    with zipfile.ZipFile(archive) as mar:
        manifest = json.loads(mar.read("MAR-INF/MANIFEST.json"))
    return manifest["model"]["modelName"], manifest["model"]["modelVersion"]


def model_config(archive: Path) -> dict[str, Any]:
    """The model-config.yaml the archive carries (its batching, workers, handler section)."""
    with zipfile.ZipFile(archive) as mar:
        settings: dict[str, Any] = yaml.safe_load(mar.read("model-config.yaml"))
    return settings
