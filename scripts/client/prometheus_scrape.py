"""A TorchServe /metrics page, read with prometheus_client's own parser, for the benchmark and
the tests: samples by name and labels, and sums over the samples a query names."""

from __future__ import annotations

import time
from collections.abc import Callable

import requests
from prometheus_client.parser import text_string_to_metric_families

# Samples by (name, labels); Hostname is left out: one server runs on one host.
Scrape = dict[tuple[str, frozenset[tuple[str, str]]], float]
RAY_PREFIX = "ray_"  # what Ray puts before the name of every metric it exports


def scrape(metrics_url: str) -> Scrape:
    """The page's samples, the handler's under TorchServe's names on either engine."""
    text = requests.get(metrics_url, timeout=10).text
    samples = (sample for family in text_string_to_metric_families(text) for sample in family.samples)
    return {(_torchserve_name(sample.name), _labels(sample.labels)): sample.value for sample in samples}


def _labels(labels: dict[str, str]) -> frozenset[tuple[str, str]]:
    return frozenset((name, value) for name, value in labels.items() if name != "Hostname")


def _torchserve_name(name: str) -> str:
    """The Ray Serve engine's page names the handler's metrics `ray_handler_...`
    (scripts/ray_serve/replica_metrics.py); TorchServe's, `handler_...`."""
    return name.removeprefix(RAY_PREFIX) if name.startswith(f"{RAY_PREFIX}handler_") else name


def total(scraped: Scrape, name: str, **labels: str) -> float:
    """The sum of the samples of `name` that carry `labels`. prometheus_client's parser names a
    counter's samples `<name>_total` even where the server exposed `<name>` (a Prometheus server
    keeps the name as exposed), so either spelling is `name`."""
    return sum(
        value
        for (sample, sample_labels), value in scraped.items()
        if sample in (name, f"{name}_total") and set(labels.items()) <= sample_labels
    )


def increase(before: Scrape, after: Scrape, name: str, **labels: str) -> float:
    """How much the samples of `name` that carry `labels` grew between two scrapes."""
    return total(after, name, **labels) - total(before, name, **labels)


def batches_read_whole(scraped: Scrape) -> bool:
    """Whether the page holds every handler batch it holds part of. TorchServe's frontend reads a
    worker's metric lines on its own thread, after the answer has gone, and Ray's processes report
    theirs at an interval, mid-batch or not. A batch's first value is its decode_transform +Inf
    bucket and its last the handler stage's count (handler_metrics.py), and each worker's are
    taken in order, so the two totals are equal exactly then."""
    first_lines = total(scraped, "handler_stage_seconds_bucket", Stage="decode_transform", le="+Inf")
    return first_lines == total(scraped, "handler_stage_seconds_count", Stage="handler")


def settled_scrape(
    metrics_url: str, until: Callable[[Scrape], bool] = lambda _: True, report_s: float = 0, timeout_s: float = 60
) -> Scrape:
    """The first scrape with no batch read in part and for which `until` holds; scrapes of one
    server taken this way differ by whole batches only. A page that takes values in at an
    interval (`report_s`, Server.metrics_report_s) is settled once the handler's samples have
    stood for three intervals, so that no value already counted is still on its way."""
    deadline = time.monotonic() + timeout_s
    handler_samples, unchanged_since = None, time.monotonic()
    while True:
        scraped = scrape(metrics_url)
        if (
            samples := {key: value for key, value in scraped.items() if key[0].startswith("handler_")}
        ) != handler_samples:
            handler_samples, unchanged_since = samples, time.monotonic()
        if batches_read_whole(scraped) and until(scraped) and time.monotonic() - unchanged_since >= 3 * report_s:
            return scraped
        if time.monotonic() > deadline:
            raise TimeoutError(f"{metrics_url} did not settle within {timeout_s:g} s")
        time.sleep(0.2)
