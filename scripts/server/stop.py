"""`make stop`: stop the TorchServe started by `make serve`, workers included."""

from __future__ import annotations

import sys

from scripts.endpoints import Server
from scripts.server.lifecycle import stop


def main() -> int:
    server = Server()
    if stop(server):
        print(f"TorchServe ({server.run_dir}) stopped; no worker left behind.")
    else:
        print(f"No TorchServe is running from {server.run_dir}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
