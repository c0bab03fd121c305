"""Apply a Serve config (scripts/serve_config.py) to the running engine, as `serve deploy` does: through
Ray's dashboard REST API on loopback, with the cluster's token; then wait until Serve runs it.

Serve applies a config whole: an application it no longer names is deleted, a changed
application is rebuilt, and a change of replicas or of a user_config alone is applied to the
running replicas."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from scripts.endpoints import Server, ServerError, read_properties
from scripts.serve_config import Config

DASHBOARD_PROPERTY = "dashboard_address"
NOT_RUNNING = "is the engine running? Start it with `make serve ENGINE=ray`"
# Serve's states of a replica, in TorchServe's words for a worker (`describe`).
WORKER_STATUS = {"RUNNING": "READY", "STARTING": "LOADING", "UPDATING": "LOADING", "STOPPING": "UNLOADING"}


def config_file(server: Server) -> Path:
    """The config the engine runs: written at start, rewritten by each version change."""
    return server.run_dir / "serve_config.json"


def cluster_token(server: Server) -> Path:
    """The run's own Ray token: its cluster and dashboard take no call without it (Ray's token
    auth). Left to itself, Ray 2.60 turns token auth on where ~/.ray/auth_token exists (any
    ray.init() leaves one) and the engine's own calls are then refused."""
    return server.run_dir / "ray_auth_token"


@dataclass(frozen=True)
class ServeControl:
    """The running engine's Serve, as its dashboard shows it."""

    server: Server

    def config(self) -> Config:
        """The config the engine runs, once it is seen to be running."""
        path = config_file(self.server)
        if not path.is_file():
            raise ServerError(f"no Ray Serve engine was started from {self.server.run_dir}: {NOT_RUNNING}")
        self.details()
        config: Config = json.loads(path.read_text())
        return config

    def apply(self, config: Config, timeout: float) -> None:
        """Deploy `config` and return once Serve runs it as given; the file follows. On a failure
        the file still holds the config that ran before."""
        self._call("deploy_applications", config)
        self._wait_until_running(config, timeout)
        config_file(self.server).write_text(json.dumps(config, indent=2))

    def details(self) -> dict[str, Any]:
        """Serve's applications, deployments and replicas (`serve status`, in full)."""
        details: dict[str, Any] = self._call("get_serve_details")
        return details

    def replicas(self, application: str) -> list[dict[str, Any]]:
        """An application's replicas: Serve's replica_id, pid and state of each."""
        app = self.details()["applications"].get(application, {})
        return [replica for deployment in app.get("deployments", {}).values() for replica in deployment["replicas"]]

    def _call(self, method: str, *args: Any) -> Any:
        """A call of Ray's Serve SDK (`serve deploy`'s), its failures said as the engine's."""
        # Imported here: Ray's SDK takes seconds to import, and only the Ray engine's calls need it.
        from ray.dashboard.modules.serve.sdk import ServeSubmissionClient

        address = read_properties(self.server.config_file).get(DASHBOARD_PROPERTY)
        if address is None:
            raise ServerError(f"{self.server.config_file} names no {DASHBOARD_PROPERTY}: {NOT_RUNNING}")
        headers = {"Authorization": f"Bearer {cluster_token(self.server).read_text().strip()}"}
        try:
            return getattr(ServeSubmissionClient(address, headers=headers), method)(*args)
        except (ConnectionError, requests.ConnectionError):  # the SDK's own, and one of a later call
            raise ServerError(f"cannot reach Ray's dashboard at {address}: {NOT_RUNNING}") from None
        except RuntimeError as error:  # the SDK's way of saying the dashboard refused the call
            raise ServerError(f"Ray's dashboard at {address} refused the call: {error}") from None

    def _wait_until_running(self, config: Config, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            details = self.details()
            failure = _failure(details, config)
            if failure:
                raise ServerError(failure)
            if _runs(details, config):
                return
            if time.monotonic() > deadline:
                raise ServerError(f"Ray Serve did not apply the change within {timeout:g} s: {_states(details)}")
            time.sleep(0.5)


def _runs(details: dict[str, Any], config: Config) -> bool:
    """Whether Serve runs `config`: exactly its applications, each RUNNING, and each deployment
    healthy with the replicas and user_config the config gives it."""
    running = details.get("applications", {})
    if set(running) != {app["name"] for app in config["applications"]}:
        return False
    for app in config["applications"]:
        state = running[app["name"]]
        if state["status"] != "RUNNING":
            return False
        for wanted in app.get("deployments", []):
            deployment = state["deployments"].get(wanted["name"])
            if deployment is None or deployment["status"] != "HEALTHY":
                return False
            given = deployment["deployment_config"]
            if any(not _holds(given.get(key), value) for key, value in wanted.items() if key != "name"):
                return False
            if "num_replicas" in wanted and _states_of(deployment) != ["RUNNING"] * wanted["num_replicas"]:
                return False
    return True


def _holds(given: Any, wanted: Any) -> bool:
    """Whether Serve's value is the config's; of a mapping, every key the config sets (Serve fills
    in the rest of an autoscaling_config)."""
    if isinstance(wanted, dict) and isinstance(given, dict):
        return all(given.get(key) == value for key, value in wanted.items())
    return bool(given == wanted)


def _states_of(deployment: dict[str, Any]) -> list[str]:
    """Its replicas' states: a replica being stopped is listed until it has stopped."""
    return [replica["state"] for replica in deployment["replicas"]]


def _failure(details: dict[str, Any], config: Config) -> str | None:
    """Serve's message for an application of `config` that failed to deploy."""
    for app in config["applications"]:
        state = details.get("applications", {}).get(app["name"])
        if state and state["status"] == "DEPLOY_FAILED":
            return f"Ray Serve could not deploy {app['name']}: {state['message']}"
    return None


def _states(details: dict[str, Any]) -> str:
    return ", ".join(f"{name} {app['status']}" for name, app in details.get("applications", {}).items()) or "none"
