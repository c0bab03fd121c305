"""`make bench`: this project's handler, TorchServe's stock handler and the raw forward pass,
side by side in one run, on this machine.

    python -m benchmarks.run --seconds 30 --concurrency 1 4 8

(a) this project's server as `make serve` sizes it; (b) the same weights behind TorchServe's
stock `image_classifier` handler with the settings TorchServe's examples use (one worker per
core, batch size 1, torch's default threads); (c) the raw in-process forward pass, the compute
limit of the machine. Load comes from locust (headless, closed loop: each user sends its next
request when the last is answered). Inputs are real-size JPEGs of 0.3 to 2 MP. Weights do not
change speed, so random weights are used unless --weights says otherwise.

Writes results/<date>/report.md and plot.png (results/ is not committed).
"""

from __future__ import annotations

import argparse
import csv
import datetime
import os
import platform
import statistics
import subprocess
import sys
import time
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import requests
import torch
import torchvision
from PIL import Image

from benchmarks.stock_archive import STOCK_NAME, build_stock_archive
from scripts import build_archives
from scripts.compile_forward import PACKAGE_NAME
from scripts.paths import DEFAULT_VERSION, MODEL_NAME, ROOT, archive_name
from scripts.serve import sample_photo
from scripts.server import Ports, Server, start, stop
from scripts.weights import RANDOM, weights_file
from scripts.worker_plan import Machine, WorkerPlan, plan_from_environment

RESULTS = ROOT / "results"
INPUT_SIZES = ((640, 480), (800, 600), (1024, 768), (1280, 960), (1440, 1080), (1632, 1224))


@dataclass(frozen=True)
class LoadResult:
    target: str
    protocol: str
    concurrency: int
    requests: int
    failures: int
    throughput: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    server_queue_ms: float
    server_inference_ms: float


def make_inputs(folder: Path) -> Path:
    """JPEGs of 0.3 to 2 MP at camera quality, from the sample photo in six crops and sizes."""
    folder.mkdir(parents=True, exist_ok=True)
    photo = sample_photo()
    with Image.open(photo) as image:
        image = image.convert("RGB")
        for i, size in enumerate(INPUT_SIZES):
            left, top = 8 * i, 6 * i
            crop = image.crop((left, top, image.width - left, image.height - top))
            crop.resize(size, Image.Resampling.BICUBIC).save(folder / f"photo-{size[0]}x{size[1]}.jpg", quality=90)
    return folder


def raw_forward(seconds: float, threads: int) -> dict[str, float]:
    """(c) Images per second of the bare eager fp32 forward on synthetic input: no decode, no server."""
    torch.set_num_threads(threads)
    model = torchvision.models.resnet50().eval().to(memory_format=torch.channels_last)
    return {f"eager fp32 channels_last, batch {size}": images_per_second(model, size, seconds / 2)
            for size in (1, 8)}


def raw_compiled_forward(archive: Path, seconds: float, out: Path) -> dict[str, float]:
    """(c') The same, through the AOTInductor package the archive carries (if it has one)."""
    with zipfile.ZipFile(archive) as mar:
        if PACKAGE_NAME not in mar.namelist():
            return {}
        package = mar.extract(PACKAGE_NAME, out)
    compiled = torch._inductor.aoti_load_package(package)
    return {"AOTInductor-compiled fp32, batch 8 (the handler's CPU forward)": images_per_second(compiled, 8, seconds / 2)}


def images_per_second(forward: Callable[[torch.Tensor], torch.Tensor], batch_size: int, seconds: float) -> float:
    """The median over one-second windows: steadier than one long window on a shared machine."""
    batch = torch.randn(batch_size, 3, 224, 224).contiguous(memory_format=torch.channels_last)
    rates = []
    with torch.inference_mode():
        forward(batch)
        for _ in range(max(3, int(seconds))):
            images, started = 0, time.perf_counter()
            while time.perf_counter() - started < 1.0:
                forward(batch)
                images += batch_size
            rates.append(images / (time.perf_counter() - started))
    return statistics.median(rates)


def prometheus_totals(server: Server, model: str) -> dict[str, float]:
    """Sums of TorchServe's per-model counters (microseconds and request counts)."""
    text = requests.get(server.metrics_url, timeout=10).text
    totals: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("ts_") and f'model_name="{model}"' in line:
            name = line.split("{", 1)[0]
            totals[name] = totals.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
    return totals


