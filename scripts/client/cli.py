"""Talk to the running server over REST (default) or gRPC: classify images, manage versions.

    python -m scripts.client predict photo.jpg other.png --version 1.0 --concurrency 4
    python -m scripts.client explain photo.jpg --out heat.png --classes 207 281
    python -m scripts.client --grpc describe all
    python -m scripts.client register resnet50-2.1.mar --workers 1
    python -m scripts.client set-default 2.1
    python -m scripts.client scale 2.1 --min 2 --max 2
    python -m scripts.client unregister 1.0

The server's ports and token come from its run folder (run/ for `make serve`). Any failure is
one line on stderr and a non-zero exit.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from scripts.client.heatmap_overlay import write_overlay
from scripts.client.rest_api import ApiError, RestClient
from scripts.endpoints import Server, ServerError
from scripts.paths import MODEL_NAME, RUN_DIR


def predict_files(
    client: Any, model: str, files: list[Path], version: str | None, concurrency: int
) -> list[dict[str, Any]]:
    """Classify each file, `concurrency` at a time; a failure is recorded, not raised."""

    def one(path: Path) -> dict[str, Any]:
        try:
            return {"file": str(path), "predictions": client.predict(model, path.read_bytes(), version)}
        except OSError as error:
            return {"file": str(path), "error": f"cannot read {path}: {error.strerror}"}
        except ApiError as error:
            return {"file": str(path), "error": str(error), "status": error.status}

    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        return list(pool.map(one, files))


def explain_file(
    client: RestClient, model: str, photo: Path, out: Path, version: str | None, classes: list[int]
) -> dict[str, Any]:
    """Explain one photo (REST: TorchServe's gRPC API has no explanation call) and draw the overlay."""
    data = photo.read_bytes()
    explanation = client.explain(model, data, version, classes)
    write_overlay(data, explanation, out)
    return {"file": str(photo), "overlay": str(out), **explanation}


def format_explanation(result: dict[str, Any]) -> str:
    explained = ", ".join(f"{entry['label']} (p {entry['probability']:.3g})" for entry in result["heatmaps"])
    top = result["predictions"][0]
    return f"{result['file']}  {top['probability']:6.1%}  {top['label']}  heatmap of {explained} -> {result['overlay']}"


def format_table(results: list[dict[str, Any]]) -> str:
    width = max(len(result["file"]) for result in results)
    lines = []
    for result in results:
        if "error" in result:
            lines.append(f"{result['file']:<{width}}  error: {result['error']}")
        else:
            top = result["predictions"][0]
            others = ", ".join(f"{p['label']} {p['probability']:.1%}" for p in result["predictions"][1:3])
            lines.append(f"{result['file']:<{width}}  {top['probability']:6.1%}  {top['label']}  ({others})")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m scripts.client", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--grpc", action="store_true", help="use the gRPC APIs instead of REST")
    parser.add_argument("--run-dir", type=Path, default=RUN_DIR, help="the server's run folder (default: run/)")
    parser.add_argument("--model", default=MODEL_NAME)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    verbs = parser.add_subparsers(dest="verb", required=True)
    verbs.add_parser("ping")
    predict = verbs.add_parser("predict", help="classify image files")
    predict.add_argument("files", nargs="+", type=Path)
    predict.add_argument("--version", help="a version (default: the default version)")
    predict.add_argument("--concurrency", type=int, default=4)
    explain = verbs.add_parser("explain", help="draw where the model looked (Grad-CAM) over a photo")
    explain.add_argument("file", type=Path)
    explain.add_argument("--out", type=Path, help="the overlay PNG (default: <photo>-heatmap.png, here)")
    explain.add_argument("--classes", type=int, nargs="+", default=[], help="class indices (default: the top class)")
    explain.add_argument("--version", help="a version (default: the default version)")
    verbs.add_parser("list")
    describe = verbs.add_parser("describe", help="one version, all, or (no argument) the default")
    describe.add_argument("version", nargs="?")
    register = verbs.add_parser("register", help="register an archive from the model store")
    register.add_argument("archive")
    register.add_argument("--workers", type=int, default=1)
    default = verbs.add_parser("set-default")
    default.add_argument("version")
    scale = verbs.add_parser("scale")
    scale.add_argument("version")
    scale.add_argument("--min", type=int, required=True)
    scale.add_argument("--max", type=int, required=True)
    unregister = verbs.add_parser("unregister")
    unregister.add_argument("version")
    return parser


# The version commands: calls of TorchServe's management API, Serve config updates on Ray Serve.
MANAGEMENT_VERBS = ("list", "describe", "register", "set-default", "scale", "unregister")


def management_client(server: Server, grpc: bool = False) -> Any:
    """What the version commands call: TorchServe's management API over REST or gRPC, or, on the
    Ray Serve engine, its Serve config (scripts/client/ray_versions.py), whichever the protocol."""
    if server.engine == "ray":
        from scripts.client.ray_versions import RayServeVersions  # Ray is only loaded by those who use it

        return RayServeVersions.for_server(server)
    return protocol_client(server, grpc)


def protocol_client(server: Server, grpc: bool) -> Any:
    if grpc:
        from scripts.client.grpc_client import GrpcClient  # grpc is only loaded by those who use it

        return GrpcClient.for_server(server)
    return RestClient.for_server(server)


def run(args: argparse.Namespace) -> tuple[Any, bool]:
    """Do what the arguments say; returns (what to print, whether everything succeeded)."""
    server = Server.from_run_dir(args.run_dir)
    if args.verb == "explain":
        out = args.out or Path(f"{args.file.stem}-heatmap.png")
        result = explain_file(RestClient.for_server(server), args.model, args.file, out, args.version, args.classes)
        return (result if args.json else format_explanation(result)), True
    if args.verb in MANAGEMENT_VERBS:
        client = management_client(server, args.grpc)
    else:
        client = protocol_client(server, args.grpc)
    if args.verb == "predict":
        results = predict_files(client, args.model, args.files, args.version, args.concurrency)
        ok = all("error" not in result for result in results)
        return (results if args.json else format_table(results)), ok
    if args.verb == "ping":
        return client.ping(), True
    actions: dict[str, Callable[[], Any]] = {
        "list": client.list_models,
        "describe": lambda: client.describe(args.model, args.version),
        "register": lambda: client.register(args.archive, args.workers),
        "set-default": lambda: client.set_default(args.model, args.version),
        "scale": lambda: client.scale(args.model, args.version, args.min, args.max),
        "unregister": lambda: client.unregister(args.model, args.version),
    }
    return actions[args.verb](), True


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.verb == "explain" and args.grpc:
        parser.error("TorchServe's gRPC API has no explanation call: explain over REST (leave out --grpc)")
    try:
        output, ok = run(args)
    except (ApiError, ServerError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(output if isinstance(output, str) else json.dumps(output, indent=2))
    return 0 if ok else 1
