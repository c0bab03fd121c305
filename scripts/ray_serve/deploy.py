"""Deploy the application (app.py) onto the Ray cluster lifecycle.py started: run as a process of
its own, so that the caller never becomes a Ray driver. Serve's actors are detached: they serve on
after this process exits."""

from __future__ import annotations

import argparse
import json
import logging
import sys

import ray
from ray import serve

from scripts.endpoints import HOST
from scripts.paths import MODEL_NAME
from scripts.ray_serve import grpc_edge, loopback
from scripts.ray_serve.app import build


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--address", required=True, help="the cluster's GCS, host:port")
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--grpc-port", type=int, required=True)
    parser.add_argument("--app", required=True, help="build()'s arguments, as JSON")
    args = parser.parse_args(argv)
    ray.init(address=args.address, logging_level=logging.WARNING, runtime_env=loopback.RUNTIME_ENV)
    try:
        serve.start(
            http_options={"host": HOST, "port": args.http_port},
            # Its host is loopback.py's; no reflection service, as TorchServe has none.
            grpc_options={
                "port": args.grpc_port,
                "grpc_servicer_functions": grpc_edge.SERVICER_FUNCTIONS,
                "enable_reflection": False,
            },
        )
    except TimeoutError as error:
        # Serve waits a fixed 60 s for its proxy; on a busy small machine it takes longer.
        # The caller waits for it on its own deadline (lifecycle.wait_until_ready).
        print(f"{error} Still starting; deploying.", file=sys.stderr)
    serve.run(build(json.loads(args.app)), name=MODEL_NAME, route_prefix="/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
