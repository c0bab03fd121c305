"""Seeded random ResNet50 weights whose answers depend on the image, for offline builds and tests.

A freshly initialised ResNet50 gives every image the same class: its batch-norm layers hold
their default statistics (mean 0, variance 1) instead of their inputs' real ones, activations
drift block after block, and what reaches the classifier is one shared direction. A test that
compares classes would then pass whatever the handler did to the image.

So, as one recalibrates a network after changing its data, the batch-norm statistics are
re-estimated on a few generated images (crops of the sample photo, smooth random fields, flat
colours), and the classifier is centred and scaled on their features. The first layer's
random filters are smoothed first, as a trained network's are: white-noise 7x7 filters would
make answers swing with one grey level of resampling noise. Different images then get
different classes, and the weights stay seeded, offline and quick to make (~10 s here).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from PIL import Image
from torchvision.models import ResNet
from torchvision.transforms import v2

from model_identity import architecture, weight_sets
from scripts.paths import sample_photo

CALIBRATION_IMAGES = 48
CROP = 224
# The spread of the calibration images' logits: wide enough for confident, distinct classes,
# narrow enough that the top-5 are not one class at 100% and four at 0%.
LOGIT_SPREAD = 2.0
FIRST_FILTER_BLUR_SIGMA = 1.5  # pixels, over conv1's 7x7 kernels
GREY_CROPS = 0.3  # the share of the photo's crops made grey

_PRESET = weight_sets().DEFAULT.transforms()
_NORMALIZE = v2.Normalize(mean=_PRESET.mean, std=_PRESET.std)
_PHOTO_CROP = v2.Compose([v2.RandomResizedCrop(CROP, scale=(0.05, 1.0), antialias=True), v2.RandomHorizontalFlip()])


def random_state_dict(seed: int) -> dict[str, torch.Tensor]:
    """A seeded ResNet50 with batch norms and classifier fitted to generated images. The
    caller's random generator is left as it was."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model: ResNet = architecture()
        images = _NORMALIZE(calibration_images(CALIBRATION_IMAGES))
        _smooth_first_filters(model)
        _reestimate_batch_norms(model, images)
        _centre_classifier(model, images)
    return model.state_dict()


def recipe_id() -> str:
    """Changes whenever this module does, so weights made by an older recipe are not reused."""
    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:8]


def calibration_images(count: int) -> torch.Tensor:
    """`count` 224x224 RGB images in [0, 1] from torch's global generator: one in three a crop
    of the sample photo (channels shuffled, sometimes grey), a smooth random field, or a flat
    colour with a little noise."""
    with Image.open(sample_photo()) as opened:
        photo = v2.functional.to_dtype(v2.functional.pil_to_tensor(opened.convert("RGB")), torch.float32, scale=True)
    makers = (lambda: _photo_crop(photo), _smooth_field, _flat_colour)
    return torch.stack([makers[index % len(makers)]() for index in range(count)]).clamp(0, 1)


def _photo_crop(photo: torch.Tensor) -> torch.Tensor:
    crop: torch.Tensor = _PHOTO_CROP(photo)[torch.randperm(3)]
    return crop.mean(0, keepdim=True).expand(3, -1, -1) if torch.rand(1) < GREY_CROPS else crop


def _smooth_field() -> torch.Tensor:
    side = int(torch.randint(1, 57, (1,)))
    return torch.nn.functional.interpolate(torch.rand(1, 3, side, side), size=CROP, mode="bilinear")[0]


def _flat_colour() -> torch.Tensor:
    return torch.rand(3, 1, 1) * 0.5 + torch.rand(3, CROP, CROP) * torch.rand(1) * 0.5


def _smooth_first_filters(model: ResNet) -> None:
    """Low-pass conv1's random kernels, keeping their overall scale."""
    with torch.no_grad():
        kernels = model.conv1.weight
        smooth = v2.functional.gaussian_blur(
            kernels, kernel_size=list(kernels.shape[-2:]), sigma=[FIRST_FILTER_BLUR_SIGMA] * 2
        )
        kernels.copy_(smooth * (kernels.norm() / smooth.norm()))


def _reestimate_batch_norms(model: torch.nn.Module, images: torch.Tensor) -> None:
    """Replace the default statistics by the images' own (one pass, exact averages)."""
    for layer in model.modules():
        if isinstance(layer, torch.nn.modules.batchnorm._BatchNorm):
            layer.reset_running_stats()
            layer.momentum = None  # a cumulative average instead of an exponential one
    model.train()
    with torch.no_grad():
        model(images)
    model.eval()


def _centre_classifier(model: ResNet, images: torch.Tensor) -> None:
    """Fold the pooled features' mean and spread into the last layer, so logits follow how an
    image differs from the others rather than what all images share."""
    pooled: list[torch.Tensor] = []
    hook = model.avgpool.register_forward_hook(lambda module, inputs, output: pooled.append(output.flatten(1)))
    with torch.no_grad():
        model(images)
    hook.remove()
    features = pooled[0]
    mean, spread = features.mean(0), features.std(0) + 1e-3
    with torch.no_grad():
        weight = model.fc.weight / spread
        weight *= LOGIT_SPREAD / ((features - mean) @ weight.T).std()
        model.fc.weight.copy_(weight)
        model.fc.bias.copy_(-(weight @ mean))
