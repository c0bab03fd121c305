"""`make stop`: stop what `make serve` started, TorchServe or Ray Serve, every process of it."""

from __future__ import annotations

import sys

from scripts.endpoints import Server
from scripts.ray_serve import lifecycle as ray_engine
from scripts.server import lifecycle as torchserve_engine


def main() -> int:
    server = Server()
    stopped = [
        name for name, stop in (("TorchServe", torchserve_engine.stop), ("Ray Serve", ray_engine.stop)) if stop(server)
    ]
    for name in stopped:
        print(f"{name} ({server.run_dir}) stopped; no process of it left behind.")
    if not stopped:
        print(f"Nothing is serving from {server.run_dir}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
