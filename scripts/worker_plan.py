"""How many workers each model version gets, on which devices, with how many CPU threads.

The rule (docs/serving.md, "Workers"), sized for one hot version at a time:
- GPUs: every visible GPU serves every version; each version gets WORKERS_PER_GPU workers per
  GPU (default 2: one worker preprocesses while the other runs the forward pass), capped so that
  workers fit in GPU memory at about GPU_MEMORY_PER_WORKER_GIB each. TorchServe places the
  workers round-robin over the GPUs.
- CPU only: PyTorch's intra-op threads scale well up to ~4 cores for a batched ResNet50, and more
  workers than that only oversubscribe, so a version gets one worker per 4 cores (at least 1),
  each with cores / workers threads.
Every value can be overridden: WORKERS, NUM_GPUS, THREADS_PER_WORKER.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

WORKERS_PER_GPU = 2
GPU_MEMORY_PER_WORKER_GIB = 2.0
CORES_PER_CPU_WORKER = 4


@dataclass(frozen=True)
class Machine:
    cores: int
    gpu_memory_gib: tuple[float, ...]  # one entry per visible GPU

    @classmethod
    def detect(cls) -> Machine:
        import torch

        memory = (
            tuple(torch.cuda.get_device_properties(i).total_memory / 2**30 for i in range(torch.cuda.device_count()))
            if torch.cuda.is_available()
            else ()
        )
        return cls(cores=len(os.sched_getaffinity(0)), gpu_memory_gib=memory)


@dataclass(frozen=True)
class WorkerPlan:
    workers_per_version: int
    number_of_gpu: int
    threads_per_worker: int | None  # None: torch's default (every core), as stock TorchServe runs

    def describe(self) -> str:
        device = f"{self.number_of_gpu} GPU(s)" if self.number_of_gpu else "CPU"
        threads = self.threads_per_worker or "all"
        return f"{self.workers_per_version} worker(s) per version on {device}, {threads} CPU thread(s) each"


def plan_workers(
    machine: Machine, workers: int | None = None, num_gpus: int | None = None, threads_per_worker: int | None = None
) -> WorkerPlan:
    """Apply the rule above to `machine`; any argument given overrides its part of the rule."""
    gpus = len(machine.gpu_memory_gib) if num_gpus is None else min(num_gpus, len(machine.gpu_memory_gib))
    if workers is None:
        if gpus:
            fits = min(int(memory / GPU_MEMORY_PER_WORKER_GIB) for memory in machine.gpu_memory_gib[:gpus])
            workers = gpus * max(1, min(WORKERS_PER_GPU, fits))
        else:
            workers = max(1, machine.cores // CORES_PER_CPU_WORKER)
    if workers < 1:
        raise ValueError(f"WORKERS must be at least 1, got {workers}")
    if threads_per_worker is None:
        threads_per_worker = max(1, machine.cores // workers)
    return WorkerPlan(workers_per_version=workers, number_of_gpu=gpus, threads_per_worker=threads_per_worker)


def plan_from_environment(machine: Machine) -> WorkerPlan:
    def number(name: str) -> int | None:
        value = os.environ.get(name, "").strip()
        if not value:
            return None
        if not value.isdigit():
            raise ValueError(f"{name} must be a whole number, got {value!r}")
        return int(value)

    return plan_workers(machine, number("WORKERS"), number("NUM_GPUS"), number("THREADS_PER_WORKER"))
