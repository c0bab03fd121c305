"""`make test-busy` runs every test module that drives a real server: a new one joins its list."""

from __future__ import annotations

import re

from scripts.harness.busy_machine import SERVED_TESTS
from scripts.paths import ROOT

# A module takes the session's server, or starts one itself through scripts/server/.
DRIVES_A_SERVER = re.compile(r"server: Server|from scripts\.server|scripts\.server\.")


def test_the_busy_run_covers_every_module_that_drives_a_server() -> None:
    modules = [path for path in (ROOT / "tests").glob("test_*.py") if path.name != "test_busy_machine.py"]
    served = {path.stem for path in modules if DRIVES_A_SERVER.search(path.read_text())}
    assert served == set(SERVED_TESTS)
