"""`make kserve-bundle`: the folder to upload to an InferenceService's storageUri.

    build/kserve/config/config.properties       config/kserve/config.properties + model_snapshot
    build/kserve/config/metrics.yaml            config/metrics.yaml (TorchServe's and the handler's metrics)
    build/kserve/model-store/resnet50-1.0.mar
    build/kserve/model-store/resnet50-2.0.mar

KServe (and the plain Deployment of deploy/kubernetes/) mounts it at /mnt/models, where the
serving image (deploy/image/) starts TorchServe from config.properties. The model_snapshot loads
the versions (1.0 and 2.0, 2.0 the default, by default), each with the workers the rule of
scripts/worker_plan.py gives the pod (not the build machine).

    python -m scripts.packaging.kserve_bundle --weights random --pod-cpus 4
    python -m scripts.packaging.kserve_bundle --versions 2.0 2.1 --default 2.1 --out build/kserve-2.1   # a canary
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from scripts.model_config import model_snapshot, snapshot_line
from scripts.packaging import build_archives
from scripts.packaging.weights import OFFICIAL, RANDOM, WeightsError
from scripts.paths import BUILD_DIR, CONFIG_DIR, DEFAULT_VERSION, MODEL_STORE, SERVED_VERSIONS, archive_name
from scripts.worker_plan import GPU_MEMORY_PER_WORKER_GIB, WORKERS_PER_GPU, Machine, WorkerPlan, plan_workers

BUNDLE_DIR = BUILD_DIR / "kserve"
KSERVE_CONFIG = CONFIG_DIR / "kserve" / "config.properties"


@dataclass(frozen=True)
class Pod:
    """The resources the InferenceService gives each replica."""

    cpus: int
    gpus: int = 0

    def plan(self) -> WorkerPlan:
        """The worker rule, applied to the pod; a GPU is assumed to hold WORKERS_PER_GPU workers."""
        memory = (WORKERS_PER_GPU * GPU_MEMORY_PER_WORKER_GIB,) * self.gpus
        return plan_workers(Machine(cores=self.cpus, gpu_memory_gib=memory))


def write_bundle(
    archives: Mapping[str, Path],
    pod: Pod,
    out: Path,
    default: str = DEFAULT_VERSION,
    recipes: Mapping[str, str] | None = None,
) -> Path:
    """Lay out the bundle in `out`: the archives by version, and the configs that serve them.

    `recipes` maps a version built like another (2.1 like 2.0) to the version whose settings it has."""
    plan = pod.plan()
    snapshot = model_snapshot(tuple(archives), default, plan.workers_per_version, recipes)
    shutil.rmtree(out, ignore_errors=True)
    (out / "model-store").mkdir(parents=True)
    (out / "config").mkdir()
    for version, archive in archives.items():
        shutil.copyfile(archive, out / "model-store" / archive_name(version))
    footer = [
        f"# Written by scripts/packaging/kserve_bundle.py for a pod of {pod.cpus} CPUs and {pod.gpus} GPUs: "
        f"{plan.describe()}",
        f"number_of_gpu={plan.number_of_gpu}",
        snapshot_line(snapshot),
    ]
    shutil.copyfile(CONFIG_DIR / "metrics.yaml", out / "config" / "metrics.yaml")
    (out / "config" / "config.properties").write_text(KSERVE_CONFIG.read_text() + "\n" + "\n".join(footer) + "\n")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--weights",
        default=os.environ.get("WEIGHTS") or OFFICIAL,
        help=f"{OFFICIAL} (default), {RANDOM}, or a folder holding torchvision's files",
    )
    parser.add_argument("--pod-cpus", type=int, default=4, help="CPUs each replica gets (default 4)")
    parser.add_argument("--pod-gpus", type=int, default=0, help="GPUs each replica gets (default 0)")
    parser.add_argument(
        "--versions",
        nargs="+",
        default=list(SERVED_VERSIONS),
        help=f"versions to serve, each with its config/models/resnet50/VERSION.yaml "
        f"(default: {' '.join(SERVED_VERSIONS)})",
    )
    parser.add_argument("--default", default=DEFAULT_VERSION, help=f"the default version (default {DEFAULT_VERSION})")
    parser.add_argument("--out", type=Path, default=BUNDLE_DIR)
    args = parser.parse_args(argv)
    try:
        model_snapshot(args.versions, args.default)  # before building: an unknown default, a version without its file
        archives = {version: build_archives.build(version, args.weights, MODEL_STORE) for version in args.versions}
        bundle = write_bundle(archives, Pod(args.pod_cpus, args.pod_gpus), args.out, args.default)
    except (WeightsError, FileNotFoundError, RuntimeError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"KServe storage bundle: {bundle}\n  upload it to your storageUri (its config/ and model-store/ at the top)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
