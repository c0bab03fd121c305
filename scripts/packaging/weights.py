"""Get the ResNet50 weights file for an archive: official (verified) or seeded random.

WEIGHTS selects the source:
- "official" (default): torchvision's file, downloaded once into torch.hub's cache by torch.hub's
  own downloader, which shows progress and checks the SHA-256 prefix in the file name;
- a folder: the official file taken from there (for offline machines), verified the same way;
- "random": seeded random weights, calibrated so different images get different classes, for
  offline smoke runs and tests. Their labels are meaningless.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import torch
from torch.hub import HASH_REGEX, download_url_to_file, get_dir

from model_identity import weight_sets
from scripts.packaging.random_weights import random_state_dict, recipe_id
from scripts.paths import BUILD_DIR, MODEL_NAME

RANDOM = "random"
OFFICIAL = "official"


class WeightsError(RuntimeError):
    """The weights cannot be provided; the message says what to do."""


def weights_file(weights_name: str, source: str = OFFICIAL) -> Path:
    """Return a local, verified state-dict file for `weights_name` (e.g. IMAGENET1K_V2)."""
    if source == RANDOM:
        return random_weights_file(seed=_seed_for(weights_name))
    url: str = weight_sets()[weights_name].url
    file_name = os.path.basename(url)
    if source == OFFICIAL:
        return _download(url, Path(get_dir()) / "checkpoints" / file_name)
    local = Path(source).expanduser() / file_name
    if not local.is_file():
        raise WeightsError(f"{local} does not exist; put torchvision's {file_name} ({url}) in {source}")
    verify_hash_prefix(local)
    return local


def verify_hash_prefix(path: Path) -> None:
    """torchvision names each file after the start of its SHA-256, as torch.hub checks on download."""
    expected = HASH_REGEX.search(path.name)
    if expected is None:
        raise WeightsError(f"{path.name} carries no hash in its name; use torchvision's original file name")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if not digest.startswith(expected.group(1)):
        raise WeightsError(
            f"{path} is corrupt or not torchvision's file: SHA-256 {digest[:12]}... does not start "
            f"with {expected.group(1)}; delete it and fetch it again"
        )


def random_weights_file(seed: int, folder: Path = BUILD_DIR / "weights") -> Path:
    """Seeded, so every build and test run produces the same tensors; calibrated so that
    different images get different classes (scripts/packaging/random_weights.py)."""
    path = folder / f"{MODEL_NAME}-random-{recipe_id()}-seed{seed}.pth"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial")
        torch.save(random_state_dict(seed), partial)
        os.replace(partial, path)
    return path


def _seed_for(weights_name: str) -> int:
    """Distinct seeds per weights set, so versions built from random weights differ."""
    return list(weight_sets().__members__).index(weights_name)


def _download(url: str, destination: Path) -> Path:
    if destination.is_file():
        verify_hash_prefix(destination)
        return destination
    destination.parent.mkdir(parents=True, exist_ok=True)
    expected = HASH_REGEX.search(destination.name)
    print(f"Downloading {url} to {destination}", file=sys.stderr)
    try:
        download_url_to_file(url, str(destination), hash_prefix=expected.group(1) if expected else None)
    except (OSError, RuntimeError) as error:
        raise WeightsError(
            f"could not download {url} ({error}).\nOffline? Copy that file into {destination.parent} "
            f"or into a folder passed as WEIGHTS=<folder>; or build with WEIGHTS=random for a smoke "
            f"run (meaningless labels)"
        ) from None
    return destination
