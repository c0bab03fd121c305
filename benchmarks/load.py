"""Load on a running server: locust, headless, closed loop (each user sends its next request when
its last is answered), plus the server's own per-request timings from its Prometheus counters."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import requests

from scripts.paths import ROOT
from scripts.server import Server

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


def prometheus_totals(server: Server, model: str) -> dict[str, float]:
    """Sums of TorchServe's per-model counters (microseconds and request counts)."""
    text = requests.get(server.metrics_url, timeout=10).text
    totals: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("ts_") and f'model_name="{model}"' in line:
            name = line.split("{", 1)[0]
            totals[name] = totals.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
    return totals


def locust_processes(users: int) -> int:
    """Enough load processes for `users`, but never more than a quarter of the cores: the
    server under test needs the rest."""
    return max(1, min(-(-users // USERS_PER_LOCUST_PROCESS), (os.cpu_count() or 1) // 4))


def run_locust(server: Server, model: str, protocol: str, users: int, seconds: float, inputs: Path,
               out: Path, target: str) -> LoadResult:
    before = prometheus_totals(server, model)
    prefix = out / f"{target}-{protocol}-c{users}"
    env = dict(os.environ, BENCH_INPUTS=str(inputs), BENCH_MODEL=model, BENCH_TOKEN=server.client().tokens.inference,
               BENCH_GRPC_TARGET=f"127.0.0.1:{server.ports.grpc_inference}",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    processes = locust_processes(users)
    subprocess.run([sys.executable, "-m", "locust", "-f", str(ROOT / "benchmarks" / "locustfile.py"),
                    "--headless", "-u", str(users), "-r", str(users), "-t", f"{seconds:.0f}s",
                    *(["--processes", str(processes)] if processes > 1 else []),
                    "--host", server.inference_url, "--csv", str(prefix), "--only-summary", "--loglevel", "ERROR",
                    "--exit-code-on-error", "0",  # failed requests are counted in the report, not fatal
                    LOCUST_USERS[protocol]],
                   env=env, check=True, capture_output=True, cwd=ROOT)
    with open(f"{prefix}_stats.csv") as stats:
        row = next(r for r in csv.DictReader(stats) if r["Name"] == "Aggregated")
    after = prometheus_totals(server, model)
    served = max(1.0, after.get("ts_inference_requests_total", 0) - before.get("ts_inference_requests_total", 0))

    def per_request_ms(name: str) -> float:
        return (after.get(name, 0) - before.get(name, 0)) / served / 1000

    # Throughput counts answered requests only: locust's Requests/s includes failures (fast 503s).
    return LoadResult(target, protocol, users, int(row["Request Count"]), int(row["Failure Count"]),
                      _number(row["Requests/s"]) - _number(row["Failures/s"]),
                      _number(row["50%"]), _number(row["90%"]), _number(row["99%"]),
                      per_request_ms("ts_queue_latency_microseconds"),
                      per_request_ms("ts_inference_latency_microseconds"))


def _number(text: str) -> float:
    """locust writes N/A for the percentiles of a step that completed no request."""
    try:
        return float(text)
    except ValueError:
        return float("nan")


def load_steps(server: Server, model: str, target: str, concurrencies: list[int], protocols: list[str],
               seconds: float, inputs: Path, out: Path) -> list[LoadResult]:
    warm = next(inputs.glob("*.jpg")).read_bytes()
    for _ in range(3):
        server.client().predict(model, warm, content_type="image/jpeg")
    results = []
    for protocol in protocols:
        for users in concurrencies:
            result = run_locust(server, model, protocol, users, seconds, inputs, out, target)
            print(f"  {target:<6} {protocol:<4} c={users:<3} {result.throughput:8.2f} img/s  "
                  f"p50 {result.p50_ms:6.0f} ms  p99 {result.p99_ms:6.0f} ms  errors {result.failures}")
            results.append(result)
    return results
