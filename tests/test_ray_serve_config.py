"""The Ray Serve engine's Serve config (scripts/serve_config.py) and each version
command's edit of it: Serve's own schema keeps every field of each, and an edit changes only what
it names, on a copy; and the edits the version commands (scripts/client/ray_versions.py) make of
the archives' own settings."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from ray.serve.config import AutoscalingConfig
from ray.serve.schema import ServeDeploySchema

import promised
from conftest import refused
from manifests import differences
from scripts import serve_config
from scripts.client.ray_versions import RayServeVersions
from scripts.client.rest_api import ApiError
from scripts.endpoints import Ports, Server, properties_text
from scripts.paths import MODEL_NAME, archive_name

VERSION_ARGS = {"model": "resnet50", "threads": 2, "unpack_under": "/tmp/unpacked"}


def engine() -> serve_config.Config:
    return serve_config.engine_config(
        http_port=8080,
        grpc_port=7070,
        frontend_args={"model": "resnet50", "key_file": "/run/key_file.json", "max_request_size": 10485760},
        default="2.0",
        versions={
            version: {**VERSION_ARGS, "version": version, "archive": f"/store/resnet50-{version}.mar"}
            for version in ("1.0", "2.0")
        },
        replicas=1,
    )


EDITS: dict[str, Callable[[serve_config.Config], serve_config.Config]] = {
    "engine": lambda config: config,
    "register": lambda config: serve_config.with_version(
        config, "2.1", {**VERSION_ARGS, "version": "2.1", "archive": "/store/resnet50-2.1.mar"}, replicas=1
    ),
    "set-default": lambda config: serve_config.with_routing(config, ["1.0", "2.0"], "1.0"),
    "scale to 2": lambda config: serve_config.with_replicas(config, "1.0", 2, 2, target_ongoing=8),
    "autoscale 1 to 3": lambda config: serve_config.with_replicas(config, "1.0", 1, 3, target_ongoing=8),
    "unregister": lambda config: serve_config.without_version(serve_config.with_routing(config, ["2.0"], "2.0"), "1.0"),
}


@pytest.mark.parametrize("edit", EDITS.values(), ids=EDITS.keys())
def test_serve_takes_each_config_whole(edit: Any) -> None:
    """What `serve deploy` (the dashboard's REST API) validates it with: a misspelled field would be
    dropped without a word."""
    config = edit(engine())
    returned = ServeDeploySchema.model_validate(config).model_dump(mode="json", exclude_unset=True)
    assert differences(config, returned) == []
    # Serve keeps an autoscaling_config's unknown keys and ignores them: each must be a field.
    for app in config["applications"]:
        for deployment in app["deployments"]:
            assert deployment.get("autoscaling_config", {}).keys() <= AutoscalingConfig.model_fields.keys()


@pytest.mark.parametrize("edit", EDITS.values(), ids=EDITS.keys())
def test_an_edit_leaves_the_config_it_was_given_alone(edit: Any) -> None:
    original = engine()
    kept = copy.deepcopy(original)
    edit(original)
    assert original == kept


def test_the_engine_routes_to_each_version_and_serves_none_of_them_over_http() -> None:
    config = engine()
    assert serve_config.routing(config) == {"versions": ["1.0", "2.0"], "default": "2.0"}
    assert serve_config.deployed_versions(config) == ["1.0", "2.0"]
    routes = {app["name"]: app["route_prefix"] for app in config["applications"]}
    assert routes == {"resnet50": "/", "resnet50-1.0": None, "resnet50-2.0": None}
    assert config["http_options"]["host"] == config["grpc_options"].get("host", "127.0.0.1") == "127.0.0.1"


def test_a_registered_version_is_deployed_but_not_routed_to_until_the_routing_says_so() -> None:
    config = EDITS["register"](engine())
    assert serve_config.deployed_versions(config) == ["1.0", "2.0", "2.1"]
    assert serve_config.routing(config)["versions"] == ["1.0", "2.0"]
    assert serve_config.version_application(config, "2.1")["args"]["archive"] == "/store/resnet50-2.1.mar"


@pytest.mark.parametrize(("low", "high"), [(2, 2), (1, 3)])
def test_replicas_are_fixed_or_autoscaled_between_the_bounds(low: int, high: int) -> None:
    config = serve_config.with_replicas(engine(), "1.0", low, high, target_ongoing=8)
    assert serve_config.replica_bounds(config, "1.0") == (low, high)
    assert serve_config.replica_bounds(config, "2.0") == (1, 1)
    (deployment,) = serve_config.version_application(config, "1.0")["deployments"]
    if low == high:
        assert deployment == {"name": "resnet50-1.0", "num_replicas": low}
    else:
        scaling = {"min_replicas": low, "max_replicas": high, "target_ongoing_requests": 8}
        assert deployment == {"name": "resnet50-1.0", "autoscaling_config": scaling}


@dataclass(frozen=True)
class HeldVersions(RayServeVersions):
    """The version commands on a config held here: each config they apply is kept, last the
    current one, and none is sent to Serve; one that deploys the `failing` version is kept and
    refused, as Serve refuses one whose replicas fail to load."""

    applied: list[serve_config.Config] = field(default_factory=list)
    failing: str | None = None

    def _config(self) -> serve_config.Config:
        return self.applied[-1]

    def _apply(self, config: serve_config.Config, timeout: float = 120.0) -> None:
        self.applied.append(config)
        if self.failing in serve_config.deployed_versions(config):
            raise ApiError(500, f"the replicas of {self.failing} failed to start")


def held_versions(
    model_store: Path, tmp_path: Path, versions: tuple[str, ...], failing: str | None = None
) -> HeldVersions:
    """The engine serving `versions` of the test archives from `model_store`, the last the default."""
    (tmp_path / "config.properties").write_text(properties_text({"model_store": model_store}))
    config = serve_config.engine_config(
        http_port=8080,
        grpc_port=7070,
        frontend_args={"model": MODEL_NAME, "key_file": "/run/key_file.json", "max_request_size": 10485760},
        default=versions[-1],
        versions={
            version: {**VERSION_ARGS, "version": version, "archive": str(model_store / archive_name(version))}
            for version in versions
        },
        replicas=1,
    )
    return HeldVersions(Server(run_dir=tmp_path, model_store=model_store, ports=Ports.free()), [config], failing)


def test_scale_with_room_to_grow_adds_a_replica_while_each_holds_more_than_a_batch(
    model_store: Path, tmp_path: Path
) -> None:
    """docs/engines.md: Serve's autoscaler targets the archive's batch size per replica."""
    versions = held_versions(model_store, tmp_path, ("1.0", "2.0"))
    versions.scale(MODEL_NAME, "1.0", 1, 3)
    (deployment,) = serve_config.version_application(versions.applied[-1], "1.0")["deployments"]
    scaling = {"min_replicas": 1, "max_replicas": 3, "target_ongoing_requests": promised.BATCH_SIZE}
    assert deployment["autoscaling_config"] == scaling


def test_the_last_version_served_is_not_unregistered(model_store: Path, tmp_path: Path) -> None:
    """docs/engines.md: 403, where TorchServe would unregister the model; nothing is applied."""
    versions = held_versions(model_store, tmp_path, ("2.0",))
    assert refused(versions.unregister, MODEL_NAME, "2.0").status == 403
    assert len(versions.applied) == 1


@pytest.mark.parametrize(
    ("archive", "message"),
    [
        ("https://example.com/resnet50-1.0.mar", "Given URL https://example.com/resnet50-1.0.mar does not match"),
        (f"../{archive_name('1.0')}", "Relative path is not allowed in url"),
        (archive_name("9.9"), f"Model not found at: {archive_name('9.9')}"),
    ],
)
def test_only_an_archive_in_the_model_store_is_registered(
    model_store: Path, tmp_path: Path, archive: str, message: str
) -> None:
    """docs/engines.md: refused as TorchServe refuses them (404), before Serve is asked anything."""
    versions = held_versions(model_store, tmp_path, ("2.0",))
    error = refused(versions.register, archive, 1)
    assert error.status == 404 and message in error.message
    assert len(versions.applied) == 1


def test_a_version_whose_replicas_fail_to_load_is_removed_again(model_store: Path, tmp_path: Path) -> None:
    """docs/engines.md: the call fails with Serve's reason (500), and the engine serves what it did."""
    versions = held_versions(model_store, tmp_path, ("2.0",), failing="1.0")
    error = refused(versions.register, archive_name("1.0"), 1)
    assert error.status == 500 and "failed to start" in error.message
    assert versions.applied[-1] == versions.applied[0]
