"""`make bench`: this project's handler, TorchServe's stock handler and the raw forward pass,
side by side in one run, on this machine.

    python -m benchmarks.run --seconds 30 --concurrency 1 4 8

(a) this project's server as `make serve` sizes it, and (a') the same archive on the Ray Serve
engine, sized by the same plan (docs/engines.md); (b) the same weights behind TorchServe's
stock `image_classifier` handler with the settings TorchServe's examples use (TorchServe's
default worker count: one per GPU, else one per core; batch size 1; torch's default threads);
(c) the raw in-process forward pass, the compute limit of the machine, with (c') the compiled
forward and (d) the whole handler in-process beside it. On a GPU machine everything runs on
the first GPU. Load comes from locust (headless, closed loop: each user sends its next request
when the last is answered). Inputs are real-size JPEGs of 0.3 to 2 MP. Weights do not change
speed, so random weights are used unless --weights says otherwise.

Writes results/<date>/report.md and plot.png (results/ is not committed).
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from benchmarks import compute, footprint
from benchmarks.footprint import Footprint
from benchmarks.load import LoadResult, load_steps
from benchmarks.report import InProcess, write_report
from benchmarks.stock_archive import STOCK_NAME, build_stock_archive
from scripts.client.rest_api import RestClient
from scripts.endpoints import Ports, Server
from scripts.harness.in_process import InProcessModel
from scripts.packaging import build_archives
from scripts.packaging.weights import RANDOM, weights_file
from scripts.paths import BUILD_DIR, DEFAULT_VERSION, MODEL_NAME, ROOT, archive_name, sample_photo
from scripts.ray_serve import lifecycle as ray_engine
from scripts.server.lifecycle import start, stop
from scripts.worker_plan import Machine, WorkerPlan, plan_from_environment

RESULTS = ROOT / "results"
BENCH_MODEL_STORE = BUILD_DIR / "bench-model-store"  # kept between runs: an unchanged archive is not rebuilt
INPUT_SIZES = ((640, 480), (800, 600), (1024, 768), (1280, 960), (1440, 1080), (1632, 1224))
# Closed-loop clients per step: a GPU needs many requests in flight to fill its batches.
DEFAULT_CONCURRENCY = {"cpu": [1, 4, 8], "cuda": [1, 64, 256]}
# Eager batch sizes beside the archive's own: 1 on a CPU, a large batch of 256 on a GPU.
EXTRA_EAGER_BATCH = {"cpu": 1, "cuda": 256}


def make_inputs(folder: Path) -> Path:
    """JPEGs of 0.3 to 2 MP at camera quality, from the sample photo in six crops and sizes."""
    folder.mkdir(parents=True, exist_ok=True)
    photo = sample_photo()
    with Image.open(photo) as opened:
        image = opened.convert("RGB")
        for i, size in enumerate(INPUT_SIZES):
            left, top = 8 * i, 6 * i
            crop = image.crop((left, top, image.width - left, image.height - top))
            crop.resize(size, Image.Resampling.BICUBIC).save(folder / f"photo-{size[0]}x{size[1]}.jpg", quality=90)
    return folder


@dataclass(frozen=True)
class Served:
    server: Server
    cold_start_s: float  # from the start command to the first answer


@contextmanager
def on_torchserve(
    run_dir: Path, model_store: Path, archive: str, model: str, plan: WorkerPlan, clients: int, first_image: bytes
) -> Iterator[Served]:
    """TorchServe serving `archive` (as `model`) alone, whose queues hold every client's request (TorchServe's
    default of 100 would answer a GPU step's 256 clients with instant 503s)."""
    server = Server(
        run_dir=run_dir,
        model_store=model_store,
        ports=Ports.free(),
        properties={"job_queue_size": max(100, 2 * clients)},
        versions=(),
    )
    run_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    start(server, plan)
    try:
        RestClient.for_server(server).register(archive, initial_workers=plan.workers_per_version)
        yield Served(server, _first_answer(server, model, first_image, started))
    finally:
        stop(server)


@contextmanager
def on_ray_serve(run_dir: Path, model_store: Path, plan: WorkerPlan, first_image: bytes) -> Iterator[Served]:
    """The Ray Serve engine serving the default version's archive alone, sized by the same plan."""
    server = Server(run_dir=run_dir, model_store=model_store, ports=Ports.free(), versions=(DEFAULT_VERSION,))
    run_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    ray_engine.start(server, plan)
    try:
        yield Served(server, _first_answer(server, MODEL_NAME, first_image, started))
    finally:
        ray_engine.stop(server)


def _first_answer(server: Server, model: str, image: bytes, started: float) -> float:
    """Seconds from `started` to the model's first answer."""
    RestClient.for_server(server).predict(model, image, content_type="image/jpeg")
    return time.monotonic() - started


def served_steps(
    server: Server, model: str, target: str, concurrencies: list[int], seconds: float, inputs: Path, out: Path
) -> list[LoadResult]:
    """Ours, on either engine: REST at every concurrency, gRPC and OIP at the highest."""
    results = load_steps(server, model, target, concurrencies, ["REST"], seconds, inputs, out)
    return results + load_steps(server, model, target, [max(concurrencies)], ["gRPC", "OIP"], seconds, inputs, out)


