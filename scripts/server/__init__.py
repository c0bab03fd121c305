"""Running TorchServe: its config and lifecycle, Java, and `make serve`/`make stop`."""
