"""The model this project serves, named in one place: the handler, the archive build, the
benchmarks and the tests all take its name, architecture, weights and explained layer from here.

It imports nothing from its neighbours, so it loads both inside an archive (where TorchServe puts
the handler's files on the path) and from the repository as `handler.model_identity`; torchvision
is imported on first use, so a client that needs only the name does not load torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from torchvision.models import ResNet, ResNet50_Weights

NAME = "resnet50"  # the served model's name: routes, archives, metrics
CLASSES = 1000  # ImageNet's
EXPLAINED_LAYER = "layer4"  # Grad-CAM's layer: the last convolutional stage, a 7x7 grid for a 224 crop


def weight_sets() -> type[ResNet50_Weights]:
    """torchvision's weight sets for this architecture; a version is built from one of them."""
    from torchvision.models import ResNet50_Weights

    return ResNet50_Weights


def architecture(num_classes: int = CLASSES) -> ResNet:
    """The network with freshly initialised weights; an archive's own are loaded into it."""
    from torchvision.models import resnet50

    model: ResNet = resnet50(weights=None, num_classes=num_classes)  # its registry's decorators hide the type
    return model


def explained_layer(model: torch.nn.Module) -> torch.nn.Module:
    return model.get_submodule(EXPLAINED_LAYER)
