"""The archives loaded once for `make mutants` (docs/testing.md#mutation-testing), not once a mutant.

mutmut runs each mutant's tests in a new pytest session, in a process forked from a fork server
that collected the tests once. A load takes about 4 s, and there are thousands of mutants, so the
fork server loads each version here and every mutant's session takes that copy, unless the mutant
is in a function the load itself runs: then the preloaded model was built by the original code,
and the session loads its own. In mutmut's stats run, every test of the in-process models is
tied to the functions the load runs, so that such a mutant meets every test that could catch it.
This is a module of its own, not part of conftest.py, because
pytest imports conftest.py afresh in every session.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

import pytest
from mutmut.stats import record_trampoline_hit

from scripts.harness.in_process import InProcessModel
from scripts.paths import BUILD_DIR, SERVED_VERSIONS, archive_name

ENABLED = "RESNET50_MUTANTS"  # set by `make mutants`: without it nothing here happens
# What mutmut puts in MUTANT_UNDER_TEST outside a mutant's tests (its stats, clean and warm-up runs).
NOT_A_MUTANT = frozenset({"", "stats", "fail", "list_all_tests", "mutant_generation"})

_preloaded: dict[str, InProcessModel] = {}
# mutmut's names of the functions a load runs, as they prefix a mutant's name:
# "resnet50_handler.xǁResNet50Handlerǁinitialize", "classification_transforms.x_center_crop_box".
_run_by_a_load: set[str] = set()


def running() -> bool:
    """Whether this process is part of `make mutants`."""
    return bool(os.environ.get(ENABLED))


def mutant() -> str:
    """The mutant this process tests; "" outside `make mutants` and outside a mutant's tests."""
    name = os.environ.get("MUTANT_UNDER_TEST", "")
    return "" if name in NOT_A_MUTANT else name


def in_the_fork_server(config: pytest.Config) -> bool:
    """mutmut's fork server warms up with a --collect-only session, before it has any mutant."""
    return running() and config.option.collectonly and os.environ.get("MUTANT_UNDER_TEST") == ""


@contextmanager
def noting_what_a_load_runs() -> Iterator[None]:
    """Under `make mutants`, note which of mutmut's original functions run inside (a load)."""
    if not running():
        yield
        return

    def note_originals(frame: FrameType, event: str, _: Any) -> None:
        name = frame.f_code.co_name  # mutmut keeps f's original as x_f__mutmut_orig (xǁClassǁm__mutmut_orig)
        if event == "call" and name.endswith("__mutmut_orig"):
            _run_by_a_load.add(f"{frame.f_globals['__name__']}.{name.removesuffix('__mutmut_orig')}")

    sys.setprofile(note_originals)
    try:
        yield
    finally:
        sys.setprofile(None)


def preload(model_store: Path) -> None:
    """Load every served version in the fork server."""
    with noting_what_a_load_runs():
        for version in SERVED_VERSIONS:
            folder = BUILD_DIR / "mutants-preloaded" / version  # pytest would prune a tmp_path of the fork server's
            shutil.rmtree(folder, ignore_errors=True)
            _preloaded[version] = InProcessModel(model_store / archive_name(version), folder)


def depends_on_the_load() -> None:
    """In mutmut's stats run, tie the running test to every function a load runs. mutmut ties a
    function to the tests during which it ran, and a session fixture loads once, during the first
    test that asks: without this, a mutant of the load would meet that one test only, never the
    explanation or metrics tests that catch it."""
    if running() and os.environ.get("MUTANT_UNDER_TEST") == "stats":
        for name in _run_by_a_load:
            record_trampoline_hit(name)


def preloaded(version: str) -> InProcessModel | None:
    """The fork server's model of `version`, where this process's mutant leaves a load unchanged."""
    if mutant().partition("__mutmut_")[0] in _run_by_a_load:
        return None
    return _preloaded.get(version)
