"""The handler run in-process as a TorchServe worker runs it (by the tests, the benchmarks and the
Ray Serve engine's replicas), the private TorchServe and KServe APIs that needs, checked against
the pinned versions, and the busy-machine run of the served tests."""
