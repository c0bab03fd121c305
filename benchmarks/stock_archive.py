"""Build the baseline: the same weights behind TorchServe's stock `image_classifier` handler,
packed the way TorchServe's examples pack it (model file + state dict + index_to_name.json)."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from model_identity import weight_sets

STOCK_MODEL_FILE = Path(__file__).parent / "stock" / "model.py"
STOCK_NAME = "resnet50_stock"


def build_stock_archive(weights: Path, model_store: Path) -> Path:
    with tempfile.TemporaryDirectory() as staging:
        labels = Path(staging) / "index_to_name.json"
        categories = weight_sets().IMAGENET1K_V2.meta["categories"]
        labels.write_text(json.dumps({str(i): name for i, name in enumerate(categories)}))
        subprocess.run(
            [
                sys.executable,
                "-m",
                "model_archiver.model_packaging",
                "--model-name",
                STOCK_NAME,
                "--version",
                "1.0",
                "--model-file",
                str(STOCK_MODEL_FILE),
                "--serialized-file",
                str(weights),
                "--handler",
                "image_classifier",
                "--extra-files",
                str(labels),
                "--export-path",
                str(model_store),
                "--force",
            ],
            check=True,
            capture_output=True,
        )
    return model_store / f"{STOCK_NAME}.mar"
