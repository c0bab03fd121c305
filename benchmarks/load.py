"""Load on a running server: locust, headless, closed loop (each user sends its next request when
its last is answered), plus the server's own timings from its Prometheus metrics: TorchServe's
per-request counters, and the handler's time per batch in each stage."""

from __future__ import annotations

import csv
import math
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from scripts.client.prometheus_scrape import increase, settled_scrape
from scripts.client.rest_api import RestClient
from scripts.endpoints import Server
from scripts.paths import ROOT

# One locust process drives about a thousand requests a second; beyond that it needs more.
USERS_PER_LOCUST_PROCESS = 64


# The locust user class (benchmarks/locustfile.py) for each protocol a step can load.
LOCUST_USERS = {"REST": "RestUser", "gRPC": "GrpcUser", "OIP": "OipUser"}


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
    handler_stage_ms: dict[str, float]  # mean per batch, by stage; empty for a handler without our metrics
    images_per_batch: float


# The handler's stages (handler/handler_metrics.py), as its histogram labels them.
STAGES = ("decode_transform", "forward", "postprocess", "handler")


def locust_processes(users: int) -> int:
    """Enough load processes for `users`, but never more than a quarter of the cores: the
    server under test needs the rest."""
    return max(1, min(-(-users // USERS_PER_LOCUST_PROCESS), (os.cpu_count() or 1) // 4))


def run_locust(
    server: Server, model: str, protocol: str, users: int, seconds: float, inputs: Path, out: Path, target: str
) -> LoadResult:
    before = settled_scrape(server.metrics_url, report_s=server.metrics_report_s)
    prefix = out / f"{target}-{protocol}-c{users}"
    token = RestClient.for_server(server).tokens.inference
    env = dict(
        os.environ,
        BENCH_INPUTS=str(inputs),
        BENCH_MODEL=model,
        BENCH_TOKEN=token,
        BENCH_GRPC_TARGET=f"127.0.0.1:{server.ports.grpc_inference}",
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    )
    processes = locust_processes(users)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "locust",
            "-f",
            str(ROOT / "benchmarks" / "locustfile.py"),
            "--headless",
            "-u",
            str(users),
            "-r",
            str(users),
            "-t",
            f"{seconds:.0f}s",
            *(["--processes", str(processes)] if processes > 1 else []),
            "--host",
            server.inference_url,
            "--csv",
            str(prefix),
            "--only-summary",
            "--loglevel",
            "ERROR",
            "--exit-code-on-error",
            "0",  # failed requests are counted in the report, not fatal
            LOCUST_USERS[protocol],
        ],
        env=env,
        check=True,
        capture_output=True,
        cwd=ROOT,
    )
    with open(f"{prefix}_stats.csv") as stats:
        row = next(r for r in csv.DictReader(stats) if r["Name"] == "Aggregated")
    after = settled_scrape(server.metrics_url, report_s=server.metrics_report_s)

    def grew(name: str, **labels: str) -> float:
        return increase(before, after, name, ModelName=model, **labels)

    # TorchServe's own per-request counters; none on the Ray Serve engine, whose figures are n/a.
    served = increase(before, after, "ts_inference_requests_total", model_name=model) or math.nan
    batches = grew("handler_stage_seconds_count", Stage="handler")
    stages = (
        {stage: 1000 * grew("handler_stage_seconds_sum", Stage=stage) / batches for stage in STAGES} if batches else {}
    )

    def per_request_ms(name: str) -> float:
        return increase(before, after, name, model_name=model) / served / 1000

    # Throughput counts answered requests only: locust's Requests/s includes failures (fast 503s).
    return LoadResult(
        target,
        protocol,
        users,
        int(row["Request Count"]),
        int(row["Failure Count"]),
        _number(row["Requests/s"]) - _number(row["Failures/s"]),
        _number(row["50%"]),
        _number(row["90%"]),
        _number(row["99%"]),
        per_request_ms("ts_queue_latency_microseconds"),
        per_request_ms("ts_inference_latency_microseconds"),
        stages,
        grew("handler_batch_images_sum") / max(1.0, grew("handler_batch_images_count")),
    )


def _number(text: str) -> float:
    """locust writes N/A for the percentiles of a step that completed no request."""
    try:
        return float(text)
    except ValueError:
        return float("nan")


def load_steps(
    server: Server,
    model: str,
    target: str,
    concurrencies: list[int],
    protocols: list[str],
    seconds: float,
    inputs: Path,
    out: Path,
) -> list[LoadResult]:
    warm = next(inputs.glob("*.jpg")).read_bytes()
    for _ in range(3):
        RestClient.for_server(server).predict(model, warm, content_type="image/jpeg")
    results = []
    for protocol in protocols:
        for users in concurrencies:
            result = run_locust(server, model, protocol, users, seconds, inputs, out, target)
            print(
                f"  {target:<6} {protocol:<4} c={users:<3} {result.throughput:8.2f} img/s  "
                f"p50 {result.p50_ms:6.0f} ms  p99 {result.p99_ms:6.0f} ms  errors {result.failures}"
            )
            results.append(result)
    return results
