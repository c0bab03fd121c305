"""An explanation drawn over its photo: each class's Grad-CAM heatmap, stretched over the crop.

The heatmap covers the centre crop the model saw, not the whole photo; the answer's `crop_box`
says where that crop lies, so the map is drawn there (smoothed, as Grad-CAM maps are shown) and
the crop's outline is dashed. Matplotlib's object API, without pyplot: no window, no global state.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from PIL import Image, ImageOps

PANEL_INCHES = 4.0
OPACITY = 0.45


def write_overlay(photo: bytes, explanation: Mapping[str, Any], out: Path) -> None:
    """One panel per explained class: the photo upright (as the server decodes it), its heatmap over the crop."""
    image = ImageOps.exif_transpose(Image.open(io.BytesIO(photo))).convert("RGB")
    width, height = image.size
    left, top, right, bottom = explanation["crop_box"]
    heatmaps = explanation["heatmaps"]
    figure = Figure(figsize=(PANEL_INCHES * len(heatmaps), PANEL_INCHES * height / width + 0.5), layout="constrained")
    for axes, heatmap in zip(figure.subplots(1, len(heatmaps), squeeze=False)[0], heatmaps, strict=True):
        axes.imshow(image)
        axes.imshow(
            np.asarray(heatmap["heatmap"]),
            cmap="jet",
            alpha=OPACITY,
            vmin=0.0,
            vmax=1.0,
            interpolation="bilinear",
            extent=(left, right, bottom, top),
        )
        axes.add_patch(
            Rectangle(
                (left, top), right - left, bottom - top, fill=False, edgecolor="white", linestyle="--", linewidth=1
            )
        )
        axes.set_xlim(0, width)
        axes.set_ylim(height, 0)
        axes.set_title(f"{heatmap['label']} (class {heatmap['index']}), p = {heatmap['probability']:.3g}", fontsize=9)
        axes.axis("off")
    figure.savefig(out, format="png")
