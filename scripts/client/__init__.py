"""Talking to a running server: REST and gRPC clients (stubs generated from TorchServe's own
.proto files), the command-line client (`python -m scripts.client`), its heatmap overlay, the
soak, and a /metrics reader."""
