"""Start, wait for, and stop one TorchServe instance living in its own run folder.

The run folder holds everything the instance writes: its config.properties, key_file.json
(TorchServe writes it to its working directory), logs/ and tmp/ (TorchServe keeps its pid file
in the temp dir, so two instances side by side need two temp dirs).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

import psutil

from scripts.server.java_runtime import java_home
from scripts.build.model_config import model_snapshot, snapshot_line
from scripts.paths import CONFIG_DIR, DEFAULT_VERSION, MODEL_NAME, MODEL_STORE, RUN_DIR, SERVED_VERSIONS
from scripts.client.rest_api import ApiError, RestClient, Tokens
from scripts.server.worker_plan import WorkerPlan

if TYPE_CHECKING:
    from scripts.client.grpc_client import GrpcClient

HOST = "127.0.0.1"
# TorchServe's launcher run by this interpreter: it needs only `ts` importable, not its bin/ script.
TORCHSERVE = [sys.executable, "-m", "ts.model_server"]
DEFAULT_MAX_REQUEST_SIZE = 6553500  # TorchServe's own default


def read_properties(path: Path) -> dict[str, str]:
    """A Java .properties file as TorchServe reads it: `key=value` lines, the last one wins."""
    properties = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            properties[key.strip()] = value.strip()
    return properties


class ServerError(RuntimeError):
    """The server did not start or stop as asked; the message says why and where to look."""


@dataclass(frozen=True)
class Ports:
    inference: int = 8080
    management: int = 8081
    metrics: int = 8082
    grpc_inference: int = 7070
    grpc_management: int = 7071

    @classmethod
    def free(cls) -> "Ports":
        """Five ports the OS says are free now (for tests and side-by-side servers)."""
        sockets = [socket.socket() for _ in range(5)]
        try:
            for sock in sockets:
                sock.bind((HOST, 0))
            return cls(*(sock.getsockname()[1] for sock in sockets))
        finally:
            for sock in sockets:
                sock.close()


@dataclass(frozen=True)
class Server:
    run_dir: Path = RUN_DIR
    model_store: Path = MODEL_STORE
    ports: Ports = field(default_factory=Ports)
    properties: dict[str, object] = field(default_factory=dict)  # extra config.properties lines, e.g. job_queue_size
    versions: tuple[str, ...] = SERVED_VERSIONS  # loaded at start (model_snapshot), DEFAULT_VERSION the default

    @property
    def inference_url(self) -> str:
        return f"http://{HOST}:{self.ports.inference}"

    @property
    def management_url(self) -> str:
        return f"http://{HOST}:{self.ports.management}"

    @property
    def metrics_url(self) -> str:
        return f"http://{HOST}:{self.ports.metrics}/metrics"

    @property
    def key_file(self) -> Path:
        return self.run_dir / "key_file.json"

    @property
    def log_dir(self) -> Path:
        return self.run_dir / "logs"

    @property
    def config_file(self) -> Path:
        return self.run_dir / "config.properties"

    def listeners(self) -> dict[str, object]:
        """The config.properties lines that put this instance's listeners on its ports."""
        return {"inference_address": self.inference_url, "management_address": self.management_url,
                "metrics_address": f"http://{HOST}:{self.ports.metrics}",
                "grpc_inference_port": self.ports.grpc_inference, "grpc_management_port": self.ports.grpc_management}

    def client(self, timeout: float = 120.0) -> RestClient:
        return RestClient(self.inference_url, self.management_url, Tokens.from_key_file(self.key_file), timeout)

    def grpc_client(self, timeout: float = 120.0) -> "GrpcClient":
        from scripts.client.grpc_client import GrpcClient  # grpc is only loaded by those who use it

        return GrpcClient(f"{HOST}:{self.ports.grpc_inference}", f"{HOST}:{self.ports.grpc_management}",
                          Tokens.from_key_file(self.key_file), self.max_request_size(), timeout, self.model_store)

    def max_request_size(self) -> int:
        return int(read_properties(self.config_file).get("max_request_size", DEFAULT_MAX_REQUEST_SIZE))

    @classmethod
    def from_run_dir(cls, run_dir: Path = RUN_DIR) -> "Server":
        """The instance a `make serve` started, found from the config it wrote into its run dir."""
        config_file = run_dir / "config.properties"
        if not config_file.is_file():
            raise ServerError(f"no server config in {run_dir}: start the server with `make serve`")
        properties = read_properties(config_file)
        port = lambda key: int(properties[key].rsplit(":", 1)[-1])  # noqa: E731
        return cls(run_dir=run_dir, model_store=Path(properties["model_store"]), ports=Ports(
            port("inference_address"), port("management_address"), port("metrics_address"),
            port("grpc_inference_port"), port("grpc_management_port")))

    def environment(self, plan: WorkerPlan | None = None) -> dict[str, str]:
        env = dict(os.environ, TMPDIR=str(self.run_dir / "tmp"), TEMP=str(self.run_dir / "tmp"),
                   JAVA_HOME=str(java_home()), LOG_LOCATION=str(self.log_dir),
                   METRICS_LOCATION=str(self.log_dir))
        if plan is not None and plan.threads_per_worker:
            # Workers inherit the frontend's environment; torch reads this for its intra-op threads.
            env["OMP_NUM_THREADS"] = str(plan.threads_per_worker)
        return env

    def pid(self) -> int | None:
        """The frontend's pid, if this instance is running."""
        pid_file = self.run_dir / "tmp" / ".model_server.pid"
        try:
            pid = int(pid_file.read_text().strip())
            return pid if "org.pytorch.serve.ModelServer" in psutil.Process(pid).cmdline() else None
        except (FileNotFoundError, ValueError, psutil.Error):
            return None


