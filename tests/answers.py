"""Comparing classification answers: the same classes in the same order, probabilities to 1e-4;
and the reference they are compared with.

Batch size and composition change the last float digits of a compiled forward pass, so two
answers for the same image are equal in their classes, not bit for bit in their probabilities.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torchvision

from scripts.in_process import InProcessModel


def same_answer(first: list[dict[str, Any]], second: list[dict[str, Any]]) -> bool:
    return ([p["index"] for p in first] == [p["index"] for p in second]
            and [p["probability"] for p in first] == pytest.approx([p["probability"] for p in second], abs=1e-4))


def indices(answer: list[dict[str, Any]]) -> list[int]:
    """The classes of one of our top-k answers, in order."""
    return [p["index"] for p in answer]


def top5(probabilities: Any) -> list[int]:
    """The five most probable classes of one row of probabilities, highest first."""
    return np.argsort(np.asarray(probabilities))[::-1][:5].tolist()


def direct_probabilities(served: InProcessModel, batch: torch.Tensor) -> torch.Tensor:
    """torchvision's ResNet50 with the archive's weights, fp32, no handler code: the reference
    the handler's answers are held to."""
    context = served.service.context
    weights = Path(context.system_properties["model_dir"]) / context.manifest["model"]["serializedFile"]
    model = torchvision.models.resnet50()
    model.load_state_dict(torch.load(weights, weights_only=True))
    with torch.inference_mode():
        return torch.softmax(model.eval()(batch), dim=1)
