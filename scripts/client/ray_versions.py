"""TorchServe's version commands on the Ray Serve engine, done Ray Serve's way: each is an edit of
the engine's Serve config (scripts/serve_config.py), applied as `serve deploy` applies one
(scripts/client/ray_dashboard.py). The same calls, answers and refusals as the management API's
(scripts/client/rest_api.py), so the client's version commands work on both engines.

| command | the config change | what Serve does |
| --- | --- | --- |
| register | a version's application added, then routed to | starts its replicas; the rest run on |
| set-default | the frontend's user_config | reconfigures the frontend, no restart |
| scale | the version's num_replicas, or autoscaling_config if min < max | adds or stops replicas |
| unregister | no longer routed to, then its application removed | stops its replicas |
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scripts import serve_config
from scripts.archive_contents import identity, model_config
from scripts.client.ray_dashboard import WORKER_STATUS, ServeControl
from scripts.client.rest_api import ApiError
from scripts.endpoints import Server, ServerError, read_properties
from scripts.serve_config import Config

# A registration waits for the version's replicas to load, as TorchServe's synchronous one does.
LOAD_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class RayServeVersions:
    """The management calls of RestClient, on the engine serving from `server`'s run folder."""

    server: Server

    @classmethod
    def for_server(cls, server: Server) -> RayServeVersions:
        return cls(server)

    def list_models(self) -> dict[str, Any]:
        config = self._config()
        default = serve_config.routing(config)["default"]
        return {"models": [{"modelName": serve_config.model(config), "modelUrl": self._archive(config, default)}]}

    def describe(self, model: str, version: str | None = None) -> list[dict[str, Any]]:
        """One version, "all" of them, or (None) the default version."""
        config = self._config_of(model)
        routing = serve_config.routing(config)
        if version == "all":
            return [self._description(config, served) for served in routing["versions"]]
        return [self._description(config, self._served(config, version or routing["default"]))]

    def register(self, archive: str, initial_workers: int, synchronous: bool = True) -> dict[str, Any]:
        """Serve the archive's version beside the others, on `initial_workers` replicas; returns
        once they answer (the engine's registrations are all synchronous)."""
        config = self._config()
        path = self._in_store(archive)
        model, version = identity(path)
        if model != serve_config.model(config):
            raise ApiError(400, f"the Ray Serve engine serves {serve_config.model(config)}, not {model} ({archive})")
        routing = serve_config.routing(config)
        if version in routing["versions"]:
            raise ApiError(409, f"Model version {version} is already registered for model {model}")
        # A new version's replicas are made as the default version's are, from its own archive.
        args = {**serve_config.version_application(config, routing["default"])["args"]}
        args.update(version=version, archive=str(path))
        unrouted = serve_config.without_version(config, version)  # an application a failed registration left
        loaded = serve_config.with_version(unrouted, version, args, initial_workers)
        try:
            self._apply(loaded, LOAD_TIMEOUT_S)
        except ApiError:
            self._apply(config)  # the version that did not load is removed
            raise
        self._apply(serve_config.with_routing(loaded, [*routing["versions"], version], routing["default"]))
        return {"status": f'Model "{model}" Version: {version} registered with {initial_workers} initial workers'}

    def set_default(self, model: str, version: str) -> dict[str, Any]:
        config = self._config_of(model)
        routing = serve_config.routing(config)
        if version not in routing["versions"]:
            raise ApiError(404, f"Model version {version} does not exist for model {model}")
        self._apply(serve_config.with_routing(config, routing["versions"], version))
        return {"status": f'Default version successfully updated for model "{model}" to "{version}"'}

    def scale(self, model: str, version: str, min_workers: int, max_workers: int) -> dict[str, Any]:
        """`min_workers` replicas; if `max_workers` is more, Serve's autoscaler adds replicas up to
        it while each replica has more than a batch of requests (TorchServe starts `min_workers`
        and stops there)."""
        if max_workers < min_workers:
            raise ApiError(400, "max_worker cannot be less than min_worker.")
        config = self._config_of(model)
        self._served(config, version)
        batch = int(self._settings(config, version)["batchSize"])
        self._apply(serve_config.with_replicas(config, version, min_workers, max_workers, target_ongoing=batch))
        return {"status": f"Workers scaled to {min_workers} for model: {model}, version: {version}"}

    def unregister(self, model: str, version: str) -> dict[str, Any]:
        config = self._config_of(model)
        routing = serve_config.routing(config)
        self._served(config, version)
        others = [served for served in routing["versions"] if served != version]
        if version == routing["default"] and others:
            raise ApiError(403, f"Cannot remove default version for model {model}")
        if not others:  # TorchServe would unregister the model; the engine keeps serving it
            raise ApiError(403, f"Cannot remove the last version of model {model}: register another first")
        # Routed to no more, then removed: a request routed to a deployment already deleted would
        # wait for replicas that never come. (Serve also drains a removed replica's requests: the
        # switch under load lost none with the two in one step too.)
        unrouted = serve_config.with_routing(config, others, routing["default"])
        self._apply(unrouted)
        self._apply(serve_config.without_version(unrouted, version))
        return {"status": f'Model "{model}" unregistered'}

    def _config(self) -> Config:
        return ServeControl(self.server).config()

    def _config_of(self, model: str) -> Config:
        config = self._config()
        if model != serve_config.model(config):
            raise ApiError(404, f"Model not found: {model}")
        return config

    def _served(self, config: Config, version: str) -> str:
        if version not in serve_config.routing(config)["versions"]:
            raise ApiError(404, f"Model version: {version} does not exist for model: {serve_config.model(config)}")
        return version

    def _apply(self, config: Config, timeout: float = 120.0) -> None:
        try:
            ServeControl(self.server).apply(config, timeout)
        except ServerError as error:
            raise ApiError(500, str(error)) from None

    def _in_store(self, archive: str) -> Path:
        """The archive in the model store, refused as TorchServe refuses what is not there."""
        store = Path(read_properties(self.server.config_file)["model_store"]).resolve()
        if "://" in archive:
            raise ApiError(404, f"Given URL {archive} does not match any allowed URL(s)")
        if ".." in Path(archive).parts:
            raise ApiError(404, f"Relative path is not allowed in url: {archive}")
        path = (store / archive).resolve()
        if path.parent != store or not path.is_file():
            raise ApiError(404, f"Model not found at: {archive}")
        return path

    def _archive_path(self, config: Config, version: str) -> str:
        return str(serve_config.version_application(config, version)["args"]["archive"])

    def _settings(self, config: Config, version: str) -> dict[str, Any]:
        return model_config(Path(self._archive_path(config, version)))

    def _archive(self, config: Config, version: str) -> str:
        return Path(self._archive_path(config, version)).name

    def _description(self, config: Config, version: str) -> dict[str, Any]:
        """TorchServe's description of a version: its archive, bounds, batching and workers (Serve's
        replicas, with their pids)."""
        low, high = serve_config.replica_bounds(config, version)
        settings = self._settings(config, version)
        replicas = ServeControl(self.server).replicas(serve_config.version_name(serve_config.model(config), version))
        return {
            "modelName": serve_config.model(config),
            "modelVersion": version,
            "modelUrl": self._archive(config, version),
            "minWorkers": low,
            "maxWorkers": high,
            "batchSize": int(settings["batchSize"]),
            "maxBatchDelay": int(settings["maxBatchDelay"]),
            "workers": [
                {
                    "id": replica["replica_id"],
                    "pid": replica.get("pid"),  # none yet while it starts
                    "status": WORKER_STATUS.get(replica["state"], replica["state"]),
                }
                for replica in replicas
            ],
        }
