"""torchvision's ImageClassification preset, rebuilt from the parameters stored in the archive.

Composed from the same public transforms in the same order as `weights.transforms()`, so the
tensors match torchvision's own pipeline (the tests hold them to 1e-5).
"""

from __future__ import annotations

from typing import Callable

import torch
from PIL import Image
from torchvision.transforms import InterpolationMode, v2

from handler_config import PreprocessConfig

Box = tuple[float, float, float, float]  # left, top, right, bottom


def classification_preset(config: PreprocessConfig) -> Callable[[Image.Image], torch.Tensor]:
    """Resize the short side, centre-crop, scale to [0, 1] floats and normalise."""
    return v2.Compose([
        v2.Resize(config.resize_size, interpolation=InterpolationMode(config.interpolation), antialias=True),
        v2.CenterCrop(config.crop_size),
        v2.PILToTensor(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean=list(config.mean), std=list(config.std)),
    ])


def crop_box(size: tuple[int, int], config: PreprocessConfig) -> Box:
    """Where the preset's crop lies in an image of `size` (width, height), in that image's pixels.

    torchvision's geometry, step by step: the short side resized to `resize_size` (the long side
    scaled and truncated), then the centre crop, its offset rounded. Edges are fractional: a crop
    rarely starts on a whole pixel. (A test holds this to torchvision's own box transform.)
    """
    width, height = size
    short, long = sorted(size)
    resized_short, resized_long = config.resize_size, int(config.resize_size * long / short)
    resized_width, resized_height = ((resized_short, resized_long) if width <= height
                                     else (resized_long, resized_short))
    crop = config.crop_size
    left, top = int(round((resized_width - crop) / 2.0)), int(round((resized_height - crop) / 2.0))
    x_scale, y_scale = width / resized_width, height / resized_height
    return (round(left * x_scale, 2), round(top * y_scale, 2),
            round((left + crop) * x_scale, 2), round((top + crop) * y_scale, 2))
