"""Keep Serve's gRPC listeners on loopback: a worker setup hook (docs/engines.md).

Ray Serve 2.60 binds two gRPC servers to all interfaces, whatever the node's address: every
replica's, for calls between deployments (`[::]:0` in ray/serve/_private/replica.py), and the
proxy's, on the gRPC port clients call (`[::]:port` in grpc_util.start_grpc_server, through
default_impl.add_grpc_address). Neither checks a token of its own. On one machine every caller
is local, so the hook binds both to 127.0.0.1 instead. It reaches into Serve's private modules,
so it checks that the calls it changes are still there."""

from __future__ import annotations

import inspect
from typing import Any

from ray.serve._private import default_impl, grpc_util, replica

ALL_INTERFACES, LOOPBACK = "[::]", "127.0.0.1"
# The job's runtime environment that runs the hook in each of its workers (a deployment's own
# runtime_env does not run it in its replicas, nor in the proxy).
RUNTIME_ENV = {"worker_process_setup_hook": f"{__name__}.bind_serve_listeners_to_loopback"}


def bind_serve_listeners_to_loopback() -> None:
    # The proxy's server takes add_grpc_address from default_impl as it starts: replacing it there works.
    calls = (
        (replica, '"[::]:0"'),
        (grpc_util.start_grpc_server, "from ray.serve._private.default_impl import add_grpc_address"),
        (grpc_util.start_grpc_server, 'add_grpc_address(server, f"[::]:{grpc_options.port}")'),
    )
    for code, call in calls:
        if call not in inspect.getsource(code):
            raise RuntimeError(f"Ray Serve no longer makes the call {call}: check {__file__} against the installed Ray")
    private: Any = replica  # the name the replica binds with is Serve's, imported from ray._common.tls_utils
    private.add_port_to_grpc_server = _on_loopback(private.add_port_to_grpc_server)
    default_impl.add_grpc_address = _on_loopback(default_impl.add_grpc_address)


def _on_loopback(bind: Any) -> Any:
    """`bind(server, address)`, with an address on all interfaces moved to loopback, same port."""

    def bind_on_loopback(server: Any, address: str) -> Any:
        host, _, port = address.rpartition(":")
        return bind(server, f"{LOOPBACK}:{port}" if host == ALL_INTERFACES else address)

    return bind_on_loopback