def properties_text(properties: Mapping[str, object]) -> str:
    """`key=value` lines, as config.properties holds them."""
    return "".join(f"{key}={value}\n" for key, value in properties.items())


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
    server.config_file.write_text(base + "\n# Set by scripts/server/lifecycle.py for this instance\n"
                                  + properties_text(overrides) + snapshot + "\n")
    return server.config_file


def start(server: Server, plan: WorkerPlan, timeout: float = 120.0) -> None:
    """Start TorchServe in the background and return once every worker of every version it
    loads is READY."""
    if server.pid() is not None:
        raise ServerError(f"a TorchServe instance is already running from {server.run_dir} "
                          f"(pid {server.pid()}); stop it first with `make stop`")
    config = write_config(server, plan)
    _require_token_authorization(config)
    launch(server, config, server.environment(plan), "--ncs", "--log-config", str(CONFIG_DIR / "log4j2.xml"))
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
    command = [*TORCHSERVE, "--start", *options,
               "--ts-config", str(config.resolve()), "--model-store", str(server.model_store.resolve())]
    with open(server.log_dir / "console.log", "ab") as console:  # not a pipe: the server keeps it open
        launched = subprocess.run(command, cwd=server.run_dir, env=environment, stdout=console,
                                  stderr=subprocess.STDOUT)
    if launched.returncode != 0:
        raise ServerError(f"torchserve --start failed; see {server.log_dir / 'console.log'}")


def _require_token_authorization(config: Path) -> None:
    """Our clients authenticate with the keys TorchServe writes at start; with authorization off
    it writes none, and the start would only time out waiting for them."""
    if read_properties(config).get("disable_token_authorization", "false").lower() == "true":
        raise ServerError(f"{config} sets disable_token_authorization=true; this project serves with token "
                          f"authorization on (docs/security.md). Set it to false in config/config.properties")


def wait_until_ready(server: Server, workers_per_version: int, timeout: float) -> None:
    """Until the inference API answers ping and every version has all its workers READY."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.pid() is None:  # the launcher writes the pid file before it returns
            raise ServerError(f"TorchServe exited during start-up:\n{log_excerpt(server)}")
        if server.key_file.is_file():
            try:
                if _workers_ready(server.client(timeout=2), server.versions, workers_per_version):
                    return
            except ApiError:
                pass  # not listening yet, or the versions not loaded yet
        time.sleep(0.5)
    raise ServerError(f"TorchServe did not serve {MODEL_NAME} {', '.join(server.versions)} with "
                      f"{workers_per_version} READY worker(s) each within {timeout:g} s:\n{log_excerpt(server)}")


def _workers_ready(client: RestClient, versions: tuple[str, ...], workers: int) -> bool:
    client.ping()
    if not versions:
        return True
    statuses = {entry["modelVersion"]: [worker["status"] for worker in entry["workers"]]
                for entry in client.describe(MODEL_NAME, "all")}
    return all(statuses.get(version) == ["READY"] * workers for version in versions)


def stop(server: Server, timeout: float = 60.0) -> bool:
    """Stop the frontend and every worker it started; returns False if nothing was running."""
    pid = server.pid()
    if pid is None:
        return False
    processes = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    subprocess.run([*TORCHSERVE, "--stop", "--foreground"],
                   cwd=server.run_dir, env=server.environment(), capture_output=True, timeout=timeout + 10)
    _, alive = psutil.wait_procs(processes, timeout=timeout)
    for process in alive:  # workers that outlived their frontend
        process.kill()
    psutil.wait_procs(alive, timeout=10)
    return True


def log_excerpt(server: Server, lines: int = 30) -> str:
    """The lines of TorchServe's logs that explain a failure: errors first, then the tail."""
    excerpt: list[str] = []
    for name in ("model_log.log", "ts_log.log", "console.log"):
        path = server.log_dir / name
        if not path.is_file():
            continue
        text = path.read_text(errors="replace").splitlines()
        relevant = [line for line in text if any(word in line for word in ("ERROR", "Error", "Traceback", "Exception"))]
        chosen = (relevant or text)[-lines:]
        if chosen:
            excerpt.append(f"--- {path} ---")
            excerpt.extend(chosen)
    return "\n".join(excerpt) or f"(no logs in {server.log_dir})"
