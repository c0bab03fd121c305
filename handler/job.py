"""One request of a batch, as the handler carries it through its stages (resnet50_handler.py).

Its own module because TorchServe's loader wants exactly one class in the handler's module.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from gpu_preprocessing import Prepared
from request_errors import RequestError
from wire_format import Explanation, Scores, WireRequest


@dataclass
class Job:
    """One request of the batch and what each stage made of it. The first error ends its journey."""

    index: int  # its place in the batch, by which TorchServe's context knows it
    request: WireRequest
    transport: str  # "http" or "grpc", for the metrics
    files: list[bytes] = field(default_factory=list)
    explained: tuple[int, ...] | None = None  # on an explanation route, its classes (() for the top one)
    images: list[torch.Tensor] = field(default_factory=list)
    scores: Scores | None = None
    explanation: Explanation | None = None
    error: RequestError | None = None
    failed_image: int | None = None  # which of its images the error is about, if one is

    def take_images(self, prepared: list[Prepared]) -> None:
        """Its prepared images, or the first that failed and why."""
        for element, image in enumerate(prepared):
            if isinstance(image, RequestError):
                self.error, self.failed_image = image, element
                return
            self.images.append(image)
