"""The alerting and recording rules (config/prometheus/rules.yml), checked by Prometheus' own
promtool: their syntax, and their behaviour on the synthetic series of rules_test.yml.

promtool comes with Debian's `prometheus` package (CI installs it); without it these skip and
say so."""

from __future__ import annotations

import shutil
import subprocess
from typing import cast

import pytest

from scripts.paths import CONFIG_DIR

RULES_DIR = CONFIG_DIR / "prometheus"
PROMTOOL = shutil.which("promtool")

pytestmark = pytest.mark.skipif(
    PROMTOOL is None,
    reason="promtool is not installed (apt-get install prometheus): the alerting and "
    "recording rules in config/prometheus/ were neither checked nor unit-tested",
)


def promtool(*arguments: str) -> subprocess.CompletedProcess[str]:
    # cast: the module is skipped when promtool is not installed (PROMTOOL None).
    return subprocess.run(
        [cast(str, PROMTOOL), *arguments], cwd=RULES_DIR, capture_output=True, text=True, timeout=60, check=False
    )


def test_the_rules_are_valid() -> None:
    result = promtool("check", "rules", "rules.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_rules_fire_as_their_unit_tests_say() -> None:
    result = promtool("test", "rules", "rules_test.yml")
    assert result.returncode == 0 and "SUCCESS" in result.stdout, result.stdout + result.stderr
