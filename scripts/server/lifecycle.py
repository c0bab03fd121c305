"""Start, wait for, and stop one TorchServe instance living in its own run folder
(scripts/endpoints.py: where it lives and how to reach it)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import psutil

from scripts.client.rest_api import ApiError, RestClient
from scripts.endpoints import Server, ServerError, log_excerpt_of, properties_text, read_properties
from scripts.model_config import model_snapshot, snapshot_line
from scripts.paths import CONFIG_DIR, DEFAULT_VERSION, MODEL_NAME
from scripts.server.java_runtime import java_home
from scripts.worker_plan import WorkerPlan

# TorchServe's launcher run by this interpreter: it needs only `ts` importable, not its bin/ script.
TORCHSERVE = [sys.executable, "-m", "ts.model_server"]


def running_pid(server: Server) -> int | None:
    """The frontend's pid, if this instance is running."""
    pid_file = server.run_dir / "tmp" / ".model_server.pid"
    try:
        pid = int(pid_file.read_text().strip())
        return pid if "org.pytorch.serve.ModelServer" in psutil.Process(pid).cmdline() else None
    except (FileNotFoundError, ValueError, psutil.Error):
        return None


def environment(server: Server, plan: WorkerPlan | None = None) -> dict[str, str]:
    """TorchServe's environment: this instance's temp and log dirs, Java, and the plan's threads."""
    env = dict(
        os.environ,
        TMPDIR=str(server.run_dir / "tmp"),
        TEMP=str(server.run_dir / "tmp"),
        JAVA_HOME=str(java_home()),
        LOG_LOCATION=str(server.log_dir),
        METRICS_LOCATION=str(server.log_dir),
    )
    if plan is not None and plan.threads_per_worker:
        # Workers inherit the frontend's environment; torch reads this for its intra-op threads.
        env["OMP_NUM_THREADS"] = str(plan.threads_per_worker)
    return env


def write_config(server: Server, plan: WorkerPlan) -> Path:
    """config/config.properties plus this instance's ports, store, GPU count, versions with the
    plan's workers, and extra properties (later lines win)."""
    overrides = {
        **server.listeners(),
        "model_store": server.model_store.resolve(),
        "metrics_config": CONFIG_DIR / "metrics.yaml",
        "number_of_gpu": plan.number_of_gpu,
        **server.properties,
    }
    base = (CONFIG_DIR / "config.properties").read_text()
    snapshot = snapshot_line(model_snapshot(server.versions, DEFAULT_VERSION, plan.workers_per_version))
    server.run_dir.mkdir(parents=True, exist_ok=True)
    server.config_file.write_text(
        base
        + "\n# Set by scripts/server/lifecycle.py for this instance\n"
        + properties_text(overrides)
        + snapshot
        + "\n"
    )
    return server.config_file


def start(server: Server, plan: WorkerPlan, timeout: float = 120.0) -> None:
    """Start TorchServe in the background and return once every worker of every version it
    loads is READY."""
    if (pid := running_pid(server)) is not None:
        raise ServerError(
            f"a TorchServe instance is already running from {server.run_dir} "
            f"(pid {pid}); stop it first with `make stop`"
        )
    config = write_config(server, plan)
    _require_token_authorization(config)
    launch(server, config, environment(server, plan), "--ncs", "--log-config", str(CONFIG_DIR / "log4j2.xml"))
    try:
        wait_until_ready(server, plan.workers_per_version, timeout)
    except ServerError:
        stop(server)  # a server that did not come up is not left running behind the error
        raise


def launch(server: Server, config: Path, environment: dict[str, str], *options: str) -> None:
    """`torchserve --start [options] --ts-config CONFIG --model-store STORE` in the run dir, where
    TorchServe writes its key file; it returns once the frontend is forked."""
    for folder in (server.run_dir / "tmp", server.log_dir):
        folder.mkdir(parents=True, exist_ok=True)
    server.key_file.unlink(missing_ok=True)
    command = [
        *TORCHSERVE,
        "--start",
        *options,
        "--ts-config",
        str(config.resolve()),
        "--model-store",
        str(server.model_store.resolve()),
    ]
    with open(server.log_dir / "console.log", "ab") as console:  # not a pipe: the server keeps it open
        launched = subprocess.run(
            command, cwd=server.run_dir, env=environment, stdout=console, stderr=subprocess.STDOUT, check=False
        )
    if launched.returncode != 0:
        raise ServerError(f"torchserve --start failed; see {server.log_dir / 'console.log'}")


def _require_token_authorization(config: Path) -> None:
    """Our clients authenticate with the keys TorchServe writes at start; with authorization off
    it writes none, and the start would only time out waiting for them."""
    if read_properties(config).get("disable_token_authorization", "false").lower() == "true":
        raise ServerError(
            f"{config} sets disable_token_authorization=true; this project serves with token "
            f"authorization on (docs/security.md). Set it to false in config/config.properties"
        )


def wait_until_ready(server: Server, workers_per_version: int, timeout: float) -> None:
    """Until the inference API answers ping and every version has all its workers READY."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if running_pid(server) is None:  # the launcher writes the pid file before it returns
            raise ServerError(f"TorchServe exited during start-up:\n{log_excerpt(server)}")
        if server.key_file.is_file():
            try:
                if _workers_ready(RestClient.for_server(server, timeout=2), server.versions, workers_per_version):
                    return
            except ApiError:
                pass  # not listening yet, or the versions not loaded yet
        time.sleep(0.5)
    raise ServerError(
        f"TorchServe did not serve {MODEL_NAME} {', '.join(server.versions)} with "
        f"{workers_per_version} READY worker(s) each within {timeout:g} s:\n{log_excerpt(server)}"
    )


def _workers_ready(client: RestClient, versions: tuple[str, ...], workers: int) -> bool:
    client.ping()
    if not versions:
        return True
    statuses = {
        entry["modelVersion"]: [worker["status"] for worker in entry["workers"]]
        for entry in client.describe(MODEL_NAME, "all")
    }
    return all(statuses.get(version) == ["READY"] * workers for version in versions)


def members(server: Server) -> list[psutil.Process]:
    """This instance's frontend and every worker it started; none if it is not running."""
    pid = running_pid(server)
    return [] if pid is None else [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]


def stop(server: Server, timeout: float = 60.0) -> bool:
    """Stop the frontend and every worker it started; returns False if nothing was running."""
    processes = members(server)
    if not processes:
        return False
    subprocess.run(
        [*TORCHSERVE, "--stop", "--foreground"],
        cwd=server.run_dir,
        env=environment(server),
        capture_output=True,
        timeout=timeout + 10,
        check=False,
    )
    _, alive = psutil.wait_procs(processes, timeout=timeout)
    for process in alive:  # workers that outlived their frontend
        process.kill()
    psutil.wait_procs(alive, timeout=10)
    return True


def log_excerpt(server: Server, lines: int = 30) -> str:
    """The lines of TorchServe's logs that explain a failure: errors first, then the tail."""
    logs = [server.log_dir / name for name in ("model_log.log", "ts_log.log", "console.log")]
    return log_excerpt_of(logs, lines) or f"(no logs in {server.log_dir})"
