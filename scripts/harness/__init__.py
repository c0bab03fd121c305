"""For tests and benchmarks only: the handler run in-process as a TorchServe worker runs it, and
the private TorchServe and KServe APIs that needs, checked against the pinned versions."""
