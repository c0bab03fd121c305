"""A real Prometheus scrapes the Ray Serve engine with config/prometheus/ray-relabel.yml and the
rules of config/prometheus/rules.yml: the tests of test_prometheus_server.py, unchanged (and
skipped, as there, without the binary), read the handler's histogram and recording rule under
TorchServe's names."""

from __future__ import annotations

import pytest

from scripts.endpoints import Server
from test_prometheus_server import *  # noqa: F403  (its pytestmark too: no prometheus binary, no test)


@pytest.fixture(scope="module")
def server(ray_server: Server) -> Server:
    return ray_server
