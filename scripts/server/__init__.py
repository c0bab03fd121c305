"""Running TorchServe: its config and lifecycle, the worker rule, Java, `make serve`/`make stop`,
and the handler run in-process as a worker runs it."""
