"""The Ray Serve engine's own settings (scripts/ray_serve/lifecycle.py), held to the values
docs/engines.md promises (tests/promised.py): the tests that serve from the engine need them only
to pass, so any value would pass there."""

from __future__ import annotations

import inspect
from pathlib import Path

import promised
from conftest import TEST_PLAN
from scripts.endpoints import Ports, Server
from scripts.ray_serve import lifecycle


def environment(tmp_path: Path) -> dict[str, str]:
    """What every process of the engine's Ray cluster runs with."""
    server = Server(run_dir=tmp_path, model_store=tmp_path, ports=Ports.free())
    return lifecycle._environment(server, TEST_PLAN, promised.MAX_REQUEST_BYTES)


def test_each_proxy_check_and_the_start_wait_as_long_as_promised(tmp_path: Path) -> None:
    env = environment(tmp_path)
    checks = {env["RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S"], env["RAY_SERVE_PROXY_HEALTH_CHECK_TIMEOUT_S"]}
    assert checks == {str(promised.RAY_PROXY_CHECK_TIMEOUT_S)}
    assert inspect.signature(lifecycle.start).parameters["timeout"].default == promised.RAY_START_TIMEOUT_S


def test_replicas_report_their_metrics_as_often_as_promised(tmp_path: Path) -> None:
    """Ray's default is 10 s, which a scrape right after an answer would lag by."""
    assert environment(tmp_path)["RAY_metrics_report_interval_ms"] == str(promised.RAY_METRICS_REPORT_MS)
    assert lifecycle.METRICS_REPORT_INTERVAL_MS == promised.RAY_METRICS_REPORT_MS  # where clients read it


def test_replicas_run_at_a_torchserve_workers_priority(tmp_path: Path) -> None:
    """Ray starts its workers at nice 15, below a busy client's (docs/engines.md#measured-side-by-side)."""
    assert environment(tmp_path)["RAY_worker_niceness"] == str(promised.RAY_WORKER_NICENESS)
