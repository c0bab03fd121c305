"""`make serve`: build the archives, serve 1.0 and 2.0 (TorchServe, or Ray Serve with
`--engine ray`), classify a photo.

Exits non-zero with the relevant log lines if anything fails, and leaves no server behind then.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scripts.client.cli import management_client
from scripts.client.rest_api import ApiError, RestClient
from scripts.endpoints import Ports, Server, ServerError
from scripts.packaging import build_archives
from scripts.packaging.weights import OFFICIAL, RANDOM, WeightsError
from scripts.paths import DEFAULT_VERSION, MODEL_NAME, MODEL_STORE, RUN_DIR, SERVED_VERSIONS, sample_photo
from scripts.ray_serve import lifecycle as ray_engine
from scripts.server import lifecycle as torchserve_engine
from scripts.worker_plan import Machine, WorkerPlan, plan_from_environment


@dataclass(frozen=True)
class Engine:
    """What serves the archives, and how to start and stop it."""

    name: str
    start: Callable[[Server, WorkerPlan], None]
    stop: Callable[[Server], bool]
    log_excerpt: Callable[[Server], str]


TORCHSERVE = Engine("TorchServe", torchserve_engine.start, torchserve_engine.stop, torchserve_engine.log_excerpt)
ENGINES = {
    "torchserve": TORCHSERVE,
    "ray": Engine("Ray Serve", ray_engine.start, ray_engine.stop, ray_engine.log_excerpt),
}


def format_predictions(predictions: list[dict[str, Any]]) -> str:
    rows = [f"  {p['probability']:7.2%}  {p['label']}  (class {p['index']})" for p in predictions]
    return "\n".join(rows)


def curl_command(server: Server, photo: Path) -> str:
    """The token is read from the key file at run time, so it never lands in shell history."""
    token = f"$(python3 -c \"import json; print(json.load(open('{server.key_file}'))['inference']['key'])\")"
    return f'curl -H "Authorization: Bearer {token}" -T {photo} {server.inference_url}/predictions/{MODEL_NAME}'


def serve(weights: str, server: Server, plan: WorkerPlan, engine: Engine = TORCHSERVE) -> int:
    for version in SERVED_VERSIONS:
        print(f"archive: {build_archives.build(version, weights, server.model_store)}")
    print(f"workers: {plan.describe()}")
    engine.start(server, plan)
    try:
        client = RestClient.for_server(server)
        if (served := management_client(server).describe(MODEL_NAME)[0]["modelVersion"]) != DEFAULT_VERSION:
            raise ServerError(f"asked for default version {DEFAULT_VERSION} but {engine.name} serves {served}")
        photo = sample_photo()
        predictions = client.predict(MODEL_NAME, photo.read_bytes(), content_type="image/jpeg")
    except (ApiError, ServerError) as error:
        print(f"error: {error}\n{engine.log_excerpt(server)}", file=sys.stderr)
        engine.stop(server)
        print(f"{engine.name} was stopped.", file=sys.stderr)
        return 1
    if weights == RANDOM:
        print("\n!!! SEEDED RANDOM WEIGHTS: these labels are meaningless. Use WEIGHTS=official. !!!")
    print(
        f"\n{MODEL_NAME} {DEFAULT_VERSION} (default; also serving {', '.join(SERVED_VERSIONS)}) "
        f"on {photo.name}:\n{format_predictions(predictions)}\n"
    )
    print(f"Try it yourself:\n  {curl_command(server, photo)}")
    print(
        f"See where it looked (Grad-CAM over the photo):\n  .venv/bin/python -m scripts.client explain {photo} "
        "--out heat.png\n"
    )
    print(f"Logs: {server.log_dir}   Metrics: {server.metrics_url}\nStop: make stop")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--weights",
        default=os.environ.get("WEIGHTS") or OFFICIAL,
        help="official (default), random, or a folder holding torchvision's files",
    )
    parser.add_argument(
        "--engine", choices=sorted(ENGINES), default=os.environ.get("ENGINE") or "torchserve", help="what serves them"
    )
    args = parser.parse_args(argv)
    server = Server(run_dir=RUN_DIR, model_store=MODEL_STORE, ports=Ports())
    try:
        plan = plan_from_environment(Machine.detect())
        return serve(args.weights, server, plan, ENGINES[args.engine])
    except (WeightsError, ServerError, ValueError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
