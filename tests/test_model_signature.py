"""The Open Inference Protocol signature the docs promise is the one the handler declares and speaks."""

from __future__ import annotations

import re

from model_signature import SIGNATURE
from scripts.paths import ROOT

# The promised sizes: ImageNet's 1000 classes, and layer4's 7x7 grid for the 224 crop.
SIZES = {"classes": 1000, "h": 7, "w": 7}
ROW = re.compile(r"^\| (?P<role>[^|`]+) \| `(?P<name>[a-z_]+)` \| (?P<datatype>[A-Z0-9]+) \| `(?P<shape>\[[^]]*\])` \|")


def documented_signature() -> list[tuple[str, str, str, str]]:
    """The rows of docs/protocols.md's signature table: role, name, datatype, shape."""
    text = (ROOT / "docs" / "protocols.md").read_text()
    table = text[text.index("The model's signature") :].split("\n\n")[1]
    return [(m["role"].strip(), m["name"], m["datatype"], m["shape"]) for m in map(ROW.match, table.splitlines()) if m]


def test_the_documented_signature_is_the_declared_one() -> None:
    assert documented_signature() == [
        (spec.role, spec.name, spec.datatype, spec.shape_text(**SIZES)) for spec in SIGNATURE
    ]


def test_the_signature_is_the_promised_one() -> None:
    """Pinned to its values: a renamed tensor or a changed datatype breaks every client."""
    assert [(spec.name, spec.datatype, spec.shape_text(**SIZES)) for spec in SIGNATURE] == [
        ("image", "BYTES", "[N]"),
        ("probabilities", "FP32", "[N, 1000]"),
        ("probabilities", "BYTES", "[N, k]"),
        ("explained_classes", "INT64", "[N, C]"),
        ("heatmaps", "FP32", "[N, C, 7, 7]"),
        ("crop_boxes", "FP32", "[N, 4]"),
        ("error", "BYTES", "[1]"),
    ]
