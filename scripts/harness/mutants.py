"""`make mutants`: mutmut, told that handler/'s modules are imported flat and to run fast tests first.

mutmut names a mutant after its file (handler/image_decoding.py -> `handler.image_decoding.x_...`)
and switches it on only in functions whose `__module__` is that name. TorchServe, the tests and
scripts/ import the handler's modules flat (`image_decoding`, the archive's folder on sys.path), so
plain mutmut would run every handler mutant as the original code and call it "no tests"
(boxed/mutmut#515), without a warning: the scripts/ mutants are named right. mutmut already drops a
`src.` prefix; this drops `handler.` the same way, and checks that it did before mutmut starts.

mutmut runs a mutant's tests fastest first, so that a killed mutant stops early, but only in its
fork runner: its fork server (which torch needs) takes them in a set's order. A mutant killed by a
0.1 s test then ran up to 50 s of others first. This sorts them there too, and puts first the
tests that killed earlier mutants of the same function: a metrics mutant that only a 3 s test
catches would otherwise run 50 s of faster tests before it, as the function's last mutant did.

Run it by path (`python scripts/harness/mutants.py run`), never as `-m scripts...`: mutmut forks
every test process from this one, so anything of the project imported here would be the unmutated
module in every mutant's process.
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from pathlib import Path

import mutmut.utils.format_utils as mutant_names
from mutmut.__main__ import cli
from mutmut.state import state
from mutmut.workers.isolation import ForkServerRunner

# The folder of the tests that killed each function's mutants, as tests/mutation_preload.py writes it.
KILLERS = "RESNET50_MUTANT_KILLERS"


def function_of(mutant_name: str) -> str:
    """mutmut's name of the function a mutant changes: "image_decoding.x_open__mutmut_3" -> "image_decoding.x_open"."""
    return mutant_name.partition("__mutmut_")[0]


def name_handler_modules_flat() -> None:
    """Name handler/'s mutants as its modules are imported: flat, without `handler.`."""
    strip_prefix = mutant_names.strip_prefix

    def strip_src_then_handler(s: str, *, prefix: str, strict: bool = False) -> str:
        stripped = strip_prefix(s, prefix=prefix, strict=strict)
        return strip_prefix(stripped, prefix="handler.") if prefix == "src." else stripped

    mutant_names.strip_prefix = strip_src_then_handler
    named = {
        mutant_names.get_mutant_name(Path(path), "x_f__mutmut_1")
        for path in ("handler/image_decoding.py", "scripts/model_config.py")
    }
    if named != {"image_decoding.x_f__mutmut_1", "scripts.model_config.x_f__mutmut_1"}:
        raise RuntimeError(
            f"this mutmut names mutants {sorted(named)}: {__file__} no longer gives handler/'s mutants "
            "their flat module names; check it against the installed mutmut, then the pin in requirements-dev.txt"
        )


def run_likely_killers_first(killers: Path) -> None:
    """Hand the fork server a mutant's tests in the order most likely to end soon: first the tests
    that killed earlier mutants of the same function (tests/conftest.py writes each kill to
    `killers`), most kills first, then the rest fastest first, by mutmut's stats run."""
    killers.mkdir(parents=True, exist_ok=True)
    os.environ[KILLERS] = str(killers)
    submit = ForkServerRunner.submit

    def submit_sorted(
        runner: ForkServerRunner, mutant_name: str, tests: list[str], cpu_time_limit: int, estimated_time: float
    ) -> None:
        record = killers / function_of(mutant_name)
        kills = Counter(record.read_text().splitlines()) if record.exists() else Counter[str]()
        ordered = sorted(tests, key=lambda test: (-kills[test], state().duration_by_test[test]))
        submit(runner, mutant_name, ordered, cpu_time_limit, estimated_time)

    ForkServerRunner.submit = submit_sorted  # type: ignore[method-assign,assignment]


if __name__ == "__main__":
    sys.path.pop(0)  # this file's folder, put there by `python <path>`: nothing in it is for mutmut's processes
    name_handler_modules_flat()
    run_likely_killers_first(Path("mutants/killers").resolve())
    cli(prog_name="mutmut")
