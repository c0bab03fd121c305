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


def classification_preset(config: PreprocessConfig) -> Callable[[Image.Image], torch.Tensor]:
    """Resize the short side, centre-crop, scale to [0, 1] floats and normalise."""
    return v2.Compose([
        v2.Resize(config.resize_size, interpolation=InterpolationMode(config.interpolation), antialias=True),
        v2.CenterCrop(config.crop_size),
        v2.PILToTensor(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean=list(config.mean), std=list(config.std)),
    ])
