"""Compile ResNet50's forward pass ahead of time with AOTInductor, at archive build.

Workers then load a ready .pt2 package in a fraction of a second instead of compiling at start
(torch.compile would take many seconds per worker, again at every worker restart), and run at
least as fast as the eager channels_last forward (docs/benchmarks.md has the figures).

One package per device kind the build machine has: always the CPU (fp32), and the GPU (fp16,
channels_last) when the build runs where torch sees one. Each is native code for the build
machine's CPU instruction set or GPU architecture; the handler uses it only on a device of the
same target (else the eager model, with a warning; handler/compiled_forward.py), for batches
of 1 to the archive's batchSize, the batch shapes TorchServe forms. The CPU package needs a C++
compiler: without one the archive is built with the eager forward only, and the build says so.
"""

from __future__ import annotations

import os
import shutil
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import torch

# The handler's own precision, layout and targets, so the packages take exactly its input.
from compiled_forward import for_inference, inference_dtype, native_target
from model_identity import architecture
from scripts.paths import MODEL_NAME

PACKAGE_NAMES = {device: f"{MODEL_NAME}_{device}.pt2" for device in ("cpu", "cuda")}


@dataclass(frozen=True)
class CompiledPackage:
    device: str
    package: Path
    target: str
    max_batch: int

    def handler_config(self) -> dict[str, object]:
        return {"package": self.package.name, "target": self.target, "max_batch": self.max_batch}


def build_devices() -> list[torch.device]:
    """The device kinds this machine can compile for: the CPU, and its first GPU if it has one."""
    return [torch.device("cpu")] + ([torch.device("cuda", 0)] if torch.cuda.is_available() else [])


def build_targets() -> str:
    """What packages built here depend on, for the archive's fingerprint: the devices' targets
    and the toolchain, so installing g++ or pointing CUDA_HOME at CUDA's headers rebuilds."""
    targets = " ".join(f"{device.type}={native_target(device)}" for device in build_devices())
    return f"{targets} cxx={shutil.which('g++')} cuda_home={os.environ.get('CUDA_HOME')}"


def missing_compiler() -> str | None:
    compiler = (sysconfig.get_config_var("CXX") or "g++").split()[0]
    return None if shutil.which(compiler) or shutil.which("g++") else compiler


def compile_forwards(weights: Path, max_batch: int, output_dir: Path) -> list[CompiledPackage]:
    """One package per device kind of this machine; none if there is no C++ compiler.

    A failed CPU compile fails the build; a failed GPU compile (CUDA headers are often missing on
    machines that only run CUDA) is reported and leaves GPUs on the eager forward."""
    compiler = missing_compiler()
    if compiler:
        print(
            f"note: no C++ compiler ({compiler}) found, so the archive uses the eager forward "
            f"(up to ~10% slower on CPU in the recorded runs). Install g++ and rebuild to compile it.",
            file=sys.stderr,
        )
        return []
    cpu, *gpus = build_devices()
    packages = [compile_forward(weights, max_batch, output_dir, cpu)]
    for gpu in gpus:
        try:
            packages.append(compile_forward(weights, max_batch, output_dir, gpu))
        except Exception as error:  # the CPU package and the eager GPU path still serve
            print(
                f"WARNING: compiling the GPU forward failed, so on GPUs this archive runs the eager "
                f"fp16 forward: {type(error).__name__}: {error}\nAOTInductor needs g++ and the CUDA headers "
                f"(CUDA_HOME); fix that and rebuild, or build with --no-compile.",
                file=sys.stderr,
            )
    return packages


def compile_forward(weights: Path, max_batch: int, output_dir: Path, device: torch.device) -> CompiledPackage:
    """Export the model with a dynamic batch dimension (1 to max_batch) and compile it for `device`."""
    fp32 = architecture()
    fp32.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    model = for_inference(fp32, device)
    example = torch.randn(min(2, max_batch), 3, 224, 224, device=device, dtype=inference_dtype(device))
    example = example.contiguous(memory_format=torch.channels_last)
    # torch.export needs a range for a dynamic dimension: batchSize 1 compiles one static shape.
    dynamic = ({0: torch.export.Dim("batch", min=1, max=max_batch)},) if max_batch > 1 else None
    with torch.inference_mode():
        program = torch.export.export(model, (example,), dynamic_shapes=dynamic)
    package = output_dir / PACKAGE_NAMES[device.type]
    torch._inductor.aoti_compile_and_package(program, package_path=str(package), inductor_configs={"freezing": True})
    return CompiledPackage(device=device.type, package=package, target=native_target(device), max_batch=max_batch)
