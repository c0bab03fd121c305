"""Run the tests that drive a real server with every core kept busy beside them.

A user's laptop is a busy machine: every timing assumption in the served tests must hold with
the cores loaded, or be a bound that scales. This starts one spinning process per core (at
normal priority, as another program would be), runs pytest, and stops them, whatever happens.

    python -m scripts.harness.busy_machine [--runs N] [pytest options] [test paths; default: the served tests]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import subprocess
import sys
import time

from scripts.paths import ROOT

# Every test module that starts TorchServe or talks to one (tests/test_busy_machine.py keeps it complete).
SERVED_TESTS = (
    "test_serving",
    "test_versions",
    "test_client",
    "test_bad_input_served",
    "test_protocols_served",
    "test_explanations_served",
    "test_metrics_served",
    "test_security",
    "test_faults",
    "test_kserve_bundle",
    "test_model_snapshot",
    "test_prometheus_server",
    "test_ray_engine",
    "test_ray_served",
    "test_ray_versions",
    "test_ray_faults",
    "test_ray_prometheus",
    "test_serving_image",
    "test_serving_image_ray",
    "test_smoke",
)


def spin() -> None:
    while True:
        pass


def run_busy(pytest_arguments: list[str], runs: int) -> int:
    """pytest `runs` times in a row beside a CPU hog on every core; stops at the first failure."""
    hogs = [multiprocessing.Process(target=spin, daemon=True) for _ in range(len(os.sched_getaffinity(0)))]
    for hog in hogs:
        hog.start()
    try:
        for run in range(1, runs + 1):
            started = time.monotonic()
            code = subprocess.call([sys.executable, "-m", "pytest", *pytest_arguments], cwd=ROOT)
            print(
                f"busy run {run} of {runs}: pytest exited {code} after {time.monotonic() - started:.0f} s", flush=True
            )
            if code != 0:
                return code
        return 0
    finally:
        for hog in hogs:
            hog.kill()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1, help="pytest runs in a row (default 1)")
    args, pytest_arguments = parser.parse_known_args()
    if not any(argument.startswith("tests") for argument in pytest_arguments):  # no tests named: the served ones
        pytest_arguments += [f"tests/{name}.py" for name in SERVED_TESTS]
    return run_busy(pytest_arguments, args.runs)


if __name__ == "__main__":
    sys.exit(main())
