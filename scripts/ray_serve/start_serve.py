"""Start Serve on the Ray cluster lifecycle.py started, with the listeners of the engine's Serve
config: run as a process of its own, so that the caller never becomes a Ray driver. Serve's
controller and proxies are detached actors that outlive this process; they are made in its job,
whose runtime environment keeps their gRPC listeners on loopback (loopback.py), and so are the
replicas of every application the config deploys later."""

from __future__ import annotations

import argparse
import json
import logging
import sys

import ray
from ray import serve

from scripts.ray_serve import loopback


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--address", required=True, help="the cluster's GCS, host:port")
    parser.add_argument("--config", required=True, help="the engine's Serve config file (scripts/serve_config.py)")
    args = parser.parse_args(argv)
    with open(args.config) as file:
        config = json.load(file)
    ray.init(address=args.address, logging_level=logging.WARNING, runtime_env=loopback.RUNTIME_ENV)
    try:
        serve.start(
            proxy_location=config["proxy_location"],
            http_options=config["http_options"],
            grpc_options=config["grpc_options"],
        )
    except TimeoutError as error:
        # Serve waits a fixed 60 s for its proxy; on a busy small machine it takes longer.
        # The caller waits for it on its own deadline (lifecycle.wait_until_ready).
        print(f"{error} Still starting.", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
