"""The serving image's entry point (deploy/image/Containerfile), and its process 1.

    container_entry.py          serve the bundle mounted at /mnt/models (the image's default)
    container_entry.py ready    exit 0 once every version of every model has all its workers
                                READY (the image's startup and readiness probe)

Serving runs TorchServe in the foreground from the bundle `make kserve-bundle` writes: its
config/config.properties and its model-store/. Process 1 of a container gets no default signal
handling from the kernel, and TorchServe's launcher installs none, so a SIGTERM would be ignored
until the kubelet's SIGKILL. Here SIGTERM (and SIGINT) go to TorchServe's Java frontend, which
stops its workers and exits; then whatever is left is reaped, or killed after a bound.

DRAIN_SECONDS (default 0) keeps serving that long after the first SIGTERM: Kubernetes sends it
while the pod is still being taken out of its Service's endpoints, and requests routed to it
meanwhile should still be answered. A second signal stops at once.

Copied alone into the image: it imports the standard library only.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from types import FrameType
from typing import Any

BUNDLE = Path(os.environ.get("MODEL_BUNDLE", "/mnt/models"))
CONFIG = BUNDLE / "config" / "config.properties"
MODEL_STORE = BUNDLE / "model-store"
# After the frontend exits, its workers get this long to follow before they are killed.
LEFTOVER_GRACE_S = 10.0
# TorchServe's launcher writes the frontend's pid here (ts/model_server.py).
PID_FILE_NAME = ".model_server.pid"


def serve() -> int:
    """TorchServe in the foreground until it exits or a stop signal arrives; its exit status,
    or 0 for a requested stop."""
    if missing := [str(path) for path in (CONFIG, MODEL_STORE) if not path.exists()]:
        print(
            f"error: no model bundle at {BUNDLE} (missing {', '.join(missing)}). Mount the folder "
            f"`make kserve-bundle` writes (config/ and model-store/) there, or set MODEL_BUNDLE",
            file=sys.stderr,
        )
        return 2
    try:
        drain = float(os.environ.get("DRAIN_SECONDS", "0"))
    except ValueError:
        print(f"error: DRAIN_SECONDS must be a number of seconds, not {os.environ['DRAIN_SECONDS']!r}", file=sys.stderr)
        return 2
    launcher = subprocess.Popen(
        [
            *(sys.executable, "-m", "ts.model_server", "--start", "--foreground", "--ncs"),
            *("--model-store", str(MODEL_STORE), "--ts-config", str(CONFIG)),
        ]
    )
    stopping = False

    def stop(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        name = signal.Signals(signum).name
        if not stopping and drain > 0:
            stopping = True
            print(f"{name}: serving {drain:g} s more, then stopping TorchServe", file=sys.stderr, flush=True)
            time.sleep(drain)  # a signal meanwhile runs this handler again, and that one stops at once
        stopping = True
        print(f"{name}: stopping TorchServe", file=sys.stderr, flush=True)
        frontend = _frontend_pid()
        with contextlib.suppress(ProcessLookupError):  # already stopped, by a signal during the drain
            os.kill(frontend if frontend is not None else launcher.pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    status = launcher.wait()
    _reap_leftovers()
    return 0 if stopping else status


def _frontend_pid() -> int | None:
    """The Java frontend's pid, once the launcher has started it."""
    try:
        return int((Path(tempfile.gettempdir()) / PID_FILE_NAME).read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def _reap_leftovers() -> None:
    """As process 1, wait for the processes the frontend left (its workers, stopping), then kill
    any still alive after LEFTOVER_GRACE_S."""
    deadline = time.monotonic() + LEFTOVER_GRACE_S
    while time.monotonic() < deadline:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return  # none left
        if pid == 0:
            time.sleep(0.1)
    if os.getpid() == 1:
        os.kill(-1, signal.SIGKILL)  # every process of the container but this one


def ready() -> int:
    """0 if every version of every model registered has all its workers READY, else 1."""
    if not CONFIG.is_file():
        print(f"not ready: no bundle config at {CONFIG}", file=sys.stderr)
        return 1
    match = re.findall(r"^\s*management_address\s*=\s*(\S+)", CONFIG.read_text(), re.MULTILINE)
    management = match[-1] if match else "http://127.0.0.1:8081"  # TorchServe's default
    try:
        models = [entry["modelName"] for entry in _get_json(f"{management}/models")["models"]]
        versions = [version for model in models for version in _get_json(f"{management}/models/{model}/all")]
    except (OSError, ValueError, KeyError) as error:
        print(f"not ready: TorchServe's management API at {management}: {error}", file=sys.stderr)
        return 1
    waiting = [
        f"{version['modelName']} {version['modelVersion']}"
        for version in versions
        if len(version["workers"]) < version["minWorkers"]
        or any(worker["status"] != "READY" for worker in version["workers"])
    ]
    if not versions or waiting:
        print(f"not ready: waiting for the workers of {', '.join(waiting) or 'any model'}", file=sys.stderr)
        return 1
    return 0


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def main(argv: list[str]) -> int:
    if argv in ([], ["serve"]):
        return serve()
    if argv == ["ready"]:
        return ready()
    print(f"usage: {Path(__file__).name} [serve | ready]; got {' '.join(argv)}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
