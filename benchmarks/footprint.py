"""What a served engine holds in memory: the PSS (each shared page split among the processes that
share it, so figures add up) of each process that runs the model, and of the whole engine."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import psutil

from scripts.endpoints import Server
from scripts.ray_serve import lifecycle as ray_engine
from scripts.server import lifecycle as torchserve

MIB = 1024 * 1024


@dataclass(frozen=True)
class Footprint:
    cold_start_s: float  # from the start command to the first answer
    model_processes_mib: list[float]  # each TorchServe worker, or each Ray Serve replica of the model
    engine_mib: float  # every process of the engine, those included


@dataclass(frozen=True)
class EngineProcesses:
    """An engine's processes, and those of them that run the model."""

    every: Callable[[Server], list[psutil.Process]]
    running_the_model: Callable[[Server], list[psutil.Process]]


def _torchserve_workers(server: Server) -> list[psutil.Process]:
    return [p for p in torchserve.members(server) if "model_service_worker" in " ".join(p.cmdline())]


TORCHSERVE = EngineProcesses(torchserve.members, _torchserve_workers)
RAY_SERVE = EngineProcesses(ray_engine.members, ray_engine.replicas)


def measure(engine: EngineProcesses, server: Server, cold_start_s: float) -> Footprint:
    return Footprint(
        cold_start_s,
        [_pss_mib(process) for process in engine.running_the_model(server)],
        sum(_pss_mib(process) for process in engine.every(server)),
    )


def _pss_mib(process: psutil.Process) -> float:
    try:
        return float(process.memory_full_info().pss) / MIB
    except psutil.Error:  # it ended between the listing and the reading
        return 0.0
