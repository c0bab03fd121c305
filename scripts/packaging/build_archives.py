"""Build TorchServe archives (.mar) of resnet50, one per version, into the model store.

Each archive carries the handler, the weights and a model-config.yaml merged from
config/models/resnet50/model-config.yaml, the version's own file and torchvision's weight
metadata (preprocessing parameters and class names), so the .mar describes itself.

    python -m scripts.packaging.build_archives                 # 1.0 and 2.0
    python -m scripts.packaging.build_archives 2.1 --like 2.0  # a rebuild of 2.0's recipe as version 2.1
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
import yaml

from model_identity import weight_sets
from scripts.model_config import version_settings
from scripts.packaging.compile_forward import build_targets, compile_forwards
from scripts.packaging.weights import OFFICIAL, RANDOM, WeightsError, weights_file
from scripts.paths import BUILD_DIR, HANDLER_DIR, MODEL_NAME, MODEL_STORE, SERVED_VERSIONS, archive_name

HANDLER_ENTRY = HANDLER_DIR / "resnet50_handler.py"


def build(
    version: str,
    weights_source: str,
    model_store: Path = MODEL_STORE,
    recipe_version: str | None = None,
    with_compiled_forward: bool = True,
    settings: dict[str, int] | None = None,
) -> Path:
    """Build one version's archive unless an identical one is already in the store.

    With `with_compiled_forward`, the archive also carries the forward pass compiled for this
    machine's CPU and GPU (scripts/packaging/compile_forward.py). `settings` override top-level model-config.yaml keys
    (batchSize, maxBatchDelay, jobQueueSize, ...).
    """
    config = {**archive_model_config(recipe_version or version, weights_source), **(settings or {})}
    weights = weights_file(config["handler"]["weights"], weights_source)
    archive = model_store / archive_name(version)
    stamp = archive.with_name(archive.name + ".inputs")
    build_options = f"compiled={with_compiled_forward} {build_targets()} torch={torch.__version__}"
    fingerprint = _fingerprint(config, weights, f"{version} {build_options}")
    if archive.is_file() and stamp.is_file() and stamp.read_text() == fingerprint:
        return archive
    model_store.mkdir(parents=True, exist_ok=True)
    BUILD_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=BUILD_DIR) as staging:
        extra_files = _handler_files()
        compiled = compile_forwards(weights, config["batchSize"], Path(staging)) if with_compiled_forward else []
        if compiled:
            config["handler"]["compiled_forward"] = {package.device: package.handler_config() for package in compiled}
            extra_files += [package.package for package in compiled]
        config_file = Path(staging) / "model-config.yaml"
        config_file.write_text(yaml.safe_dump(config, sort_keys=False))
        _run_archiver(version, weights, config_file, Path(staging), extra_files)
        # Replace atomically: a server registering this file never sees half of it.
        os.replace(Path(staging) / f"{MODEL_NAME}.mar", archive)
    stamp.write_text(fingerprint)
    return archive


def archive_model_config(recipe_version: str, weights_source: str) -> dict[str, Any]:
    """The version's settings, then what torchvision's weights define."""
    config = version_settings(recipe_version)
    handler = config["handler"]
    weights = weight_sets()[handler["weights"]]
    preset = weights.transforms()
    handler.update(
        random_weights=weights_source == RANDOM,
        preprocess={
            "resize_size": preset.resize_size[0],
            "crop_size": preset.crop_size[0],
            "interpolation": preset.interpolation.value,
            "mean": list(preset.mean),
            "std": list(preset.std),
        },
        categories=list(weights.meta["categories"]),
    )
    return config


def _handler_files() -> list[Path]:
    return sorted(path for path in HANDLER_DIR.glob("*.py") if path != HANDLER_ENTRY)


def _fingerprint(config: dict[str, Any], weights: Path, build: str) -> str:
    """What the archive is made of, the weights by content: a file's name and size do not
    prove its bytes (two random-weights files of one seed are the same size)."""
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode())
    digest.update(build.encode())
    with weights.open("rb") as file:
        digest.update(hashlib.file_digest(file, "sha256").digest())
    for path in [HANDLER_ENTRY, *_handler_files()]:
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _run_archiver(version: str, weights: Path, config_file: Path, export_path: Path, extra_files: list[Path]) -> None:
    command = [
        sys.executable,
        "-m",
        "model_archiver.model_packaging",
        "--model-name",
        MODEL_NAME,
        "--version",
        version,
        "--serialized-file",
        str(weights),
        "--handler",
        str(HANDLER_ENTRY),
        "--extra-files",
        ",".join(str(path) for path in extra_files),
        "--config-file",
        str(config_file),
        "--export-path",
        str(export_path),
    ]
    result = subprocess.run(
        command, capture_output=True, text=True, check=False
    )  # checked below, its output in the error
    if result.returncode != 0:
        raise RuntimeError(f"torch-model-archiver failed for {version}:\n{result.stderr or result.stdout}")


def _setting(text: str) -> tuple[str, int]:
    key, _, value = text.partition("=")
    if not key or not value.isdigit():
        raise argparse.ArgumentTypeError(f"expected KEY=NUMBER (e.g. batchSize=16), got {text!r}")
    return key, int(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("versions", nargs="*", default=list(SERVED_VERSIONS))
    parser.add_argument(
        "--weights",
        default=os.environ.get("WEIGHTS") or OFFICIAL,
        help="official (default), random, or a folder holding torchvision's files",
    )
    parser.add_argument("--like", help="build with the recipe (config file) of this version")
    parser.add_argument("--model-store", type=Path, default=MODEL_STORE)
    parser.add_argument(
        "--no-compile", action="store_true", help="skip compiling the forward pass (faster build, slower inference)"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=NUMBER",
        type=_setting,
        help="override a model-config.yaml setting, e.g. --set batchSize=16",
    )
    args = parser.parse_args(argv)
    if args.weights == RANDOM:
        print(
            "WARNING: building with SEEDED RANDOM weights: every label these archives return is "
            "meaningless. Use WEIGHTS=official for real predictions.",
            file=sys.stderr,
        )
    try:
        for version in args.versions:
            archive = build(
                version,
                args.weights,
                args.model_store,
                args.like,
                with_compiled_forward=not args.no_compile,
                settings=dict(args.set),
            )
            print(f"{archive}  ({MODEL_NAME} {version}, weights: {args.weights})")
    except (WeightsError, FileNotFoundError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
