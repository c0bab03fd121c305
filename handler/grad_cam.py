"""Grad-CAM: where in the crop the evidence for a class lies, on the model's explained layer
(model_identity: ResNet50's last convolutional stage, `layer4`).

captum's LayerGradCam weights each of that layer's 2048 feature maps by the mean gradient of the
class's logit over that map, sums them and keeps the positive part: one map on the layer's grid
(7x7 for a 224 crop). It costs one forward pass and a backward pass through the head only, since
nothing below that layer needs a gradient. It runs on the eager model in fp32, outside
`inference_mode`; the compiled forward serves predictions.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

from model_identity import explained_layer

logger = logging.getLogger(__name__)

# Images per Grad-CAM pass, which bounds the activations it holds at once: a batch may ask for
# batchSize x max_heatmaps_per_request maps.
ROWS_PER_PASS = 16


class GradCam:
    def __init__(self, model: torch.nn.Module, method: type) -> None:
        """`model`: the served network in eval mode. Its weights stop asking for gradients (shared
        with the eager forward, which never needs them), so the backward pass ends at the explained layer."""
        model.requires_grad_(False)
        self.device = next(model.parameters()).device  # pragma: no mutate (where images go on a GPU)
        self.method = method(model, explained_layer(model))

    @classmethod
    def for_model(cls, model: torch.nn.Module) -> GradCam | None:
        """None, with a warning, where captum cannot be imported (a serving image without it):
        the worker still classifies, and explanation requests are told why they cannot be answered."""
        try:
            from captum.attr import LayerGradCam
        except ImportError as error:
            logger.warning("captum cannot be imported (%s): explanations are off in this worker", error)
            return None
        return cls(model, LayerGradCam)

    def __call__(self, images: torch.Tensor, classes: Sequence[int]) -> torch.Tensor:
        """One map per image (preprocessed, [N, 3, H, W]) for the class beside it, on the CPU as
        [N, h, w]. Each map is scaled so that its peak is 1; a map with no positive evidence is 0."""
        maps = torch.cat(
            [
                self._attribute(images[start : start + ROWS_PER_PASS], classes[start : start + ROWS_PER_PASS])
                for start in range(0, len(images), ROWS_PER_PASS)
            ]
        )
        peaks = maps.amax(dim=(1, 2), keepdim=True)
        return maps / peaks.clamp_min(torch.finfo(maps.dtype).tiny)

    def _attribute(self, images: torch.Tensor, classes: Sequence[int]) -> torch.Tensor:
        """Gradients on, even inside a caller's `inference_mode`: the images are copied out of it."""
        with torch.inference_mode(False), torch.enable_grad():
            # On the CPU, neither the device nor the memory layout changes a value: no mutants here.
            images = images.to(self.device, torch.float32).clone(memory_format=torch.channels_last)  # pragma: no mutate
            maps: torch.Tensor = self.method.attribute(images, target=list(classes), relu_attributions=True)
        return maps.detach().squeeze(1).float().cpu()
