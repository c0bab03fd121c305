"""The docs still state the values tests/promised.py holds the configuration and behaviour to."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import promised
from scripts.paths import ROOT


def normalised(text: str) -> str:
    return re.sub(r"\s+", " ", text)


@pytest.mark.parametrize(("doc", "words"), promised.STATEMENTS, ids=[words for _, words in promised.STATEMENTS])
def test_the_doc_states_the_promised_value(doc: str, words: str) -> None:
    assert normalised(words) in normalised((ROOT / doc).read_text()), f"{doc} no longer says: {words}"


def test_every_promised_value_is_stated_in_a_doc() -> None:
    """A value with no statement would be a promise nobody made: each constant is named in STATEMENTS."""
    constants: set[str] = set()
    named: set[str] = set()
    for node in ast.parse(Path(promised.__file__).read_text()).body:
        if isinstance(node, ast.Assign):
            assigned = {name.id for target in node.targets for name in ast.walk(target) if isinstance(name, ast.Name)}
            constants |= assigned
        elif isinstance(node, ast.AnnAssign) and node.value is not None:  # STATEMENTS
            named = {name.id for name in ast.walk(node.value) if isinstance(name, ast.Name)}
    assert constants - {"MIB"} <= named, f"stated nowhere: {sorted(constants - {'MIB'} - named)}"
