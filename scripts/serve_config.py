"""The Ray Serve engine as a Serve config: Serve's own declarative format (`ServeDeploySchema`, what
`serve deploy` and a KubeRay RayService's serveConfigV2 hold), kept in the run folder.

One application per served version, each its archive's replicas (app.py's `build_version`), and
one frontend application that routes to them (`build_frontend`): its routing (which versions it
sends to, which is the default) is the frontend deployment's `user_config`. So a version comes and
goes without touching the others, and a new default or a new replica count is one of Serve's
lightweight updates, with no replica restarted (versions.py applies them)."""

from __future__ import annotations

import copy
from typing import Any

from scripts.endpoints import HOST

FRONTEND_BUILDER = "scripts.ray_serve.app:build_frontend"
VERSION_BUILDER = "scripts.ray_serve.app:build_version"
FRONTEND_DEPLOYMENT = "Frontend"
# The functions of grpc_edge.py that add each gRPC service, named, not imported: grpc_edge loads
# tritonclient's gRPC module, which cannot share a process with the kserve package's.
GRPC_SERVICERS = [
    f"scripts.ray_serve.grpc_edge.{function}"
    for function in ("add_torchserve_inference", "add_torchserve_open_inference", "add_open_inference")
]

Config = dict[str, Any]


def version_name(model: str, version: str) -> str:
    """A version's application, and its one deployment: `resnet50-2.0`."""
    return f"{model}-{version}"


def engine_config(
    *,
    http_port: int,
    grpc_port: int,
    frontend_args: dict[str, Any],
    default: str,
    versions: dict[str, dict[str, Any]],
    replicas: int,
) -> Config:
    """The whole engine on one machine: Serve's listeners on loopback, the frontend routing to
    `versions` ({version: build_version's args}), `default` the default, `replicas` each."""
    config: Config = {
        "proxy_location": "HeadOnly",
        "http_options": {"host": HOST, "port": http_port},
        # No reflection service, as TorchServe has none (loopback.py keeps the listener on loopback).
        "grpc_options": {
            "port": grpc_port,
            "grpc_servicer_functions": GRPC_SERVICERS,
            "enable_reflection": False,
        },
        "applications": [frontend_application(frontend_args, versions=sorted(versions), default=default)],
    }
    for version, args in versions.items():
        config = with_version(config, version, args, replicas)
    return config


def frontend_application(args: dict[str, Any], versions: list[str], default: str) -> dict[str, Any]:
    return {
        "name": args["model"],
        "route_prefix": "/",
        "import_path": FRONTEND_BUILDER,
        "args": args,
        "deployments": [{"name": FRONTEND_DEPLOYMENT, "user_config": {"versions": versions, "default": default}}],
    }


def model(config: Config) -> str:
    return str(_frontend(config)["name"])


def routing(config: Config) -> dict[str, Any]:
    """The frontend's routing: {"versions": [...], "default": version}."""
    return dict(_frontend(config)["deployments"][0]["user_config"])


def with_routing(config: Config, versions: list[str], default: str) -> Config:
    changed = copy.deepcopy(config)
    _frontend(changed)["deployments"][0]["user_config"] = {"versions": sorted(versions), "default": default}
    return changed


def deployed_versions(config: Config) -> list[str]:
    """The versions with an application, routed to or not (yet, or any more)."""
    prefix = version_name(model(config), "")
    return sorted(app["name"].removeprefix(prefix) for app in config["applications"] if app["name"].startswith(prefix))


def version_application(config: Config, version: str) -> dict[str, Any]:
    name = version_name(model(config), version)
    (app,) = (app for app in config["applications"] if app["name"] == name)
    return dict(app)


def with_version(config: Config, version: str, args: dict[str, Any], replicas: int) -> Config:
    """`config` with an application for `version` (build_version's `args`), not yet routed to."""
    name = version_name(model(config), version)
    app = {
        "name": name,
        "route_prefix": None,  # reached through the frontend only
        "import_path": VERSION_BUILDER,
        "args": args,
        "deployments": [{"name": name, "num_replicas": replicas}],
    }
    changed = copy.deepcopy(config)
    changed["applications"].append(app)
    return changed


def without_version(config: Config, version: str) -> Config:
    name = version_name(model(config), version)
    changed = copy.deepcopy(config)
    changed["applications"] = [app for app in changed["applications"] if app["name"] != name]
    return changed


def with_replicas(config: Config, version: str, low: int, high: int, target_ongoing: int) -> Config:
    """`version` on `low` replicas, or, if `high` is more, scaled by Serve's autoscaler between the
    two, adding a replica when each has more than `target_ongoing` requests."""
    changed = copy.deepcopy(config)
    name = version_name(model(config), version)
    (deployment,) = (app["deployments"][0] for app in changed["applications"] if app["name"] == name)
    deployment.pop("num_replicas", None)
    deployment.pop("autoscaling_config", None)
    if low == high:
        deployment["num_replicas"] = low
    else:
        deployment["autoscaling_config"] = {
            "min_replicas": low,
            "max_replicas": high,
            "target_ongoing_requests": target_ongoing,
        }
    return changed


def replica_bounds(config: Config, version: str) -> tuple[int, int]:
    """(min, max) replicas of `version`."""
    deployment = version_application(config, version)["deployments"][0]
    if "autoscaling_config" in deployment:
        scaling = deployment["autoscaling_config"]
        return int(scaling["min_replicas"]), int(scaling["max_replicas"])
    return int(deployment["num_replicas"]), int(deployment["num_replicas"])


def _frontend(config: Config) -> dict[str, Any]:
    """The frontend's application, in place (the with_ functions edit a copy of it)."""
    (app,) = (app for app in config["applications"] if app["import_path"] == FRONTEND_BUILDER)
    frontend: dict[str, Any] = app
    return frontend
