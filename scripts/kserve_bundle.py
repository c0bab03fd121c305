"""`make kserve-bundle`: the folder to upload to an InferenceService's storageUri.

    build/kserve/config/config.properties    config/kserve/config.properties + model_snapshot
    build/kserve/model-store/resnet50-1.0.mar
    build/kserve/model-store/resnet50-2.0.mar

KServe mounts it at /mnt/models, and its TorchServe runtime starts the server from it; the
model_snapshot line loads both versions with 2.0 the default, each with the workers the rule of
scripts/worker_plan.py gives the pod (not the build machine).

    python -m scripts.kserve_bundle --weights random --pod-cpus 4
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from scripts import build_archives
from scripts.paths import BUILD_DIR, CONFIG_DIR, DEFAULT_VERSION, MODEL_NAME, MODEL_STORE, SERVED_VERSIONS, archive_name
from scripts.weights import OFFICIAL, RANDOM, WeightsError
from scripts.worker_plan import GPU_MEMORY_PER_WORKER_GIB, WORKERS_PER_GPU, Machine, WorkerPlan, plan_workers

BUNDLE_DIR = BUILD_DIR / "kserve"
BUNDLE_CONFIG = CONFIG_DIR / "kserve" / "config.properties"
# Per-version settings TorchServe's snapshot needs besides the workers (it reads each as a number).
SNAPSHOT_SETTINGS = ("batchSize", "maxBatchDelay", "responseTimeout")


@dataclass(frozen=True)
class Pod:
    """The resources the InferenceService gives each replica."""

    cpus: int
    gpus: int = 0

    def plan(self) -> WorkerPlan:
        """The worker rule, applied to the pod; a GPU is assumed to hold WORKERS_PER_GPU workers."""
        memory = (WORKERS_PER_GPU * GPU_MEMORY_PER_WORKER_GIB,) * self.gpus
        return plan_workers(Machine(cores=self.cpus, gpu_memory_gib=memory))


def model_snapshot(settings: dict[str, dict[str, int]], plan: WorkerPlan, default: str) -> dict:
    """TorchServe's start-up snapshot: every version with its workers and batching, one default."""
    versions = {version: {"defaultVersion": version == default, "marName": archive_name(version),
                          "minWorkers": plan.workers_per_version, "maxWorkers": plan.workers_per_version,
                          **{key: int(values[key]) for key in SNAPSHOT_SETTINGS}}
                for version, values in settings.items()}
    return {"name": "startup.cfg", "modelCount": len(versions), "models": {MODEL_NAME: versions}}


def write_bundle(archives: dict[str, Path], settings: dict[str, dict[str, int]], pod: Pod, out: Path) -> Path:
    """Lay out the bundle in `out`: the archives by version, and the config that serves them."""
    plan = pod.plan()
    shutil.rmtree(out, ignore_errors=True)
    (out / "model-store").mkdir(parents=True)
    (out / "config").mkdir()
    for version, archive in archives.items():
        shutil.copyfile(archive, out / "model-store" / archive_name(version))
    snapshot = model_snapshot(settings, plan, DEFAULT_VERSION)
    lines = [f"# Written by scripts/kserve_bundle.py for a pod of {pod.cpus} CPUs and {pod.gpus} GPUs: "
             f"{plan.describe()}",
             f"number_of_gpu={plan.number_of_gpu}",
             f"model_snapshot={json.dumps(snapshot, separators=(',', ':'))}"]
    config = out / "config" / "config.properties"
    config.write_text(BUNDLE_CONFIG.read_text() + "\n" + "\n".join(lines) + "\n")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default=os.environ.get("WEIGHTS") or OFFICIAL,
                        help=f"{OFFICIAL} (default), {RANDOM}, or a folder holding torchvision's files")
    parser.add_argument("--pod-cpus", type=int, default=4, help="CPUs each replica gets (default 4)")
    parser.add_argument("--pod-gpus", type=int, default=0, help="GPUs each replica gets (default 0)")
    parser.add_argument("--out", type=Path, default=BUNDLE_DIR)
    args = parser.parse_args(argv)
    try:
        archives = {version: build_archives.build(version, args.weights, MODEL_STORE) for version in SERVED_VERSIONS}
        settings = {version: build_archives.archive_model_config(version, args.weights) for version in SERVED_VERSIONS}
        bundle = write_bundle(archives, settings, Pod(args.pod_cpus, args.pod_gpus), args.out)
    except (WeightsError, FileNotFoundError, RuntimeError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"KServe storage bundle: {bundle}\n  upload it to your storageUri (its config/ and model-store/ at the top)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
