"""The handler's settings, read from the `handler:` section of the archive's model-config.yaml.

Everything that defines the model's contract (preprocessing, class names, top-k, input limits)
travels inside the archive, so a .mar is self-describing and the handler hard-codes nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class PreprocessConfig:
    """The parameters of torchvision's `ImageClassification` preset for one set of weights."""

    resize_size: int
    crop_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bilinear"


@dataclass(frozen=True)
class InputLimits:
    """Bounds that keep one hostile image from exhausting a worker."""

    max_image_pixels: int = 40_000_000
    max_aspect_ratio: float = 20.0
    max_images_per_request: int = 32  # KServe v1 and OIP requests carry several
    max_explained_classes: int = 5  # each costs a Grad-CAM pass per image
    max_heatmaps_per_request: int = 32  # images x classes: a batch's passes must fit in responseTimeout


@dataclass(frozen=True)
class CompiledForwardConfig:
    """An AOTInductor package of the forward pass for one device kind, built with the archive."""

    package: str
    target: str  # CPU instruction set (AVX512, ...) or GPU architecture (sm_90, ...)
    max_batch: int


@dataclass(frozen=True)
class HandlerConfig:
    weights: str
    preprocess: PreprocessConfig
    categories: tuple[str, ...]
    topk: int = 5
    random_weights: bool = False
    limits: InputLimits = field(default_factory=InputLimits)
    compiled_forward: Mapping[str, CompiledForwardConfig] = field(default_factory=dict)  # by device kind

    @classmethod
    def from_yaml(cls, section: Mapping[str, Any] | None) -> HandlerConfig:
        """Validate the section up front: a malformed archive should fail at load, not per request."""
        if not section:
            raise ValueError("model-config.yaml has no 'handler:' section; rebuild the archive")
        try:
            preprocess = PreprocessConfig(
                resize_size=int(section["preprocess"]["resize_size"]),
                crop_size=int(section["preprocess"]["crop_size"]),
                mean=_triple(section["preprocess"]["mean"]),
                std=_triple(section["preprocess"]["std"]),
                interpolation=str(section["preprocess"].get("interpolation", "bilinear")),
            )
            config = cls(
                weights=str(section["weights"]),
                preprocess=preprocess,
                categories=tuple(str(name) for name in section["categories"]),
                topk=int(section.get("topk", 5)),
                random_weights=bool(section.get("random_weights")),
                limits=InputLimits(**section.get("limits", {})),
                compiled_forward={
                    device: CompiledForwardConfig(**package)
                    for device, package in (section.get("compiled_forward") or {}).items()
                },
            )
        except (KeyError, TypeError) as error:
            raise ValueError(f"invalid 'handler:' section in model-config.yaml: {error!r}") from error
        if not 1 <= config.topk <= len(config.categories):
            raise ValueError(f"topk must be between 1 and {len(config.categories)}, got {config.topk}")
        return config


def _triple(values: Sequence[float]) -> tuple[float, float, float]:
    first, second, third = (float(v) for v in values)
    return first, second, third
