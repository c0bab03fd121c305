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
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

BUNDLE = Path(os.environ.get("MODEL_BUNDLE", "/mnt/models"))
CONFIG = BUNDLE / "config" / "config.properties"
MODEL_STORE = BUNDLE / "model-store"
# After the frontend exits, its workers get this long to follow before they are killed.
LEFTOVER_GRACE_S = 10.0
# TorchServe's launcher writes the frontend's pid here (ts/model_server.py).
PID_FILE_NAME = ".model_server.pid"
FRONTEND_CLASS = b"org.pytorch.serve.ModelServer"
POLL_S = 0.1


def serve() -> int:
    """TorchServe in the foreground until it exits or a stop signal arrives: 0 for a requested
    stop, else TorchServe's failure (never 0: its launcher exits 0 whatever the frontend did).

    The signal handlers only record the signal; this loop drains, forwards and reaps, so a second
    signal is acted on at once and no handler runs inside another."""
    if missing := [str(path) for path in (CONFIG, MODEL_STORE) if not path.exists()]:
        print(
            f"error: no model bundle at {BUNDLE} (missing {', '.join(missing)}). Mount the folder "
            f"`make kserve-bundle` writes (config/ and model-store/) there, or set MODEL_BUNDLE",
            file=sys.stderr,
        )
        return 2
    if (drain := _drain_seconds()) is None:
        return 2
    signals: list[int] = []  # the stop signals received, in order
    for stop_signal in (signal.SIGTERM, signal.SIGINT):
        signal.signal(stop_signal, lambda signum, _frame: signals.append(signum))
    _pid_file().unlink(missing_ok=True)  # a previous container's, in a /tmp the pod kept
    launcher = subprocess.Popen(
        [
            *(sys.executable, "-m", "ts.model_server", "--start", "--foreground", "--ncs"),
            *("--model-store", str(MODEL_STORE), "--ts-config", str(CONFIG)),
        ]
    )
    stop_at, forwarded = math.inf, False
    while (status := _reap(launcher.pid)) is None:
        if signals and stop_at == math.inf:
            stop_at = time.monotonic() + drain
            _say(f"{signal.Signals(signals[0]).name}: serving {drain:g} s more, then stopping TorchServe")
        if not forwarded and (len(signals) > 1 or time.monotonic() >= stop_at):
            _say(f"{signal.Signals(signals[-1]).name}: stopping TorchServe")
            with contextlib.suppress(ProcessLookupError):  # it stopped meanwhile
                os.kill(_frontend_pid() or launcher.pid, signal.SIGTERM)
            forwarded = True
        time.sleep(POLL_S)
    launcher.returncode = status
    _reap_leftovers()
    if signals:
        return 0
    _say(f"TorchServe exited on its own (launcher status {status}): see its log above")
    return status or 1


def _drain_seconds() -> float | None:
    """DRAIN_SECONDS, or None after saying why it is not a number of seconds."""
    value = os.environ.get("DRAIN_SECONDS", "0")
    try:
        drain = float(value)
    except ValueError:
        drain = math.nan
    if not 0 <= drain < math.inf:
        _say(f"error: DRAIN_SECONDS must be a number of seconds, 0 or more, not {value!r}")
        return None
    return drain


def _reap(launcher: int) -> int | None:
    """Reap every child that has exited (as process 1, every orphan of the container is one);
    the launcher's exit status once it is among them."""
    while True:
        try:
            pid, wait_status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return None
        if pid == 0:
            return None
        if pid == launcher:
            return os.waitstatus_to_exitcode(wait_status)


def _pid_file() -> Path:
    return Path(tempfile.gettempdir()) / PID_FILE_NAME


def _frontend_pid() -> int | None:
    """The Java frontend's pid, once the launcher has started it and while it runs."""
    try:
        pid = int(_pid_file().read_text().strip())
        running = (Path("/proc") / str(pid) / "cmdline").read_bytes()
    except (FileNotFoundError, ValueError):
        return None
    return pid if FRONTEND_CLASS in running else None


def _reap_leftovers() -> None:
    """Wait up to LEFTOVER_GRACE_S for the processes the frontend left (its workers, stopping);
    whatever is left when process 1 exits, the kernel kills."""
    deadline = time.monotonic() + LEFTOVER_GRACE_S
    while time.monotonic() < deadline:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return  # none left
        if pid == 0:
            time.sleep(POLL_S)


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


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
