"""torchvision's ImageClassification preset for one set of weights, as one object.

The preset's geometry (resize the short side, centre-crop) and its normalisation are held once
and used three ways: on a Pillow image (the CPU path: the same public transforms in the same
order as `weights.transforms()`, so tensors match torchvision's own pipeline within 1e-5), on a
uint8 tensor on any device (the GPU path), and as the box the crop takes out of an image (where
an explanation's heatmap lies in the photo).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from PIL import Image
from torchvision.transforms import InterpolationMode, v2
from torchvision.transforms.v2 import functional as F

from handler_config import PreprocessConfig

Box = tuple[float, float, float, float]  # left, top, right, bottom


class ClassificationPreset:
    """Resize the short side (antialiased: Pillow always is, and so is torchvision's tensor resize
    by default since 0.17), centre-crop, scale to [0, 1] floats and normalise."""

    def __init__(self, config: PreprocessConfig) -> None:
        self.config = config
        self.interpolation = InterpolationMode(config.interpolation)
        self._pil: Callable[[Image.Image], torch.Tensor] = v2.Compose(
            [
                v2.Resize(config.resize_size, interpolation=self.interpolation),
                v2.CenterCrop(config.crop_size),
                v2.PILToTensor(),
                v2.ToDtype(torch.float32, scale=True),
                v2.Normalize(mean=list(config.mean), std=list(config.std)),
            ]
        )
        self._scales: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, image: Image.Image) -> torch.Tensor:
        """The CPU path: a decoded RGB picture to the model's float32 input."""
        return self._pil(image)

    def tensor(self, image: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """The GPU path: a uint8 CHW tensor, on its own device, to the model's input in `dtype`.

        It resizes float pixels (the GPU's antialiased resize works on floats), so it differs from
        the uint8 CPU path by at most about one grey level after normalisation."""
        image = F.resize(image.float(), [self.config.resize_size], self.interpolation)
        image = F.center_crop(image, [self.config.crop_size])
        mean, std = self._scale(image.device)  # pragma: no mutate (the GPU's copy)
        return ((image - mean) / std).to(dtype)

    def crop_box(self, size: tuple[int, int]) -> Box:
        """Where the crop lies in an image of `size` (width, height), in that image's pixels.

        torchvision's geometry, step by step: the short side resized to `resize_size` (the long side
        scaled and truncated), then the centre crop, its offset rounded. Edges are fractional: a crop
        rarely starts on a whole pixel. (A test holds this to torchvision's own box transform.)
        """
        width, height = size
        short, long = sorted(size)
        resized_short, resized_long = self.config.resize_size, int(self.config.resize_size * long / short)
        resized_width, resized_height = (
            (resized_short, resized_long) if width <= height else (resized_long, resized_short)
        )
        crop = self.config.crop_size
        left, top = round((resized_width - crop) / 2.0), round((resized_height - crop) / 2.0)
        x_scale, y_scale = width / resized_width, height / resized_height
        return (
            round(left * x_scale, 2),
            round(top * y_scale, 2),
            round((left + crop) * x_scale, 2),
            round((top + crop) * y_scale, 2),
        )

    def _scale(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and std in 0-255 pixel units on `device`, made once per device."""
        if device not in self._scales:
            mean = torch.tensor(self.config.mean).view(3, 1, 1) * 255
            std = torch.tensor(self.config.std).view(3, 1, 1) * 255
            self._scales[device] = mean.to(device), std.to(device)  # pragma: no mutate (a GPU's copy)
        return self._scales[device]
