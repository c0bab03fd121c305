"""A bounded soak: sustained good and bad requests against a running server, then a verdict.

    python -m scripts.client.soak --minutes 10 --concurrency 16

Reports unexpected answers (a good image not answered 200, a bad one not answered its 4xx),
worker restarts (worker ids or pids that changed), and each worker's memory ten times over the
run, with its growth after warm-up (the first quarter) and over the second half. It only talks
to the server on loopback and stops by itself.
"""

from __future__ import annotations

import argparse
import io
import random
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import requests
from PIL import Image

from scripts.client.cli import management_client
from scripts.client.rest_api import RestClient
from scripts.endpoints import Server, ServerError
from scripts.paths import MODEL_NAME, RUN_DIR, sample_photo


def _encode(image: Image.Image, format: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format)
    return buffer.getvalue()


def request_mix() -> list[tuple[str, bytes, int]]:
    """(name, body, expected status): real-size photos and the bad inputs clients really send."""
    with Image.open(sample_photo()) as opened:
        photo = opened.convert("RGB")
        good = [
            (f"jpeg {w}x{h}", _encode(photo.resize((w, h)), "JPEG"), 200)
            for w, h in ((640, 480), (1024, 768), (1600, 1200))
        ]
        jpeg = good[0][1]
        bad = [
            ("empty", b"", 400),
            ("not an image", b"hello, world", 400),
            ("truncated", jpeg[: len(jpeg) // 3], 400),
            ("unsupported", _encode(photo, "PPM")[:200_000], 415),
        ]
    return good * 4 + bad  # about one request in four is bad


@dataclass
class SoakReport:
    seconds: float
    requests: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    unexpected: list[str] = field(default_factory=list)
    workers_before: dict[str, int] = field(default_factory=dict)
    workers_after: dict[str, int] = field(default_factory=dict)
    # (seconds since start, {worker: resident MiB}), sampled ten times over the run
    memory_mib: list[tuple[float, dict[str, float]]] = field(default_factory=list)

    @property
    def worker_restarts(self) -> int:
        return sum(1 for worker, pid in self.workers_before.items() if self.workers_after.get(worker) != pid)

    def memory_growth_mib(self, since_fraction: float) -> float:
        """The largest rise of any worker's peak memory: its peak from `since_fraction` of the run
        to the end, over its peak before. Peaks, not single samples: a worker's resident memory
        swings by about 100 MiB as batches of different sizes come and go, and a leak raises the
        peak too."""
        split = since_fraction * self.seconds
        before = [usage for t, usage in self.memory_mib if t < split]
        after = [usage for t, usage in self.memory_mib if t >= split]
        workers = set().union(*before) & set().union(*after)
        return max(
            (max(usage.get(w, 0.0) for usage in after) - max(usage.get(w, 0.0) for usage in before) for w in workers),
            default=0.0,
        )

    def summary(self) -> str:
        series = "\n".join(
            f"  {t:5.0f} s: " + ", ".join(f"{w} {m:.0f}" for w, m in sorted(usage.items()))
            for t, usage in self.memory_mib
        )
        return "\n".join(
            [
                f"duration: {self.seconds:.0f} s, requests: {self.requests} ({self.requests / self.seconds:.1f}/s)",
                f"statuses: {dict(sorted(self.statuses.items()))}",
                f"unexpected answers: {len(self.unexpected)}" + "".join(f"\n  {u}" for u in self.unexpected[:10]),
                f"worker restarts: {self.worker_restarts}",
                f"worker memory (MiB):\n{series}",
                f"growth after warm-up (25%): {self.memory_growth_mib(0.25):.0f} MiB; "
                f"over the second half: {self.memory_growth_mib(0.5):.0f} MiB",
            ]
        )


def workers(server: Server) -> dict[str, int]:
    """Worker id -> pid, for every version of the model."""
    return {
        f"{entry['modelVersion']}/{worker['id']}": worker["pid"]
        for entry in management_client(server).describe(MODEL_NAME, "all")
        for worker in entry["workers"]
    }


def memory_mib(pids: dict[str, int]) -> dict[str, float]:
    usage = {}
    for worker, pid in pids.items():
        try:
            usage[worker] = psutil.Process(pid).memory_info().rss / 2**20
        except psutil.Error:
            usage[worker] = 0.0
    return usage


def soak(server: Server, seconds: float, concurrency: int) -> SoakReport:
    mix = request_mix()
    token = RestClient.for_server(server).tokens.inference
    url = f"{server.inference_url}/predictions/{MODEL_NAME}"
    report = SoakReport(seconds=seconds, workers_before=workers(server))
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def client(seed: int) -> None:
        rng = random.Random(seed)
        with requests.Session() as session:
            while time.monotonic() < deadline:
                name, body, expected = rng.choice(mix)
                try:
                    status = session.post(
                        url,
                        data=body,
                        timeout=60,
                        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/octet-stream"},
                    ).status_code
                except requests.RequestException as error:
                    status, name = 0, f"{name}: {type(error).__name__}"
                with lock:
                    report.requests += 1
                    report.statuses[status] += 1
                    if status != expected:
                        report.unexpected.append(f"{name}: expected {expected}, got {status}")

    threads = [threading.Thread(target=client, args=(seed,), daemon=True) for seed in range(concurrency)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for step in range(1, 11):
        time.sleep(max(0.0, started + seconds * step / 10 - time.monotonic() - 0.5))
        report.memory_mib.append((time.monotonic() - started, memory_mib(report.workers_before)))
    for thread in threads:
        thread.join()
    report.workers_after = workers(server)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--run-dir", type=Path, default=RUN_DIR)
    args = parser.parse_args(argv)
    try:
        report = soak(Server.from_run_dir(args.run_dir), args.minutes * 60, args.concurrency)
    except ServerError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(report.summary())
    return 0 if not report.unexpected and not report.worker_restarts else 1


if __name__ == "__main__":
    sys.exit(main())
