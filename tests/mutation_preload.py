"""The archives loaded once for `make mutants` (docs/testing.md#mutation-testing), not once a mutant.

mutmut runs each mutant's tests in a new pytest session, in a process forked from a fork server
that collected the tests once. A load takes seconds, and there are thousands of mutants, so the
fork server loads each version here and every mutant's session takes that copy, unless the mutant
is in a function the load itself runs: then the preloaded model was built by the original code,
and the session loads its own, from the archive the fork server extracted.

mutmut ties a function to the tests during which it ran, and a session fixture loads once, during
the first test that asks: a mutant of the load would meet that one test only. So in mutmut's stats
run the tests marked `checks_the_load` (one or more for each thing a load sets up: the config and
its limits, the weights and preprocessing, the compiled forward, Grad-CAM, the model's name) are
tied to every function the load runs. Not every test of the models: each would load afresh, and a
mutant no test catches would run all 190 (about 110 s on two busy cores), where it runs these in
about 20. Tests that load a model themselves (metrics, the GPU branch) are tied by mutmut's own
tracing. This is a module of its own, not part of conftest.py, because pytest imports conftest.py
afresh in every session.
"""

from __future__ import annotations

import gc
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
from scripts.harness.mutants import KILLERS, function_of
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


def extracted(version: str) -> Path:
    """Where the fork server extracts `version`'s archive: a mutant that loads afresh loads from
    there, without extracting 200 MB again. Not a tmp_path: pytest would prune the fork server's."""
    return BUILD_DIR / "mutants-preloaded" / version


def preload(model_store: Path) -> None:
    """Load every served version in the fork server."""
    with noting_what_a_load_runs():
        for version in SERVED_VERSIONS:
            shutil.rmtree(extracted(version), ignore_errors=True)
            _preloaded[version] = InProcessModel.from_archive(model_store / archive_name(version), extracted(version))
    # Every mutant's pytest session ends in gc.collect() (pytest's unraisable-exception check, twice),
    # which over torch and two loaded models took 0.8 s of a 1 s session, and wrote to every page it
    # scanned, copying it into the fork. Frozen, what the fork server holds is never scanned.
    gc.freeze()


def depends_on_the_load() -> None:
    """In mutmut's stats run, tie the running test to every function a load runs."""
    if running() and os.environ.get("MUTANT_UNDER_TEST") == "stats":
        for name in _run_by_a_load:
            record_trampoline_hit(name)


def preloaded(version: str) -> InProcessModel | None:
    """The fork server's model of `version`, or, where this process's mutant is in a function a
    load runs, the archive the fork server extracted, loaded afresh by the mutated code."""
    if version not in _preloaded:
        return None
    if mutated_function() in _run_by_a_load:
        return InProcessModel(extracted(version))
    return _preloaded[version]


def mutated_function() -> str:
    """mutmut's name of the function this process's mutant changes ("" outside a mutant's tests)."""
    return function_of(mutant())


def note_a_kill(test: str) -> None:
    """Record the test that killed this process's mutant, where scripts/harness/mutants.py reads
    the tests to run first for the next mutant of the same function."""
    killers = os.environ.get(KILLERS)
    if killers and mutant():
        with (Path(killers) / mutated_function()).open("a") as record:
            record.write(f"{test}\n")
