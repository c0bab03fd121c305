"""One definition of what a server loads at start (scripts/model_config.py), for the plain
`torchserve --start`, `make serve` and the KServe bundle; and the plain command, started as
docs/serving.md gives it, serving both versions with 2.0 the default."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import served_versions
from images import photo_bytes
from scripts.client.rest_api import RestClient
from scripts.endpoints import Ports, Server, properties_text, read_properties
from scripts.model_config import model_snapshot
from scripts.paths import CONFIG_DIR, MODEL_NAME, SERVED_VERSIONS
from scripts.server.lifecycle import environment, launch, stop, wait_until_ready, write_config
from scripts.worker_plan import WorkerPlan

CHECKED_IN = CONFIG_DIR / "config.properties"


def snapshot_in(config: Path) -> dict[str, Any]:
    snapshot: dict[str, Any] = json.loads(read_properties(config)["model_snapshot"])
    return snapshot


def test_the_checked_in_snapshot_is_the_model_configs() -> None:
    """config/config.properties carries the snapshot for a plain start; it must not drift from
    config/models/resnet50/ (regenerate it with `python -m scripts.model_config`)."""
    assert snapshot_in(CHECKED_IN) == model_snapshot()


def test_a_served_config_sizes_the_same_snapshot_to_the_plan(tmp_path: Path) -> None:
    """`make serve` and the tests append the snapshot with the plan's workers; the last line wins.
    (A fresh machine has no run/ yet: writing the config makes it.)"""
    server = Server(run_dir=tmp_path / "run", ports=Ports.free())
    config = write_config(server, WorkerPlan(workers_per_version=3, number_of_gpu=0, threads_per_worker=1))
    versions = snapshot_in(config)["models"][MODEL_NAME]
    assert (
        {entry["minWorkers"] for entry in versions.values()}
        == {entry["maxWorkers"] for entry in versions.values()}
        == {3}
    )
    checked_in = model_snapshot()["models"][MODEL_NAME]
    assert {v: {**entry, "minWorkers": 1, "maxWorkers": 1} for v, entry in versions.items()} == checked_in


@pytest.mark.parametrize(
    ("versions", "default", "error"),
    [
        (("1.0", "2.0"), "3.0", ValueError),  # a default that is not served
        (("2.0", "9.9"), "2.0", FileNotFoundError),  # a version without its config/models file
    ],
)
def test_a_snapshot_of_versions_it_cannot_serve_is_refused(
    versions: tuple[str, ...], default: str, error: type[Exception]
) -> None:
    with pytest.raises(error, match=r"3.0 is not among|9.9.yaml does not exist"):
        model_snapshot(versions, default)


@pytest.fixture(scope="module")
def plain(model_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """`torchserve --start --ts-config config/config.properties --model-store model_store`, as
    docs/serving.md gives it, from a directory that holds the repository's config/ (its paths are relative
    to it) but not its key file; the config is copied with the listeners moved to free ports (a
    machine has one 8080, and `make serve` may hold it)."""
    server = Server(run_dir=tmp_path_factory.mktemp("plain"), model_store=model_store, ports=Ports.free())
    (server.run_dir / "config").symlink_to(CONFIG_DIR)
    config = server.run_dir / "plain.properties"
    config.write_text(CHECKED_IN.read_text() + properties_text(server.listeners()))
    launch(server, config, environment(server))
    try:
        yield server
    finally:
        stop(server)


def test_plain_torchserve_start_serves_both_versions_with_2_0_the_default(plain: Server) -> None:
    wait_until_ready(plain, workers_per_version=1, timeout=180)
    client = RestClient.for_server(plain)
    assert served_versions(plain) == set(SERVED_VERSIONS)
    assert client.describe(MODEL_NAME)[0]["modelVersion"] == "2.0"
    answers = [
        client.predict(MODEL_NAME, photo_bytes((320, 240)), version, "image/jpeg") for version in SERVED_VERSIONS
    ]
    assert all(len(answer) == 5 for answer in answers)