def run_locust(server: Server, model: str, protocol: str, users: int, seconds: float, inputs: Path,
               out: Path, target: str) -> LoadResult:
    before = prometheus_totals(server, model)
    prefix = out / f"{target}-{protocol}-c{users}"
    env = dict(os.environ, BENCH_INPUTS=str(inputs), BENCH_MODEL=model, BENCH_TOKEN=server.client().tokens.inference,
               BENCH_GRPC_TARGET=f"127.0.0.1:{server.ports.grpc_inference}", PYTHONPATH=str(ROOT))
    subprocess.run([sys.executable, "-m", "locust", "-f", str(ROOT / "benchmarks" / "locustfile.py"),
                    "--headless", "-u", str(users), "-r", str(users), "-t", f"{seconds:.0f}s",
                    "--host", server.inference_url, "--csv", str(prefix), "--only-summary", "--loglevel", "ERROR",
                    "GrpcUser" if protocol == "gRPC" else "RestUser"],
                   env=env, check=True, capture_output=True, cwd=ROOT)
    with open(f"{prefix}_stats.csv") as stats:
        row = next(r for r in csv.DictReader(stats) if r["Name"] == "Aggregated")
    after = prometheus_totals(server, model)
    served = max(1.0, after.get("ts_inference_requests_total", 0) - before.get("ts_inference_requests_total", 0))
    per_request_ms = lambda name: (after.get(name, 0) - before.get(name, 0)) / served / 1000  # noqa: E731
    return LoadResult(target, protocol, users, int(row["Request Count"]), int(row["Failure Count"]),
                      float(row["Requests/s"]), float(row["50%"]), float(row["90%"]), float(row["99%"]),
                      per_request_ms("ts_queue_latency_microseconds"),
                      per_request_ms("ts_inference_latency_microseconds"))


@contextmanager
def serving(run_dir: Path, model_store: Path, archive: str, plan: WorkerPlan) -> Iterator[Server]:
    server = Server(run_dir=run_dir, model_store=model_store, ports=Ports.free())
    run_dir.mkdir(parents=True, exist_ok=True)
    start(server, plan)
    try:
        server.client().register(archive, initial_workers=plan.workers_per_version)
        yield server
    finally:
        stop(server)


def load_steps(server: Server, model: str, target: str, concurrencies: list[int], protocols: list[str],
               seconds: float, inputs: Path, out: Path) -> list[LoadResult]:
    warm = next(inputs.glob("*.jpg")).read_bytes()
    for _ in range(3):
        server.client().predict(model, warm, content_type="image/jpeg")
    results = []
    for protocol in protocols:
        for users in concurrencies:
            result = run_locust(server, model, protocol, users, seconds, inputs, out, target)
            print(f"  {target:<6} {protocol:<4} c={users:<3} {result.throughput:6.2f} img/s  "
                  f"p50 {result.p50_ms:6.0f} ms  p99 {result.p99_ms:6.0f} ms  errors {result.failures}")
            results.append(result)
    return results


def write_report(out: Path, raw: dict[str, float], compiled_raw: dict[str, float], results: list[LoadResult],
                 args: argparse.Namespace, plan: WorkerPlan, stock_plan: WorkerPlan) -> Path:
    best_raw = max(raw.values())
    at = lambda target, c: next((r for r in results if r.target == target and r.concurrency == c  # noqa: E731
                                 and r.protocol == "REST"), None)
    top = max(args.concurrency)
    ours, stock = at("ours", top), at("stock", top)
    lines = [
        f"# Benchmark: {datetime.date.today().isoformat()}",
        "",
        f"- machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"{'GPU: ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU'}",
        f"- torch {torch.__version__}, torchvision {torchvision.__version__}",
        f"- command: `python -m benchmarks.run {' '.join(sys.argv[1:])}`",
        f"- (a) ours: {plan.describe()}; (b) stock: {stock_plan.describe()}, batch size 1",
        f"- {args.seconds:.0f} s per step, inputs: JPEGs of {', '.join(f'{w}x{h}' for w, h in INPUT_SIZES)}",
        "",
        "## Raw forward: (c) eager, (c') compiled",
        "",
        "| configuration | img/s |",
        "| --- | --- |",
        *(f"| (c) {name} | {value:.2f} |" for name, value in raw.items()),
        *(f"| (c') {name} | {value:.2f} |" for name, value in compiled_raw.items()),
        "",
        "## Served",
        "",
        "| target | protocol | concurrency | img/s | p50 ms | p90 ms | p99 ms | errors | server queue ms | server inference ms |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        *(f"| {r.target} | {r.protocol} | {r.concurrency} | {r.throughput:.2f} | {r.p50_ms:.0f} | {r.p90_ms:.0f} | "
          f"{r.p99_ms:.0f} | {r.failures} | {server_timing(r, r.server_queue_ms)} | "
          f"{server_timing(r, r.server_inference_ms)} |" for r in results),
        "",
        "Server timings are TorchServe's own per-request counters (`ts_queue_latency_microseconds`,",
        "`ts_inference_latency_microseconds`); TorchServe 0.12 does not count gRPC requests in them.",
        "",
        f"## Ratios at concurrency {top} (REST)",
        "",
    ]
    if ours and stock:
        lines += [f"- a/b (ours / stock): **{ours.throughput / stock.throughput:.2f}x**"]
    if ours:
        lines += [f"- a/c (ours / best raw eager forward): **{ours.throughput / best_raw:.2f}x**",
                  *(f"- a/c' (ours / raw compiled forward, the handler's own forward without serving): "
                    f"**{ours.throughput / value:.2f}x**" for value in compiled_raw.values()),
                  f"- ours p99/p50: **{ours.p99_ms / ours.p50_ms:.2f}**"]
    report = out / "report.md"
    report.write_text("\n".join(lines) + "\n")
    plot(out / "plot.png", raw, results, args.concurrency)
    return report


