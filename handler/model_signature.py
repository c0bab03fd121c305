"""The model's signature in the Open Inference Protocol, declared once as data.

The reader and writer of the protocol (open_inference.py) check requests and name outputs with
it, its error messages quote it, a test holds docs/protocols.md's table to it, and the tests'
tritonclient requests take their names from it. A dimension is a size, or the name of one:
N images, C classes explained per image, k classes ranked, an h x w heatmap grid.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TensorSpec:
    role: str  # what the tensor is, as the docs' table names it
    name: str
    datatype: str
    shape: tuple[int | str, ...]

    def shape_text(self, **sizes: int) -> str:
        """The shape as the protocol writes it, e.g. [N, 1000] with classes=1000."""
        return "[" + ", ".join(str(sizes.get(str(dimension), dimension)) for dimension in self.shape) + "]"

    def describe(self) -> str:
        return f"{self.role} '{self.name}', {self.datatype}, shape {self.shape_text()}"


IMAGE = TensorSpec("input", "image", "BYTES", ("N",))  # one encoded image file per element
PROBABILITIES = TensorSpec("output", "probabilities", "FP32", ("N", "classes"))
# The same output under the classification extension: "<probability>:<index>:<label>", highest first.
RANKED = TensorSpec("output, classification extension", "probabilities", "BYTES", ("N", "k"))
# On /explain, beside the probabilities.
EXPLAINED_CLASSES = TensorSpec("explanation output", "explained_classes", "INT64", ("N", "C"))
HEATMAPS = TensorSpec("explanation output", "heatmaps", "FP32", ("N", "C", "h", "w"))
CROP_BOXES = TensorSpec("explanation output", "crop_boxes", "FP32", ("N", 4))
# Over gRPC, where TorchServe drops a refused request's status: our error body as JSON text.
ERROR = TensorSpec("refusal output, gRPC", "error", "BYTES", (1,))

SIGNATURE = (IMAGE, PROBABILITIES, RANKED, EXPLAINED_CLASSES, HEATMAPS, CROP_BOXES, ERROR)
EXPLANATION = (EXPLAINED_CLASSES, HEATMAPS, CROP_BOXES)
NUMPY_TYPES = {"FP32": "<f4", "INT64": "<i8"}  # how the numeric datatypes travel as binary data
