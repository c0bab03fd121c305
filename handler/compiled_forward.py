"""The forward pass the archive build compiled ahead of time with AOTInductor, for this device.

A package is native code for one target: a CPU instruction set (AVX512, AVX2, ...) or a GPU
architecture (sm_90, ...). The archive carries one package per device kind it was built for;
a worker uses the one for its device only if the targets match, and runs larger batches through
it in chunks of the size it was compiled for. Otherwise it runs the eager model, so an archive
always serves.

The precision and memory layout of every forward pass live here too, so the packages (compiled
by scripts/packaging/compile_forward.py) and the eager model take exactly the same input.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping

import torch

from handler_config import CompiledForwardConfig

logger = logging.getLogger(__name__)

Forward = Callable[[torch.Tensor], torch.Tensor]


def inference_dtype(device: torch.device) -> torch.dtype:
    """Half precision on a GPU (tensor cores); fp32 on a CPU, where fp16 is slow or absent."""
    return torch.float16 if device.type == "cuda" else torch.float32


def for_inference(model: torch.nn.Module, device: torch.device, dtype: torch.dtype | None = None) -> torch.nn.Module:
    """The model in eval mode on `device`, in its inference precision (or `dtype`), channels_last."""
    # Module.to takes a memory format with a device and dtype; torch's overloads list it only alone.
    prepared: torch.nn.Module = model.eval().to(  # type: ignore[call-overload]
        device, dtype or inference_dtype(device), memory_format=torch.channels_last
    )
    return prepared


def load_package(path: str, device: torch.device) -> Forward:
    """An AOTInductor package's forward, on `device` (its GPU index where it has one)."""
    # torch's stubs type device.index as int; it is None for a device named without one ("cpu").
    index = -1 if device.index is None else device.index  # type: ignore[redundant-expr]
    return torch._inductor.aoti_load_package(path, device_index=index)


def native_target(device: torch.device) -> str:
    """What compiled code is specific to: the CPU's vector instruction set or the GPU's
    architecture, and the torch it was compiled with (a package calls into that torch's library;
    a serving image often has another)."""
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        architecture = f"sm_{major}{minor}"
    else:
        architecture = torch.backends.cpu.get_cpu_capability()
    return f"{architecture}, torch {torch.__version__}"


class CompiledForward:
    """Runs a batch through the package, in chunks of the compiled batch size where it is larger
    (requests that carry several images make such batches)."""

    def __init__(self, config: CompiledForwardConfig, device: torch.device, model_dir: str) -> None:
        self.runner = load_package(os.path.join(model_dir, config.package), device)
        self.max_batch = config.max_batch

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        if batch.shape[0] <= self.max_batch:
            return self.runner(batch)
        return torch.cat([self.runner(chunk) for chunk in batch.split(self.max_batch)])


def select_forward(
    packages: Mapping[str, CompiledForwardConfig], device: torch.device, model_dir: str, eager: Forward
) -> Forward:
    """The archive's package for this device if its target matches this device, else `eager`."""
    compiled = packages.get(device.type)
    if compiled is None:
        logger.info("The archive has no forward compiled for %s: using the eager model", device.type)
        return eager
    here = native_target(device)
    if here != compiled.target:
        logger.warning(
            "The archive's %s forward was compiled for %s and this device is %s: using the eager "
            "model. Rebuild the archive on this machine, with this torch, to compile it.",
            device.type,
            compiled.target,
            here,
        )
        return eager
    try:
        return CompiledForward(compiled, device, model_dir)
    except RuntimeError as error:  # e.g. a driver or torch unlike the build machine's
        logger.warning(
            "The archive's %s forward could not be loaded (%s): using the eager model. Rebuild the "
            "archive with this machine's torch and drivers to compile it.",
            device.type,
            error,
        )
        return eager