def server_timing(result: LoadResult, milliseconds: float) -> str:
    return "n/a" if result.protocol == "gRPC" else f"{milliseconds:.0f}"


def plot(path: Path, raw: dict[str, float], results: list[LoadResult], concurrencies: list[int]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (throughput, latency) = plt.subplots(1, 2, figsize=(12, 4.5))
    for target in ("ours", "stock"):
        rows = [r for r in results if r.target == target and r.protocol == "REST"]
        throughput.plot([r.concurrency for r in rows], [r.throughput for r in rows], marker="o", label=target)
    throughput.axhline(max(raw.values()), linestyle="--", color="grey", label="raw eager forward (best)")
    throughput.set(xlabel="concurrent clients", ylabel="images / s", title="Throughput (REST)", xticks=concurrencies)
    throughput.legend()
    width = 0.25
    rows = [r for r in results if r.concurrency == max(concurrencies)]
    for i, name in enumerate(("p50_ms", "p90_ms", "p99_ms")):
        latency.bar([j + i * width for j in range(len(rows))], [getattr(r, name) for r in rows], width, label=name[:3])
    labels = [f"{r.target}\n{r.protocol}" for r in rows]
    latency.set_xticks([j + width for j in range(len(rows))], labels)
    latency.set(ylabel="ms (log scale)", yscale="log", title=f"Latency at concurrency {max(concurrencies)}")
    latency.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=30.0, help="per load step")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--weights", default=RANDOM)
    parser.add_argument("--skip-stock", action="store_true")
    args = parser.parse_args(argv)
    out = RESULTS / datetime.datetime.now().strftime("%Y-%m-%d-%H%M%S")
    store = out / "model_store"
    inputs = make_inputs(out / "inputs")
    machine = Machine.detect()
    plan = plan_from_environment(machine)
    stock_plan = WorkerPlan(workers_per_version=machine.cores, number_of_gpu=len(machine.gpu_memory_gib),
                            threads_per_worker=None)

    print(f"(c) raw forward, {machine.cores} threads")
    raw = raw_forward(args.seconds, machine.cores)
    for name, value in raw.items():
        print(f"  {name}: {value:.2f} img/s")

    archive = build_archives.build(DEFAULT_VERSION, args.weights, store)
    compiled_raw = raw_compiled_forward(archive, args.seconds, out)
    for name, value in compiled_raw.items():
        print(f"  {name}: {value:.2f} img/s")
    results = []
    print(f"(a) ours: {plan.describe()}")
    with serving(out / "run-ours", store, archive_name(DEFAULT_VERSION), plan) as server:
        results += load_steps(server, MODEL_NAME, "ours", args.concurrency, ["REST"], args.seconds, inputs, out)
        results += load_steps(server, MODEL_NAME, "ours", [max(args.concurrency)], ["gRPC"], args.seconds, inputs, out)
    if not args.skip_stock:
        stock_archive = build_stock_archive(weights_file("IMAGENET1K_V2", args.weights), store)
        print(f"(b) stock: {stock_plan.describe()}")
        with serving(out / "run-stock", store, stock_archive.name, stock_plan) as server:
            results += load_steps(server, STOCK_NAME, "stock", args.concurrency, ["REST"], args.seconds, inputs, out)
    report = write_report(out, raw, compiled_raw, results, args, plan, stock_plan)
    print(f"\n{report.read_text()}\nreport: {report}\nplot: {out / 'plot.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
