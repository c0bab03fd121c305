"""The values README.md and docs/ promise, each written once, here, beside the words that state it.

Tests hold the configuration and the behaviour to these values, never to the configuration the
value comes from: a test that reads a limit back from the served config passes whatever the limit
is. STATEMENTS writes each value into the doc's own words, and tests/test_promised.py checks the
doc says exactly that: a changed promise or a changed value fails there, a changed setting fails
where the setting is checked.
"""

from __future__ import annotations

MIB = 2**20

# docs/serving.md, "Configuration": the settings table.
BATCH_SIZE = 8
MAX_BATCH_DELAY_MS = 10
RESPONSE_TIMEOUT_S = 60
JOB_QUEUE_SIZE = 100
TOPK = 5
MAX_IMAGE_PIXELS = 40_000_000
MAX_ASPECT_RATIO = 20
MAX_IMAGES_PER_REQUEST = 32
MAX_EXPLAINED_CLASSES = 5
MAX_HEATMAPS_PER_REQUEST = 32
LOOPBACK = "127.0.0.1"
INFERENCE_PORT, MANAGEMENT_PORT, METRICS_PORT = 8080, 8081, 8082
GRPC_INFERENCE_PORT, GRPC_MANAGEMENT_PORT = 7070, 7071
MAX_REQUEST_BYTES = MAX_RESPONSE_BYTES = 10 * MIB
TOKEN_EXPIRATION_MIN = 24 * 60
PLAIN_START_WORKERS = (1, 1)  # minWorkers, maxWorkers of a plain `torchserve --start`
DEVICE_TYPE = "gpu"  # a GPU when the server has one, else the CPU

# docs/metrics.md: the handler's histograms.
LATENCY_BUCKETS_RANGE = (0.001, 10.0)  # seconds, lowest and highest bound
BATCH_BUCKETS_RANGE = (1, 256)  # images per forward pass

# docs/deployment.md: the pod and the manifests.
POD_HOST = "0.0.0.0"  # the pod's inference, gRPC and metrics listeners; management stays on LOOPBACK
KSERVE_POD_CPUS, KSERVE_POD_MEMORY = "4", "6Gi"
KSERVE_REPLICAS = (1, 8)
KSERVE_HPA_CPU_PERCENT = 70
KNATIVE_CONCURRENCY_TARGET = 8
CANARY_PERCENT = 10
PLAIN_REPLICAS = (2, 8)
SERVICE_PORTS = frozenset({INFERENCE_PORT, GRPC_INFERENCE_PORT})
POD_UID = 1000
GPU_POD_CPUS, GPU_POD_GPUS = "8", "1"  # the GPU overlays' pod
GPU_TAINT = "nvidia.com/gpu"
MONITORING_NAMESPACE = "monitoring"  # the only namespace the plain NetworkPolicy admits to metrics
ALLOWED_URLS = "(?!)"  # an empty negative lookahead: fails at every position, so no URL matches

# docs/engines.md: the Ray Serve engine, on one machine and on a KubeRay cluster.
RAY_METRICS_REPORT_MS = 500  # each replica's report to the node's metrics endpoint
RAY_PROXY_CHECK_TIMEOUT_S, RAY_START_TIMEOUT_S = 60, 300  # each proxy check's, and the start's deadline
RAY_WORKER_PODS, RAY_POD_CPUS = 1, "4"  # beside the head pod, each node's size
RAY_SERVE_PORT, RAY_SERVE_GRPC_PORT = 8000, 9000  # Serve's HTTP and gRPC proxies in a pod
RAY_GCS_PORT, RAY_DASHBOARD_PORT = 6379, 8265  # on KubeRay's head Service, inside the cluster
RAY_AUTH_MODE = "token"  # the cluster's authOptions
RAY_WORKER_NICENESS = 0  # the replicas' priority, a TorchServe worker's
TORCHSERVE_VERSION = "0.12.0"  # the Python package the engine loads archives with

