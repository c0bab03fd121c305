"""Generate Python gRPC stubs from the .proto files inside the installed TorchServe.

The protos ship in ts/frontend/model-server.jar, so the stubs always match the server that is
installed; nothing is copied into the repository. google/rpc/status.proto, which they import,
comes from the googleapis-common-protos package. Output: scripts/client/torchserve_grpc/ (ignored).
"""

from __future__ import annotations

import sys
import tempfile
import zipfile
from pathlib import Path

import ts

from scripts.paths import ROOT

PACKAGE = "scripts/client/torchserve_grpc"
PROTOS = ("inference.proto", "management.proto", "open_inference_grpc.proto")
JAR = Path(ts.__file__).parent / "frontend" / "model-server.jar"


def generate() -> Path:
    """(Re)generate the stubs; the protos are placed under PACKAGE so the imports are absolute.
    grpcio-tools is imported here only: the serving image carries the stubs, not the generator."""
    import grpc_tools
    from google.rpc import status_pb2  # googleapis-common-protos ships status.proto beside it
    from grpc_tools import protoc

    output = ROOT / PACKAGE
    with tempfile.TemporaryDirectory() as proto_root, zipfile.ZipFile(JAR) as jar:
        (Path(proto_root) / PACKAGE).mkdir(parents=True)
        for name in PROTOS:
            (Path(proto_root) / PACKAGE / name).write_bytes(jar.read(f"proto/{name}"))
        includes = [
            proto_root,
            str(Path(status_pb2.__file__).parents[2]),
            str(Path(grpc_tools.__file__).parent / "_proto"),
        ]
        arguments = [
            "grpc_tools.protoc",
            *(f"-I{path}" for path in includes),
            f"--python_out={ROOT}",
            f"--grpc_python_out={ROOT}",
            *(f"{PACKAGE}/{name}" for name in PROTOS),
        ]
        if protoc.main(arguments) != 0:
            raise RuntimeError(f"protoc failed on the protos from {JAR}")
    (output / "__init__.py").write_text(
        '"""Generated from TorchServe\'s model-server.jar by scripts/client/grpc_stubs.py."""\n'
    )
    return output


def ensure() -> None:
    """Generate the stubs if this checkout has none yet (for example right after a clone)."""
    if not (ROOT / PACKAGE / "open_inference_grpc_pb2_grpc.py").is_file():
        generate()


if __name__ == "__main__":
    print(f"gRPC stubs: {generate()}")
    sys.exit(0)
