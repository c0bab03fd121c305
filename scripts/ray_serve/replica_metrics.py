"""The handler's metrics on the Ray Serve engine: config/metrics.yaml's model metrics as Ray's
own counters and gauges, which Ray exports on its Prometheus endpoint (the engine's metrics
port) beside Ray Serve's. The handler writes them as it writes TorchServe's (handler_metrics.py),
through a metrics cache built from the same file.

Ray names each `ray_<name>` and gives a counter whose name lacks it a `_total` suffix; it adds
its own labels (WorkerId: one series per replica, as TorchServe's Hostname is one per host).
docs/engines.md#metrics gives the two relabelings that give Prometheus TorchServe's names."""

from __future__ import annotations

from typing import Any

from ray.util import metrics
from ts.metrics.metric_cache_yaml_impl import MetricsCacheYamlImpl
from ts.metrics.metric_type_enum import MetricTypes

RAY_KINDS: dict[MetricTypes, Any] = {MetricTypes.COUNTER: metrics.Counter, MetricTypes.GAUGE: metrics.Gauge}


class RayMetric:
    """One declared metric, written as the handler writes TorchServe's: a value and the values of
    its dimensions, in their declared order."""

    def __init__(self, name: str, unit: str, dimension_names: list[str], metric_type: MetricTypes) -> None:
        self.dimension_names = tuple(dimension_names)
        metric = RAY_KINDS[metric_type](name, description=f"{name} ({unit})", tag_keys=self.dimension_names)
        self.record = metric.inc if metric_type is MetricTypes.COUNTER else metric.set

    def add_or_update(self, value: float, dimension_values: list[str], request_id: str = "") -> None:
        self.record(value, tags=dict(zip(self.dimension_names, dimension_values, strict=True)))


class RayMetricsCache(MetricsCacheYamlImpl):  # type: ignore[misc]  # TorchServe's classes are untyped
    """TorchServe's metrics cache from config/metrics.yaml, each metric a Ray metric."""

    def add_metric_to_cache(
        self,
        metric_name: str,
        unit: str,
        dimension_names: list[str] | None = None,
        metric_type: MetricTypes = MetricTypes.COUNTER,
    ) -> RayMetric:
        metric = RayMetric(metric_name, unit, dimension_names or [], metric_type)
        self.cache.setdefault(metric_type, {})[metric_name] = metric
        return metric
