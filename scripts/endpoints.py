"""Where one TorchServe instance lives and how to reach it: its run folder, ports and config.

Shared by the code that runs a server (scripts/server/) and the code that talks to one
(scripts/client/), so neither has to import the other to find it. The run folder holds everything
the instance writes: its config.properties, key_file.json (TorchServe writes it to its working
directory), logs/ and tmp/ (TorchServe keeps its pid file in the temp dir, so two instances side by
side need two temp dirs).
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from scripts.paths import MODEL_STORE, RUN_DIR, SERVED_VERSIONS

HOST = "127.0.0.1"
DEFAULT_MAX_REQUEST_SIZE = 6553500  # TorchServe's own default


def log_excerpt_of(paths: list[Path], lines: int = 30) -> str:
    """The lines of these logs that explain a failure: each log's errors, or the tail of the
    first log that has no error lines."""
    excerpt: list[str] = []
    for path in paths:
        if not path.is_file():
            continue
        text = path.read_text(errors="replace").splitlines()
        relevant = [line for line in text if any(word in line for word in ("ERROR", "Error", "Traceback", "Exception"))]
        chosen = (relevant or text)[-lines:]
        if chosen:
            excerpt.append(f"--- {path} ---")
            excerpt.extend(chosen)
    return "\n".join(excerpt)


class ServerError(RuntimeError):
    """The server did not start or stop as asked; the message says why and where to look."""


def read_properties(path: Path) -> dict[str, str]:
    """A Java .properties file as TorchServe reads it: `key=value` lines, the last one wins."""
    properties = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            properties[key.strip()] = value.strip()
    return properties


def properties_text(properties: Mapping[str, object]) -> str:
    """`key=value` lines, as config.properties holds them."""
    return "".join(f"{key}={value}\n" for key, value in properties.items())


@dataclass(frozen=True)
class Ports:
    inference: int = 8080
    management: int = 8081
    metrics: int = 8082
    grpc_inference: int = 7070
    grpc_management: int = 7071

    @classmethod
    def free(cls) -> Ports:
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

    @property
    def engine(self) -> str:
        """What serves from the run dir: the Ray Serve engine names itself in its config.properties
        (`engine=ray`, scripts/ray_serve/lifecycle.py); TorchServe's has no such line."""
        if not self.config_file.is_file():  # TorchServe started on the repository's own config
            return "torchserve"
        return read_properties(self.config_file).get("engine", "torchserve")

    @property
    def metrics_report_s(self) -> float:
        """How often the metrics page takes in new values: the Ray Serve engine's processes report
        at an interval it writes in its config.properties; TorchServe's page is current when read."""
        return int(read_properties(self.config_file).get("metrics_report_interval_ms", 0)) / 1000

    def listeners(self) -> dict[str, object]:
        """The config.properties lines that put this instance's listeners on its ports."""
        return {
            "inference_address": self.inference_url,
            "management_address": self.management_url,
            "metrics_address": f"http://{HOST}:{self.ports.metrics}",
            "grpc_inference_port": self.ports.grpc_inference,
            "grpc_management_port": self.ports.grpc_management,
        }

    def max_request_size(self) -> int:
        return int(read_properties(self.config_file).get("max_request_size", DEFAULT_MAX_REQUEST_SIZE))

    @classmethod
    def from_run_dir(cls, run_dir: Path = RUN_DIR) -> Server:
        """The instance a `make serve` started, found from the config it wrote into its run dir."""
        config_file = run_dir / "config.properties"
        if not config_file.is_file():
            raise ServerError(f"no server config in {run_dir}: start the server with `make serve`")
        properties = read_properties(config_file)

        def port(key: str) -> int:
            return int(properties[key].rsplit(":", 1)[-1])

        return cls(
            run_dir=run_dir,
            model_store=Path(properties["model_store"]),
            ports=Ports(
                port("inference_address"),
                port("management_address"),
                port("metrics_address"),
                port("grpc_inference_port"),
                port("grpc_management_port"),
            ),
        )