# Each value in the words that state it: (file, words). Whitespace in the doc is normalised, so a
# promise may wrap across lines.
STATEMENTS: tuple[tuple[str, str], ...] = (
    ("docs/serving.md", f"model-config.yaml` (or `build_archives --set KEY=N`) | {BATCH_SIZE} |"),
    ("docs/serving.md", f"| `maxBatchDelay` | same file | {MAX_BATCH_DELAY_MS} ms |"),
    ("docs/serving.md", f"| `responseTimeout` | same file | {RESPONSE_TIMEOUT_S} s |"),
    ("docs/serving.md", f"| `jobQueueSize` | not set: TorchServe's default | {JOB_QUEUE_SIZE} |"),
    ("docs/serving.md", f"| `topk` | `handler:` section, same file | {TOPK} |"),
    ("docs/serving.md", f"checked on the header before decoding | {MAX_IMAGE_PIXELS // 10**6} MP |"),
    ("docs/serving.md", f"| `max_aspect_ratio` | same section | {MAX_ASPECT_RATIO}:1 |"),
    ("docs/serving.md", f"KServe v1 and OIP requests | {MAX_IMAGES_PER_REQUEST} |"),
    ("docs/serving.md", f"classes one explanation request may name | {MAX_EXPLAINED_CLASSES} |"),
    ("docs/serving.md", f"(images x classes) in one explanation request | {MAX_HEATMAPS_PER_REQUEST} |"),
    (
        "docs/serving.md",
        f"| listeners | `config/config.properties` | loopback ({LOOPBACK}): REST {INFERENCE_PORT} (inference), "
        f"{MANAGEMENT_PORT} (management), {METRICS_PORT} (metrics); "
        f"gRPC {GRPC_INFERENCE_PORT}, {GRPC_MANAGEMENT_PORT} |",
    ),
    (
        "docs/serving.md",
        "| `max_request_size`, `max_response_size` | same file (gRPC's message limits follow `max_request_size`) | "
        + (f"{MAX_REQUEST_BYTES // MIB} MiB each |" if MAX_REQUEST_BYTES == MAX_RESPONSE_BYTES else "unequal |"),
    ),
    ("docs/serving.md", f"| `token_expiration_min` | same file | {TOKEN_EXPIRATION_MIN // 60} h |"),
    (
        "docs/serving.md",
        "| `minWorkers`, `maxWorkers` | same file; used by a plain `torchserve --start` only, `make serve` and "
        "the bundle size workers with the rule | {}, {} |".format(*PLAIN_START_WORKERS),
    ),
    (
        "docs/serving.md",
        f"| `deviceType`, `deviceIds` | same file (TorchServe honours both) | `{DEVICE_TYPE}` (a GPU when the "
        "server has one, else the CPU); unset: round-robin over the GPUs |",
    ),
    ("docs/metrics.md", f"Buckets {LATENCY_BUCKETS_RANGE[0] * 1000:g} ms to {LATENCY_BUCKETS_RANGE[1]:g} s"),
    ("docs/metrics.md", "images per forward pass; buckets {} to {}".format(*BATCH_BUCKETS_RANGE)),
    (
        "docs/deployment.md",
        f"REST on {POD_HOST}:{INFERENCE_PORT}, gRPC on {POD_HOST}:{GRPC_INFERENCE_PORT}, metrics on "
        f"{POD_HOST}:{METRICS_PORT}, management on {LOOPBACK}:{MANAGEMENT_PORT}",
    ),
    (
        "docs/deployment.md",
        f"{KSERVE_POD_CPUS} CPUs and {KSERVE_POD_MEMORY.removesuffix('Gi')} GiB, "
        "{} to {} replicas on an HPA at {}% CPU".format(*KSERVE_REPLICAS, KSERVE_HPA_CPU_PERCENT),
    ),
    ("docs/deployment.md", f"requests in flight per pod, `scaleTarget: {KNATIVE_CONCURRENCY_TARGET}`"),
    ("docs/deployment.md", f"a 2.1 bundle at `canaryTrafficPercent: {CANARY_PERCENT}`"),
    ("docs/deployment.md", "an `autoscaling/v2` HPA on CPU utilization, {} to {} replicas".format(*PLAIN_REPLICAS)),
    (
        "docs/deployment.md",
        "a **Service** with only {} (REST) and {} (gRPC)".format(*sorted(SERVICE_PORTS, reverse=True)),
    ),
    ("docs/deployment.md", f"**Locked down**: uid {POD_UID}, no privilege escalation, all capabilities dropped"),
    ("docs/deployment.md", f"The overlay asks for `nvidia.com/gpu: {GPU_POD_GPUS}`"),
    (
        "docs/deployment.md",
        f"{GPU_POD_CPUS} CPUs for decoding, the `:cuda` image, and tolerates the usual `{GPU_TAINT}` taint",
    ),
    (
        "docs/deployment.md",
        f"admits inference from pods of any namespace and metrics only from the {MONITORING_NAMESPACE} namespace",
    ),
    (
        "docs/deployment.md",
        f"**Registration is off**, and `allowed_urls` matches nothing (`{ALLOWED_URLS}`)",
    ),
    ("docs/engines.md", f"`jobQueueSize` (TorchServe's default, {JOB_QUEUE_SIZE}, where it sets none)"),
    ("docs/engines.md", f"which every replica reports to the node's endpoint every {RAY_METRICS_REPORT_MS} ms"),
    (
        "docs/engines.md",
        f"`lifecycle.py` gives each check {RAY_PROXY_CHECK_TIMEOUT_S} s, and the start waits for `/ping` on "
        f"its own deadline ({RAY_START_TIMEOUT_S} s)",
    ),
    (
        "docs/engines.md",
        f"a head and {('one', 'two', 'three')[RAY_WORKER_PODS - 1]} worker pod, each a Ray node on our image "
        f"with {RAY_POD_CPUS} CPUs (requests = limits)",
    ),
    (
        "docs/engines.md",
        f"ports {INFERENCE_PORT} (REST) and {GRPC_INFERENCE_PORT} (gRPC) only**, onto Serve's HTTP proxy "
        f"({RAY_SERVE_PORT}) and gRPC proxy ({RAY_SERVE_GRPC_PORT}, with the same {MAX_REQUEST_BYTES // MIB} MiB "
        "message limit)",
    ),
    (
        "docs/engines.md",
        f"**Ray's own ports** (GCS {RAY_GCS_PORT}, dashboard {RAY_DASHBOARD_PORT}, metrics {METRICS_PORT}) are "
        f"on KubeRay's head Service, inside the cluster; `authOptions: {{mode: {RAY_AUTH_MODE}}}`",
    ),
    ("docs/engines.md", f"once `RAY_worker_niceness={RAY_WORKER_NICENESS}`, priority as a TorchServe worker"),
    ("docs/engines.md", f"(`ts`, pure Python, pinned at {TORCHSERVE_VERSION})"),
)
