"""Comparing classification answers: the same classes in the same order, probabilities to 1e-4;
and the references they are compared with: torchvision's model with the archive's weights, and
Grad-CAM computed on it by hand.

Batch size and composition change the last float digits of a compiled forward pass, so two
answers for the same image are equal in their classes, not bit for bit in their probabilities.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torchvision

from model_identity import architecture, weight_sets
from scripts.harness.in_process import InProcessModel


def same_answer(first: list[dict[str, Any]], second: list[dict[str, Any]]) -> bool:
    return [p["index"] for p in first] == [p["index"] for p in second] and [
        p["probability"] for p in first
    ] == pytest.approx([p["probability"] for p in second], abs=1e-4)


def indices(answer: list[dict[str, Any]]) -> list[int]:
    """The classes of one of our top-k answers, in order."""
    return [p["index"] for p in answer]


def top5(probabilities: Any) -> list[int]:
    """The five most probable classes of one row of probabilities, highest first."""
    top: list[int] = np.argsort(np.asarray(probabilities))[::-1][:5].tolist()
    return top


# Grad-CAM maps (each scaled to a peak of 1) agree to this fraction of their peak; measured: 1e-4.
HEATMAP_TOLERANCE = 1e-3
# The torchvision weights each served version is built from (their preprocessing and class names).
VERSION_WEIGHTS = {"1.0": weight_sets()["IMAGENET1K_V1"], "2.0": weight_sets()["IMAGENET1K_V2"]}


def heatmaps(answer: dict[str, Any]) -> torch.Tensor:
    """The maps of one image's explanation in our JSON form, [classes, h, w]."""
    return torch.tensor([entry["heatmap"] for entry in answer["heatmaps"]])


def direct_probabilities(served: InProcessModel, batch: torch.Tensor) -> torch.Tensor:
    """torchvision's ResNet50 with the archive's weights, fp32, no handler code: the reference
    the handler's answers are held to."""
    with torch.inference_mode():
        return torch.softmax(reference_model(served)(batch), dim=1)


def reference_model(served: InProcessModel | Path) -> torchvision.models.ResNet:
    """torchvision's ResNet50 in eval mode with the weights of a loaded model or of an archive (.mar)."""
    model = architecture()
    if isinstance(served, Path):
        with zipfile.ZipFile(served) as archive:
            manifest = json.loads(archive.read("MAR-INF/MANIFEST.json"))
            with archive.open(manifest["model"]["serializedFile"]) as weights:
                model.load_state_dict(torch.load(io.BytesIO(weights.read()), weights_only=True))
    else:
        context = served.service.context
        weights = Path(context.system_properties["model_dir"]) / context.manifest["model"]["serializedFile"]
        model.load_state_dict(torch.load(weights, weights_only=True))
    return model.eval()


def grad_cam_by_hand(model: torchvision.models.ResNet, batch: torch.Tensor, classes: list[int]) -> torch.Tensor:
    """Grad-CAM as its paper defines it, without captum: layer4's activations A, the gradient of
    each row's class logit with respect to A, each channel weighted by its gradient's spatial mean,
    summed, ReLU; then scaled to a peak of 1 as the handler scales it."""
    stem = torch.nn.Sequential(
        model.conv1, model.bn1, model.relu, model.maxpool, model.layer1, model.layer2, model.layer3, model.layer4
    )
    with torch.no_grad():
        activations = stem(batch)
    activations.requires_grad_()
    logits = model.fc(torch.flatten(model.avgpool(activations), 1))
    (gradients,) = torch.autograd.grad(logits[torch.arange(len(classes)), classes].sum(), activations)
    maps = torch.relu((gradients.mean(dim=(2, 3), keepdim=True) * activations).sum(dim=1)).detach()
    return maps / maps.amax(dim=(1, 2), keepdim=True)
