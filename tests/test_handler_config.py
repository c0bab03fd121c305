"""The archive's `handler:` section is validated when a worker loads it, not per request."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torchvision.models import ResNet50_Weights
from torchvision.transforms import InterpolationMode, functional as F
from torchvision.transforms._presets import ImageClassification

from classification_transforms import ClassificationPreset
from handler_config import HandlerConfig, InputLimits
from images import noise_image

CATEGORIES = ResNet50_Weights.IMAGENET1K_V2.meta["categories"]  # the 1000 ImageNet classes the archive carries
PREPROCESS = {"resize_size": 232, "crop_size": 224, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


def section(**changes: Any) -> dict[str, Any]:
    """A `handler:` section as the archive build writes it, with `changes` made."""
    return {
        "weights": "IMAGENET1K_V2",
        "preprocess": PREPROCESS,
        "categories": CATEGORIES,
        "topk": 5,
        **changes,
    }


def test_a_section_of_only_the_required_keys_takes_the_defaults() -> None:
    """Official weights (no random-weights warning), top 5, bilinear, the default limits, eager."""
    required = {key: value for key, value in section().items() if key != "topk"}
    config = HandlerConfig.from_yaml(required)
    assert (config.topk, config.random_weights, config.preprocess.interpolation) == (5, False, "bilinear")
    assert (config.limits, config.compiled_forward) == (InputLimits(), {})


@pytest.mark.parametrize("missing", [None, {}])
def test_an_archive_without_a_handler_section_is_refused_with_what_to_do(missing: dict[str, Any] | None) -> None:
    with pytest.raises(ValueError, match=r"^model-config\.yaml has no 'handler:' section; rebuild the archive$"):
        HandlerConfig.from_yaml(missing)


def test_a_section_missing_a_key_is_refused_naming_it() -> None:
    without_weights = {key: value for key, value in section().items() if key != "weights"}
    with pytest.raises(ValueError, match=r"^invalid 'handler:' section in model-config\.yaml: KeyError\('weights'\)$"):
        HandlerConfig.from_yaml(without_weights)


@pytest.mark.parametrize("topk", [1, 1000])
def test_topk_from_1_to_the_number_of_classes_is_accepted(topk: int) -> None:
    assert len(CATEGORIES) == 1000
    assert HandlerConfig.from_yaml(section(topk=topk)).topk == topk


@pytest.mark.parametrize("topk", [0, 1001])
def test_topk_outside_1_to_the_number_of_classes_is_refused(topk: int) -> None:
    with pytest.raises(ValueError, match=f"^topk must be between 1 and 1000, got {topk}$"):
        HandlerConfig.from_yaml(section(topk=topk))


@pytest.mark.parametrize("key", ["mean", "std"])
@pytest.mark.parametrize("values", [[0.5, 0.5], [0.5, 0.5, 0.5, 0.5]])
def test_a_normalisation_of_other_than_3_channels_is_refused(key: str, values: list[float]) -> None:
    preprocess = {**section()["preprocess"], key: values}
    with pytest.raises(ValueError, match=r"\(expected 3"):
        HandlerConfig.from_yaml(section(preprocess=preprocess))


def test_the_configured_interpolation_is_the_one_both_paths_resize_with() -> None:
    """Weights trained with bicubic resizing say so in their preset: the CPU path then matches
    torchvision's bicubic preset, and the GPU path resizes unlike a bilinear one."""
    image = noise_image((300, 260))
    presets = {
        mode: ClassificationPreset(
            HandlerConfig.from_yaml(section(preprocess={**PREPROCESS, "interpolation": mode})).preprocess
        )
        for mode in ("bilinear", "bicubic")
    }
    torchvision_bicubic = ImageClassification(crop_size=224, resize_size=232, interpolation=InterpolationMode.BICUBIC)
    assert (presets["bicubic"](image) - torchvision_bicubic(image)).abs().max().item() <= 1e-5
    pixels = F.pil_to_tensor(image)
    assert not torch.allclose(
        presets["bicubic"].tensor(pixels, torch.float32), presets["bilinear"].tensor(pixels, torch.float32)
    )
