"""Keep a Serve replica's listener on loopback: a worker setup hook (docs/engines.md).

Ray Serve 2.60 gives every replica a gRPC server for calls between deployments and binds it to
all interfaces (`[::]:0` in ray/serve/_private/replica.py), unauthenticated, whatever the node's
address. On one machine every caller is local, so the hook binds it to 127.0.0.1 instead. It
reaches into Serve's private module, so it checks that the call it changes is still there."""

from __future__ import annotations

import inspect
from typing import Any

from ray.serve._private import replica

ALL_INTERFACES, LOOPBACK = "[::]:0", "127.0.0.1:0"
# The job's runtime environment that runs the hook in each of its workers (a deployment's own
# runtime_env does not run it in its replicas).
RUNTIME_ENV = {"worker_process_setup_hook": f"{__name__}.bind_replica_servers_to_loopback"}


def bind_replica_servers_to_loopback() -> None:
    if ALL_INTERFACES not in inspect.getsource(replica):
        raise RuntimeError(
            f"ray.serve._private.replica no longer binds {ALL_INTERFACES}: check {__file__} against the installed Ray"
        )
    private: Any = replica  # the name it binds with is Serve's, imported from ray._common.tls_utils
    bind = private.add_port_to_grpc_server

    def bind_on_loopback(server: Any, address: str) -> int:
        return int(bind(server, LOOPBACK if address == ALL_INTERFACES else address))

    private.add_port_to_grpc_server = bind_on_loopback