def measure_in_process(
    archive: Path, inputs: Path, device: torch.device, batch_size: int, seconds: float, out: Path
) -> InProcess:
    print(f"in-process on {device}")
    handler = InProcessModel.from_archive(archive, out / "in-process", batch_size, gpu_id=device.index)
    images = [path.read_bytes() for path in sorted(inputs.glob("*.jpg"))]
    figures = InProcess(
        eager=compute.eager_forward(device, sorted({EXTRA_EAGER_BATCH[device.type], batch_size}), seconds),
        compiled=compute.compiled_forward(archive, device, batch_size, seconds / 2, out),
        handler=compute.in_process_handler(handler, images, device, batch_size, seconds / 2),
        explained=compute.in_process_explanations(handler, images, device, batch_size, seconds / 2),
    )
    for name, value in {**figures.eager, **figures.compiled, **figures.handler, **figures.explained}.items():
        print(f"  {name}: {value:.2f} img/s")
    if device.type == "cuda":
        torch.cuda.empty_cache()  # the served steps' workers get the memory back
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=30.0, help="per load step")
    parser.add_argument(
        "--concurrency",
        type=int,
        nargs="+",
        help=f"load steps (default: {DEFAULT_CONCURRENCY['cpu']} on CPU, {DEFAULT_CONCURRENCY['cuda']} on GPU)",
    )
    parser.add_argument("--batch-size", type=int, help="build our archive with this batchSize (default: its config's)")
    parser.add_argument("--weights", default=RANDOM)
    parser.add_argument("--skip-stock", action="store_true")
    parser.add_argument("--skip-ray", action="store_true", help="leave out (a') ours on Ray Serve")
    args = parser.parse_args(argv)
    out = RESULTS / datetime.datetime.now().strftime("%Y-%m-%d-%H%M%S")
    inputs = make_inputs(out / "inputs")
    machine = Machine.detect()
    plan = plan_from_environment(machine)
    device = torch.device("cuda", 0) if plan.number_of_gpu else torch.device("cpu")
    concurrencies = args.concurrency or DEFAULT_CONCURRENCY[device.type]
    torch.set_num_threads((plan.threads_per_worker or machine.cores) * plan.workers_per_version)
    settings = {"batchSize": args.batch_size} if args.batch_size else {}
    archive = build_archives.build(DEFAULT_VERSION, args.weights, BENCH_MODEL_STORE, settings=settings)
    batch_size = args.batch_size or build_archives.archive_model_config(DEFAULT_VERSION, args.weights)["batchSize"]
    in_process = measure_in_process(archive, inputs, device, batch_size, args.seconds, out)

    stock_plan = WorkerPlan(
        workers_per_version=plan.number_of_gpu or machine.cores,
        number_of_gpu=plan.number_of_gpu,
        threads_per_worker=None,
    )
    top = max(concurrencies)
    setup = [
        f"(a) ours: {plan.describe()}, batch size {batch_size}",
        f"(a') ours on Ray Serve: the same archive, handler and plan ({plan.workers_per_version} replicas)",
        f"(b) stock: {stock_plan.describe()}, batch size 1",
        f"{args.seconds:.0f} s per step, inputs: JPEGs of {', '.join(f'{w}x{h}' for w, h in INPUT_SIZES)}",
    ]
    first_image = next(inputs.glob("*.jpg")).read_bytes()
    footprints: dict[str, Footprint] = {}
    print(setup[0])
    with on_torchserve(
        out / "run-ours", BENCH_MODEL_STORE, archive_name(DEFAULT_VERSION), MODEL_NAME, plan, top, first_image
    ) as served:
        results = served_steps(served.server, MODEL_NAME, "ours", concurrencies, args.seconds, inputs, out)
        footprints["ours"] = footprint.measure(footprint.TORCHSERVE, served.server, served.cold_start_s)
    if not args.skip_ray:
        print(setup[1])
        with on_ray_serve(out / "run-ray", BENCH_MODEL_STORE, plan, first_image) as served:
            results += served_steps(served.server, MODEL_NAME, "ray", concurrencies, args.seconds, inputs, out)
            footprints["ray"] = footprint.measure(footprint.RAY_SERVE, served.server, served.cold_start_s)
    if not args.skip_stock:
        stock_archive = build_stock_archive(weights_file("IMAGENET1K_V2", args.weights), BENCH_MODEL_STORE)
        print(setup[2])
        with on_torchserve(
            out / "run-stock", BENCH_MODEL_STORE, stock_archive.name, STOCK_NAME, stock_plan, top, first_image
        ) as served:
            results += load_steps(
                served.server, STOCK_NAME, "stock", concurrencies, ["REST"], args.seconds, inputs, out
            )
    report = write_report(out, device, in_process, results, footprints, setup, concurrencies)
    print(f"\n{report.read_text()}\nreport: {report}\nplot: {out / 'plot.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
