"""The fault suite's tests that apply to the Ray Serve engine (tests/test_faults.py), unchanged: a
version switch under load, a full queue, a short soak. The others are TorchServe's own: its
worker restart (tests/test_ray_engine.py kills a replica instead), and its start and restart
through `make serve`'s TorchServe path."""

from __future__ import annotations

import pytest

from scripts.endpoints import Server
from test_faults import (  # noqa: F401
    test_a_full_queue_is_answered_fast_not_timed_out,
    test_a_short_soak_has_no_unexpected_answers_or_restarts,
    test_switching_versions_under_load,
)


@pytest.fixture(scope="module")
def server(ray_server: Server) -> Server:
    return ray_server
