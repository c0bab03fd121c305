"""The handler's own metrics, on TorchServe's Prometheus endpoint: what its frontend cannot see.

TorchServe 0.12's frontend counts no request in its latency counters when it comes over gRPC,
and none at all over OIP gRPC; nor does it know why a request was refused, how full a batch ran
or which forward ran it. The handler sees every request of every protocol alike, so it counts.

A metric reaches /metrics only if config/metrics.yaml declares it (`model_metrics`); TorchServe
then exports it under exactly its name, with its declared dimensions in order and Hostname
after them. Values are matched to dimensions by position only, so each metric below is
written with `add_or_update` and its values in the declared order.

TorchServe's histogram takes its client's default buckets (5 ms to 10 s) and no others, too
coarse for a postprocess of well under a millisecond. So the histograms here are written the
way Prometheus stores any histogram: a cumulative `_bucket` counter per upper bound `le`, a
`_sum` and a `_count`; `histogram_quantile` reads them like a native one.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from ts.metrics.metric_cache_errors import MetricsCacheKeyError

from wire_format import ServedModel

logger = logging.getLogger(__name__)

# Seconds: 1 ms (a postprocess) to 10 s (a GPU-sized batch on a small CPU).
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Images in one forward pass: one request of one image, up to batchSize requests of 32 each.
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
STAGES = ("decode_transform", "forward", "postprocess", "handler")  # of every batch
EXPLAIN_STAGE = "explain"  # Grad-CAM, timed only in batches with explanation requests
OK = "OK"


@dataclass(frozen=True)
class Histogram:
    """A Prometheus histogram as counters: `<name>_bucket{..., le}`, `<name>_sum`, `<name>_count`."""

    name: str
    buckets: Sequence[float]

    def observe(self, cache: Any, value: float, labels: list[str]) -> None:
        """One observation: +1 on every bucket at or above it (the cumulative form), the sum, then
        the count. Buckets from +Inf down, so a batch's first line is its first stage's +Inf bucket
        and its last the handler stage's count: TorchServe's frontend reads the lines after the
        answer has gone, and a scrape can tell a batch it has read in part (`batches_read_in_part`)."""
        for bound in [math.inf, *reversed(self.buckets)]:
            if value <= bound:
                _counter(cache, f"{self.name}_bucket", 1, [*labels, _bound(bound)])
        _counter(cache, f"{self.name}_sum", round(value, 6), labels)
        _counter(cache, f"{self.name}_count", 1, labels)


STAGE_SECONDS = Histogram("handler_stage_seconds", LATENCY_BUCKETS)
BATCH_IMAGES = Histogram("handler_batch_images", BATCH_BUCKETS)
REQUESTS = "handler_requests_total"
IMAGES = "handler_images_total"
FORWARD_BATCHES = "handler_forward_batches_total"
WORKER_STARTS = "handler_worker_starts_total"
DECLARED = [
    f"{histogram.name}_{part}" for histogram in (STAGE_SECONDS, BATCH_IMAGES) for part in ("bucket", "sum", "count")
] + [REQUESTS, IMAGES, FORWARD_BATCHES, WORKER_STARTS]


class HandlerMetrics:
    """What one worker of one model version counts. Off, with one warning, where the server's
    metrics config does not declare these metrics (TorchServe's default config, say)."""

    def __init__(self, cache: Any, model: ServedModel, forward: str, device: str) -> None:
        missing = [name for name in DECLARED if not _declared(cache, name)]
        if missing:
            logger.warning(
                "The server's metrics_config does not declare %s: the handler's metrics are off. "
                "Serve with config/metrics.yaml (metrics_config) to have them",
                ", ".join(missing),
            )
        self.cache = None if missing else cache
        self.model = [model.name, model.version]
        # "cuda0", not "cuda:0": TorchServe's metric lines use ":" between a dimension's name and value.
        self.forward = [forward, device.replace(":", "")]
        self.count(WORKER_STARTS, 1)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time a stage of the handler (one of STAGES) for its latency histogram."""
        started = time.perf_counter()
        try:
            yield
        finally:
            if self.cache is not None:
                STAGE_SECONDS.observe(self.cache, time.perf_counter() - started, [*self.model, name])

    def forward_pass(self, images: int) -> None:
        """A forward pass ran over `images` images: how full batches are, and which forward ran."""
        if self.cache is not None:
            BATCH_IMAGES.observe(self.cache, images, self.model)
        self.count(FORWARD_BATCHES, 1, *self.forward)

    def answered(self, protocol: str, transport: str, outcome: str) -> None:
        """A request answered: OK, or refused with its error kind."""
        self.count(REQUESTS, 1, protocol, transport, outcome)

    def classified(self, images: int) -> None:
        """A request's images classified and answered (a refused request's count none)."""
        self.count(IMAGES, images)

    def count(self, name: str, value: float, *labels: str) -> None:
        if self.cache is not None:
            _counter(self.cache, name, value, [*self.model, *labels])


def _counter(cache: Any, name: str, value: float, labels: list[str]) -> None:
    cache.get_metric(name).add_or_update(value, labels)  # a counter, get_metric's default


def _declared(cache: Any, name: str) -> bool:
    try:
        cache.get_metric(name)
    except MetricsCacheKeyError:
        return False
    return True


def _bound(bound: float) -> str:
    """Prometheus' spelling of a bucket bound: "0.005", "1.0", "+Inf"."""
    return "+Inf" if math.isinf(bound) else repr(float(bound))
