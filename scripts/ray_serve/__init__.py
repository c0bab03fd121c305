"""The second engine: the same archives and handler served by Ray Serve (docs/engines.md)."""
