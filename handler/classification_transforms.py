"""torchvision's ImageClassification preset, rebuilt from the parameters stored in the archive.

Composed from the same public transforms in the same order as `weights.transforms()`, so the
tensors match torchvision's own pipeline (the tests hold them to 1e-5).
"""

from __future__ import annotations

from typing import Callable

import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms import InterpolationMode, v2

from handler_config import PreprocessConfig

Box = tuple[float, float, float, float]  # left, top, right, bottom


def classification_preset(config: PreprocessConfig) -> Callable[[Image.Image], torch.Tensor]:
    """Resize the short side, centre-crop, scale to [0, 1] floats and normalise."""
    return v2.Compose([
        *_geometry(config),
        v2.PILToTensor(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean=list(config.mean), std=list(config.std)),
    ])


def crop_box(size: tuple[int, int], config: PreprocessConfig) -> Box:
    """Where the preset's crop lies in an image of `size` (width, height), in that image's pixels.

    The image's own outline is taken through the preset's resize and crop by torchvision (as a
    box, unclamped), which says where the image lands in the crop; the crop's place in the image
    is the inverse of that mapping. Edges are fractional: a crop rarely starts on a whole pixel.
    """
    width, height = size
    outline = tv_tensors.BoundingBoxes(torch.tensor([[0.0, 0.0, width, height]]),
                                       format="XYXY", canvas_size=(height, width), clamping_mode=None)
    left, top, right, bottom = v2.Compose(_geometry(config))(outline)[0].tolist()
    x_scale, y_scale = width / (right - left), height / (bottom - top)
    crop = config.crop_size
    # Rounded to a hundredth of a pixel: torchvision maps boxes in float32, so finer digits are noise.
    return (round(-left * x_scale, 2), round(-top * y_scale, 2),
            round((crop - left) * x_scale, 2), round((crop - top) * y_scale, 2))


def _geometry(config: PreprocessConfig) -> list[v2.Transform]:
    return [v2.Resize(config.resize_size, interpolation=InterpolationMode(config.interpolation), antialias=True),
            v2.CenterCrop(config.crop_size)]
