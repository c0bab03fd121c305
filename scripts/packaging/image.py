"""`make image`: the serving image of deploy/image/Containerfile, built with podman (or docker).

    python -m scripts.packaging.image                          # resnet50-serving:cpu
    python -m scripts.packaging.image --variant cuda           # resnet50-serving:cuda
    python -m scripts.packaging.image --base local             # on a Debian root made here

`--base local` is for machines that reach no container registry but do reach Debian's mirrors:
mmdebstrap makes a bookworm root with python3.11 from Debian's mirrors, and the
engine imports it as localhost/bookworm-python3.11. With podman, the build's pip is given the
machine's pip configuration and the local folders it names (wheel folders, CA bundle,
constraints), read-only, so it installs from where this machine's pip does.
"""

from __future__ import annotations

import argparse
import ast
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from scripts.paths import ROOT

CONTAINERFILE = ROOT / "deploy" / "image" / "Containerfile"
VARIANTS = ("cpu", "cuda")
DEFAULT_BASE = "docker.io/library/python:3.11-slim-bookworm"
LOCAL_BASE = "localhost/bookworm-python3.11:latest"
LOCAL_BASE_PACKAGES = "python3.11,python3.11-venv,ca-certificates"
# The pip settings a build takes from this machine: where packages come from, and how to trust it.
WHERE_PIP_LOOKS = {"index-url", "extra-index-url", "find-links", "constraint", "cert", "trusted-host", "timeout"}


class ImageError(RuntimeError):
    """The image cannot be built here; the message says what to do."""


def engine() -> str:
    """podman, else docker."""
    for name in ("podman", "docker"):
        if found := shutil.which(name):
            return found
    raise ImageError("no container engine: install podman (apt-get install podman) or docker")


def image_exists(tag: str) -> bool:
    return (
        subprocess.run(
            [engine(), "image", "exists" if _is_podman() else "inspect", tag], capture_output=True, check=False
        ).returncode
        == 0
    )


def image_size(tag: str) -> int:
    """The image's size in bytes, as the engine counts it (every layer, uncompressed)."""
    output = subprocess.run(
        [engine(), "image", "inspect", "--format", "{{.Size}}", tag], capture_output=True, text=True, check=True
    ).stdout
    return int(output.strip())


def local_base() -> str:
    """LOCAL_BASE, made with mmdebstrap from Debian's mirrors unless it exists."""
    if image_exists(LOCAL_BASE):
        return LOCAL_BASE
    if shutil.which("mmdebstrap") is None:
        raise ImageError("--base local needs mmdebstrap (apt-get install mmdebstrap) to make a Debian root")
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch) / "root.tar"
        _run(["mmdebstrap", "--variant=minbase", f"--include={LOCAL_BASE_PACKAGES}", "bookworm", str(root)])
        _run([engine(), "import", str(root), LOCAL_BASE])
    return LOCAL_BASE


def build(variant: str, base: str, tag: str) -> str:
    """Build `tag` from the Containerfile on `base`; returns the tag."""
    if variant not in VARIANTS:
        raise ImageError(f"--variant must be one of {', '.join(VARIANTS)}, not {variant!r}")
    with tempfile.TemporaryDirectory() as scratch:
        mounts = _pip_mounts(Path(scratch)) if _is_podman() else []
        _run(
            [
                engine(),
                "build",
                *("--file", str(CONTAINERFILE)),
                *("--build-arg", f"BASE={local_base() if base == 'local' else base}"),
                *("--build-arg", f"VARIANT={variant}"),
                *mounts,
                *("--tag", tag),
                str(ROOT),
            ]
        )
    return tag


def _pip_mounts(scratch: Path) -> list[str]:
    """--volume options giving the build's pip this machine's pip configuration, merged into one
    /etc/pip.conf, and every local path it names, read-only at the same paths."""
    listed = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, check=True
    ).stdout
    settings = {
        key: " ".join(ast.literal_eval(value).split())  # pip prints each value as a Python literal
        for key, value in re.findall(r"^[^.\n]*\.([\w-]+)=(.*)$", listed, re.MULTILINE)
        if key in WHERE_PIP_LOOKS
    }
    if not settings:
        return []
    config = scratch / "pip.conf"
    config.write_text("[global]\n" + "".join(f"{key} = {value}\n" for key, value in settings.items()))
    paths = {path for value in settings.values() for word in value.split() if (path := _local_path(word))}
    volumes = [f"{config}:/etc/pip.conf:ro", *(f"{path}:{path}:ro" for path in sorted(paths))]
    return [option for volume in volumes for option in ("--volume", volume)]


def _local_path(word: str) -> Path | None:
    """The local path a pip setting names, if any: a folder or file, or a file:// index together
    with the files its pages link to (a `simple/` index's parent folder)."""
    if not word.startswith(("/", "file:///")):
        return None
    path = Path(word.removeprefix("file://"))
    if word.startswith("file://") and path.name == "simple":
        path = path.parent
    return path if path.exists() else None


def _is_podman() -> bool:
    return Path(engine()).name == "podman"


def _run(command: list[str]) -> None:
    if subprocess.run(command, check=False).returncode != 0:
        raise ImageError(f"{Path(command[0]).name} {command[1]} failed (its output is above)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", default="cpu", help=f"{' or '.join(VARIANTS)} (default cpu)")
    parser.add_argument(
        "--base", default=DEFAULT_BASE, help=f"the base image (default {DEFAULT_BASE}); `local` to make one here"
    )
    parser.add_argument("--tag", help="the image's name (default resnet50-serving:VARIANT)")
    args = parser.parse_args(argv)
    try:
        tag = build(args.variant, args.base, args.tag or f"resnet50-serving:{args.variant}")
        print(f"{tag}: {image_size(tag) / 2**30:.2f} GiB")
    except ImageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
