"""Start, wait for and stop the Ray Serve engine for one run folder: a one-node Ray cluster on
loopback, the application deployed on it, and TorchServe's key file and listener lines written
where clients look for them (scripts/endpoints.py), so that they work unchanged."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil

from scripts.client.ray_dashboard import DASHBOARD_PROPERTY, ServeControl, cluster_token, config_file
from scripts.client.rest_api import ApiError, RestClient
from scripts.endpoints import (
    DEFAULT_MAX_REQUEST_SIZE,
    HOST,
    Server,
    ServerError,
    log_excerpt_of,
    properties_text,
    read_properties,
)
from scripts.paths import CONFIG_DIR, DEFAULT_VERSION, MODEL_NAME, ROOT, archive_name
from scripts.serve_config import Config, engine_config, version_name
from scripts.worker_plan import WorkerPlan

RAY = str(Path(sys.executable).with_name("ray"))  # the Ray of this interpreter's environment
# Ray puts a node on the address other machines reach it by, even when told 127.0.0.1, unless
# clusters are off (the switch Ray uses on macOS and Windows): then every listener it opens for
# the node is on loopback.
ONE_MACHINE = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
# Serve gives its HTTP proxy 5 s to say it is ready, 3 times, then kills it: on two busy cores
# (tests/test_ray_engine.py under `make test-busy`) a starting proxy needs longer.
PATIENT_PROXY = {"RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S": "60", "RAY_SERVE_PROXY_HEALTH_CHECK_TIMEOUT_S": "60"}
# Ray starts its worker processes (the replicas, Serve's proxies) at nice 15, below every other
# process of the machine, where a TorchServe worker runs at 0: beside a busy client the replica
# lost its CPU (measured in docs/engines.md#measured-side-by-side).
SAME_PRIORITY_AS_TORCHSERVE = {"RAY_worker_niceness": "0"}
# How often each process sends its metrics to the node's Prometheus endpoint (Ray's default is
# 10 s): a scrape lags an answer by up to this, and clients read it from config.properties.
METRICS_REPORT_INTERVAL_MS = 500


def start(server: Server, plan: WorkerPlan, timeout: float = 300.0) -> None:
    """Start a Ray cluster for `server`, deploy both versions and return once each answers."""
    if members(server):
        raise ServerError(
            f"a Ray Serve engine is already running from {server.run_dir}; stop it first with `make stop`"
        )
    server.log_dir.mkdir(parents=True, exist_ok=True)
    _write_key_file(server)
    unpacked_archives(server).mkdir(parents=True, exist_ok=True)
    _write_private(cluster_token(server), secrets.token_hex(32))
    # The request-size limit TorchServe reads from config/config.properties, where the clients read it.
    max_request_size = int(
        read_properties(CONFIG_DIR / "config.properties").get("max_request_size", DEFAULT_MAX_REQUEST_SIZE)
    )
    gcs_port, dashboard_port = _free_port(), _free_port()
    server.config_file.write_text(
        "# The Ray Serve engine's listeners and limits (scripts/ray_serve/lifecycle.py)\n"
        + properties_text(
            {
                "engine": "ray",
                **server.listeners(),
                DASHBOARD_PROPERTY: f"http://{HOST}:{dashboard_port}",
                "model_store": server.model_store.resolve(),
                "max_request_size": max_request_size,
                "metrics_report_interval_ms": METRICS_REPORT_INTERVAL_MS,
            }
        )
    )
    config = _engine_config(server, plan, max_request_size)
    config_file(server).write_text(json.dumps(config, indent=2))
    env = _environment(server, plan, max_request_size)
    try:
        _run(
            [
                RAY,
                "start",
                "--head",
                f"--node-ip-address={HOST}",
                f"--port={gcs_port}",
                f"--temp-dir={_temp_dir(server)}",
                # Its REST API takes Serve configs (scripts/client/ray_dashboard.py), on loopback, with the token.
                "--include-dashboard=true",
                f"--dashboard-host={HOST}",
                f"--dashboard-port={dashboard_port}",
                f"--metrics-export-port={server.ports.metrics}",
                f"--num-cpus={os.cpu_count() or 1}",
                "--disable-usage-stats",
            ],
            server,
            env,
        )
        _run(
            [
                sys.executable,
                "-m",
                "scripts.ray_serve.start_serve",
                f"--address={HOST}:{gcs_port}",
                f"--config={config_file(server)}",
            ],
            server,
            env,
        )
        ServeControl(server).apply(config, timeout)
        wait_until_ready(server, timeout)
    except ServerError:
        stop(server)  # an engine that did not come up is not left running behind the error
        raise


def _engine_config(server: Server, plan: WorkerPlan, max_request_size: int) -> Config:
    """Both versions served as make serve serves them, 2.0 the default, sized by the worker rule."""
    return engine_config(
        http_port=server.ports.inference,
        grpc_port=server.ports.grpc_inference,
        frontend_args={
            "model": MODEL_NAME,
            "key_file": str(server.key_file.resolve()),
            "max_request_size": max_request_size,
        },
        default=DEFAULT_VERSION,
        versions={
            version: {
                "model": MODEL_NAME,
                "version": version,
                "archive": str((server.model_store / archive_name(version)).resolve()),
                "threads": plan.threads_per_worker,
                "unpack_under": str(unpacked_archives(server)),
            }
            for version in server.versions
        },
        replicas=plan.workers_per_version,
    )


def wait_until_ready(server: Server, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    client = RestClient.for_server(server, timeout=5)
    while time.monotonic() < deadline:
        try:
            client.ping()
            return
        except ApiError:
            time.sleep(0.5)
    raise ServerError(f"Ray Serve did not answer ping within {timeout:g} s; see {server.log_dir}")


def members(server: Server) -> list[psutil.Process]:
    """Every process of this instance's Ray cluster: each writes its logs into the cluster's temp
    folder (Ray's processes retitle themselves, which blanks their environment and command line)."""
    folder = str(_temp_dir(server)) + os.sep
    found = []
    for process in psutil.process_iter():
        try:
            if any(file.path.startswith(folder) for file in process.open_files()):
                found.append(process)
        except psutil.Error:
            continue
    return found


def unpacked_archives(server: Server) -> Path:
    """Where the replicas unpack their archives: the engine's stop removes it."""
    return _temp_dir(server) / "unpacked-archives"


def replicas(server: Server, version: str | None = None) -> list[psutil.Process]:
    """The replicas of a version's deployment (every version's, if None): Ray retitles each
    `ray::ServeReplica:APP:DEPLOYMENT`, a version's application and deployment both named
    `resnet50-VERSION` (scripts/serve_config.py)."""
    prefix = f"ray::ServeReplica:{version_name(MODEL_NAME, version or '')}"
    if version:
        prefix += f":{version_name(MODEL_NAME, version)}"
    return [process for process in members(server) if _title(process).startswith(prefix)]


def _title(process: psutil.Process) -> str:
    try:
        return " ".join(process.cmdline())
    except psutil.Error:  # it ended between the listing and the reading
        return ""


def stop(server: Server, timeout: float = 5.0) -> bool:
    """Stop every process of this run folder's Ray cluster; returns False if none was running.
    SIGTERM, then SIGKILL after `timeout`: most of its processes exit within about 3 s, while some
    of Ray's head services (the GCS, its monitor, the agents) outlived SIGTERM by more than 40 s
    (Ray 2.60, measured) and hold nothing the next start needs."""
    processes = members(server)
    for process in processes:
        with contextlib.suppress(psutil.Error):
            process.terminate()
    _, alive = psutil.wait_procs(processes, timeout=timeout)
    for process in alive:
        process.kill()
    psutil.wait_procs(alive, timeout=10)
    shutil.rmtree(unpacked_archives(server), ignore_errors=True)  # those of replicas that were killed
    return bool(processes)


def log_excerpt(server: Server, lines: int = 30) -> str:
    """The lines of the engine's logs that explain a failure: Serve's, then `ray start`'s."""
    serve_logs = sorted((_temp_dir(server) / "session_latest" / "logs" / "serve").glob("*.log"))
    return log_excerpt_of([*serve_logs, server.log_dir / "ray-console.log"], lines) or f"(no logs in {server.log_dir})"


def _environment(server: Server, plan: WorkerPlan, max_request_size: int) -> dict[str, str]:
    # The gRPC proxy's message limit, TorchServe's gRPC port's: max_request_size. Serve applies it to
    # replies too, which stay far under it (32 images' probabilities are 128 KB).
    grpc_limit = {"RAY_SERVE_GRPC_MAX_MESSAGE_SIZE": str(max_request_size)}
    metrics = {"RAY_metrics_report_interval_ms": str(METRICS_REPORT_INTERVAL_MS)}
    token = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(cluster_token(server).resolve())}
    env = dict(
        os.environ,
        **ONE_MACHINE,
        **PATIENT_PROXY,
        **SAME_PRIORITY_AS_TORCHSERVE,
        **grpc_limit,
        **metrics,
        **token,
        PYTHONPATH=str(ROOT),
    )
    if plan.threads_per_worker:
        env["OMP_NUM_THREADS"] = str(plan.threads_per_worker)
    return env


def _write_key_file(server: Server) -> None:
    """Fresh keys in TorchServe's key_file.json format."""
    keys = {kind: {"key": secrets.token_urlsafe(24)} for kind in ("management", "inference", "API")}
    _write_private(server.key_file, json.dumps(keys))


def _write_private(path: Path, text: str) -> None:
    """A new file, readable by this user only."""
    path.unlink(missing_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(text)


def _temp_dir(server: Server) -> Path:
    """Short: Ray's socket paths live under it, and a socket's path may not pass 107 bytes."""
    return Path("/tmp") / f"resnet50-ray-{server.ports.inference}"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _run(command: list[str], server: Server, env: dict[str, str]) -> None:
    with open(server.log_dir / "ray-console.log", "ab") as console:
        done = subprocess.run(command, cwd=ROOT, env=env, stdout=console, stderr=subprocess.STDOUT, check=False)
    if done.returncode != 0:
        raise ServerError(f"{' '.join(command[:3])} failed; see {server.log_dir / 'ray-console.log'}")
