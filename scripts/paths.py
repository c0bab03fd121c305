"""Where the project keeps things. Build outputs live under ignored folders, never in git."""

from pathlib import Path

from model_identity import NAME

MODEL_NAME = NAME  # the served model's name (routes, archives, metrics)
ROOT = Path(__file__).resolve().parent.parent
HANDLER_DIR = ROOT / "handler"
CONFIG_DIR = ROOT / "config"
MODEL_CONFIG_DIR = CONFIG_DIR / "models" / MODEL_NAME
MODEL_STORE = ROOT / "model_store"
BUILD_DIR = ROOT / "build"
RUN_DIR = ROOT / "run"
DEFAULT_VERSION = "2.0"
SERVED_VERSIONS = ("1.0", "2.0")


def archive_name(version: str) -> str:
    return f"{MODEL_NAME}-{version}.mar"


def sample_photo() -> Path:
    """Grace Hopper in uniform, shipped with matplotlib: ImageNet classifiers usually answer
    "military uniform". Always on disk, so nothing needs the network."""
    import matplotlib.cbook

    return Path(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
