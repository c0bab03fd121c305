"""One definition of what a server loads at start (scripts/model_config.py), for the plain
`torchserve --start`, `make serve` and the KServe bundle; and the plain command, started as
docs/serving.md gives it, serving both versions with 2.0 the default."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import promised
import scripts.model_config
from conftest import served_versions
from images import photo_bytes
from scripts.client.rest_api import RestClient
from scripts.endpoints import Ports, Server, properties_text, read_properties
from scripts.model_config import model_snapshot, version_settings
from scripts.paths import CONFIG_DIR, MODEL_NAME, SERVED_VERSIONS, archive_name
from scripts.server.lifecycle import environment, launch, stop, wait_until_ready, write_config
from scripts.worker_plan import WorkerPlan

CHECKED_IN = CONFIG_DIR / "config.properties"
KSERVE_CONFIG = CONFIG_DIR / "kserve" / "config.properties"
# What docs/serving.md's settings table promises each version of a plain start.
PROMISED_ENTRY = {
    "minWorkers": promised.PLAIN_START_WORKERS[0],
    "maxWorkers": promised.PLAIN_START_WORKERS[1],
    "batchSize": promised.BATCH_SIZE,
    "maxBatchDelay": promised.MAX_BATCH_DELAY_MS,
    "responseTimeout": promised.RESPONSE_TIMEOUT_S,
}


def snapshot_in(config: Path) -> dict[str, Any]:
    snapshot: dict[str, Any] = json.loads(read_properties(config)["model_snapshot"])
    return snapshot


def promised_versions(workers: tuple[int, int] = promised.PLAIN_START_WORKERS) -> dict[str, Any]:
    """The snapshot's versions as docs/serving.md promises them: 1.0 and 2.0, 2.0 the default,
    with the settings table's values. No jobQueueSize: TorchServe's own applies."""
    return {
        version: {
            "defaultVersion": version == "2.0",
            "marName": archive_name(version),
            **PROMISED_ENTRY,
            "minWorkers": workers[0],
            "maxWorkers": workers[1],
        }
        for version in ("1.0", "2.0")
    }


def test_the_checked_in_snapshot_is_the_model_configs() -> None:
    """config/config.properties carries the snapshot for a plain start; it must not drift from
    config/models/resnet50/ (regenerate it with `python -m scripts.model_config`), and both carry
    what the docs promise."""
    snapshot = snapshot_in(CHECKED_IN)
    assert snapshot == model_snapshot()
    assert snapshot["models"][MODEL_NAME] == promised_versions()


def test_a_served_config_sizes_the_same_snapshot_to_the_plan(tmp_path: Path) -> None:
    """`make serve` and the tests append the snapshot with the plan's workers; the last line wins.
    (A fresh machine has no run/ yet: writing the config makes it.)"""
    server = Server(run_dir=tmp_path / "run", ports=Ports.free())
    config = write_config(server, WorkerPlan(workers_per_version=3, number_of_gpu=0, threads_per_worker=1))
    assert snapshot_in(config)["models"][MODEL_NAME] == promised_versions(workers=(3, 3))


def test_a_server_started_empty_replaces_the_checked_in_snapshot_with_one_of_nothing(tmp_path: Path) -> None:
    """`make bench` starts TorchServe with no version and registers the archive it measures."""
    server = Server(run_dir=tmp_path / "run", ports=Ports.free(), versions=())
    config = write_config(server, WorkerPlan(workers_per_version=1, number_of_gpu=0, threads_per_worker=1))
    assert snapshot_in(config) == {"name": "startup.cfg", "modelCount": 0, "models": {}}


@pytest.mark.parametrize("version", ["1.0", "2.0"])
def test_each_version_has_the_promised_settings(version: str) -> None:
    settings = version_settings(version)
    assert {key: settings[key] for key in (*PROMISED_ENTRY, "deviceType")} == {
        **PROMISED_ENTRY,
        "deviceType": promised.DEVICE_TYPE,
    }
    assert settings["handler"]["topk"] == promised.TOPK
    assert "deviceIds" not in settings, "unset, TorchServe places workers round-robin over the GPUs"


def test_no_config_sets_the_job_queue_size() -> None:
    """docs/serving.md promises TorchServe's default queue (promised.JOB_QUEUE_SIZE): neither the
    servers' properties nor any version's settings (which the snapshots carry) may set another."""
    assert not any("job_queue_size" in read_properties(config) for config in (CHECKED_IN, KSERVE_CONFIG))
    assert not any("jobQueueSize" in version_settings(version) for version in ("1.0", "2.0"))


def test_a_snapshot_can_make_another_served_version_the_default() -> None:
    versions = model_snapshot(("1.0", "2.0"), "1.0")["models"][MODEL_NAME]
    assert {version: entry["defaultVersion"] for version, entry in versions.items()} == {"1.0": True, "2.0": False}


@pytest.mark.parametrize(
    ("versions", "default", "error", "message"),
    [
        (("1.0", "2.0"), "3.0", ValueError, r"^the default version 3\.0 is not among the versions served: 1\.0, 2\.0$"),
        (("2.0", "9.9"), "2.0", FileNotFoundError, r"/config/models/resnet50/9\.9\.yaml does not exist; each version"),
    ],
)
def test_a_snapshot_of_versions_it_cannot_serve_is_refused(
    versions: tuple[str, ...], default: str, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
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


@pytest.mark.parametrize(
    ("shared", "own", "merged"),
    [
        ({"topk": 5}, None, {"topk": 5}),
        (None, {"topk": 3}, {"topk": 3}),
        ({"topk": 5, "x": 1}, {"topk": 3}, {"topk": 3, "x": 1}),
    ],
)
def test_a_versions_handler_section_overlays_the_shared_one_and_either_may_be_absent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, shared: Any, own: Any, merged: dict[str, Any]
) -> None:
    for name, handler in (("model-config.yaml", shared), ("9.9.yaml", own)):
        (tmp_path / name).write_text(json.dumps({"batchSize": 8} if handler is None else {"handler": handler}))
    monkeypatch.setattr(scripts.model_config, "MODEL_CONFIG_DIR", tmp_path)
    assert version_settings("9.9")["handler"] == merged
