"""In-process figures, no server: (c) the raw eager forward, the machine's compute limit; (c')
the forward the archive compiled; (d) the whole handler, JPEG bytes in and top-k out; (e) the
handler explaining what it classifies.

Every figure is the median images per second over one-second windows, steadier than one long
window on a shared machine. On a GPU each window ends with a synchronise, so queued work counts.
"""

from __future__ import annotations

import functools
import statistics
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import torch

from compiled_forward import for_inference, inference_dtype, load_package
from model_identity import architecture
from scripts.harness.in_process import InProcessModel, Request
from scripts.packaging.compile_forward import PACKAGE_NAMES


def images_per_second(step: Callable[[], object], images_per_step: int, seconds: float, device: torch.device) -> float:
    def finish() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    rates = []
    with torch.inference_mode():
        step()  # warm-up: allocations, cuDNN algorithm choice, first-call compilation
        finish()
        for _ in range(max(3, int(seconds))):
            images, started = 0, time.perf_counter()
            while time.perf_counter() - started < 1.0:
                step()
                images += images_per_step
            finish()
            rates.append(images / (time.perf_counter() - started))
    return statistics.median(rates)


def synthetic_batch(batch_size: int, device: torch.device) -> torch.Tensor:
    batch = torch.randn(batch_size, 3, 224, 224, device=device, dtype=inference_dtype(device))
    return batch.contiguous(memory_format=torch.channels_last)


def eager_forward(device: torch.device, batch_sizes: list[int], seconds: float) -> dict[str, float]:
    """(c) The bare eager channels_last forward on synthetic input, in the handler's precision."""
    model = for_inference(architecture(), device)
    precision = str(inference_dtype(device)).removeprefix("torch.")
    return {
        f"eager {precision} channels_last, batch {size}": images_per_second(
            functools.partial(model, synthetic_batch(size, device)), size, seconds / len(batch_sizes), device
        )
        for size in batch_sizes
    }


def compiled_forward(
    archive: Path, device: torch.device, batch_size: int, seconds: float, out: Path
) -> dict[str, float]:
    """(c') The AOTInductor package the archive carries for this device, if it has one."""
    with zipfile.ZipFile(archive) as mar:
        if PACKAGE_NAMES[device.type] not in mar.namelist():
            return {}
        package = mar.extract(PACKAGE_NAMES[device.type], out)
    forward = load_package(package, device)
    batch = synthetic_batch(batch_size, device)
    return {
        f"AOTInductor-compiled, batch {batch_size} (the handler's forward)": images_per_second(
            lambda: forward(batch), batch_size, seconds, device
        )
    }


def in_process_handler(
    model: InProcessModel, images: list[bytes], device: torch.device, batch_size: int, seconds: float
) -> dict[str, float]:
    """(d) Batches of real JPEGs through the handler as a worker runs it: decode, transform,
    forward, top-k, without the frontend and its socket hops."""
    batch = [Request.raw(images[i % len(images)]) for i in range(batch_size)]
    return {
        f"handler in-process, batches of {batch_size} JPEGs": images_per_second(
            lambda: model.infer(batch), batch_size, seconds, device
        )
    }


def in_process_explanations(
    model: InProcessModel, images: list[bytes], device: torch.device, batch_size: int, seconds: float
) -> dict[str, float]:
    """(e) What an explanation costs: (d)'s batches with every request on an explanation route
    (Grad-CAM of its top class), and one JPEG at a time, classified and explained."""
    batch = [Request.raw(images[i % len(images)]).explaining() for i in range(batch_size)]
    one = Request.raw(images[0])
    return {
        f"handler in-process, batches of {batch_size} JPEGs, each explained": images_per_second(
            lambda: model.infer(batch), batch_size, seconds / 2, device
        ),
        "handler in-process, one JPEG at a time, classified": images_per_second(
            lambda: model.infer([one]), 1, seconds / 4, device
        ),
        "handler in-process, one JPEG at a time, explained": images_per_second(
            lambda: model.infer([one.explaining()]), 1, seconds / 4, device
        ),
    }
