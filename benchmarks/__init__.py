"""`make bench` and the GPU check. Importing `scripts` first puts the handler's modules on the path,
as the benchmarks import them flat, like the handler and the tests."""

import scripts  # noqa: F401
