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


# How long a worker's batch may stand read in part before it is taken for the last report of a
# worker that has stopped (a Ray Serve replica stopped or killed mid-report leaves it so): far
# longer than any batch, and than the interval a reporting engine takes to send the rest.
STOPPED_WORKER_S = 10.0


def batches_read_in_part(scraped: Scrape) -> set[frozenset[tuple[str, str]]]:
    """The workers (their labels, less Stage and le) whose last batch the page holds in part.
    TorchServe's frontend reads a worker's metric lines on its own thread, after the answer has
    gone, and Ray's processes report theirs at an interval, mid-batch or not. A batch's first value
    is its decode_transform +Inf bucket and its last the handler stage's count
    (handler_metrics.py), and each worker's are taken in order, so a worker's two totals are equal
    exactly when the page holds its batches whole."""
    first: dict[frozenset[tuple[str, str]], float] = {}
    last: dict[frozenset[tuple[str, str]], float] = {}
    for (name, labels), value in scraped.items():
        named = dict(labels)
        worker = frozenset((key, label) for key, label in labels if key not in ("Stage", "le"))
        if name == "handler_stage_seconds_bucket" and (named.get("Stage"), named["le"]) == ("decode_transform", "+Inf"):
            first[worker] = first.get(worker, 0) + value
        elif name == "handler_stage_seconds_count" and named.get("Stage") == "handler":
            last[worker] = last.get(worker, 0) + value
    return {worker for worker in first.keys() | last.keys() if first.get(worker, 0) != last.get(worker, 0)}


def settled_scrape(
    metrics_url: str, until: Callable[[Scrape], bool] = lambda _: True, report_s: float = 0, timeout_s: float = 60
) -> Scrape:
    """The first scrape with no batch read in part and for which `until` holds; scrapes of one
    server taken this way differ by whole batches only. A page that takes values in at an
    interval (`report_s`, Server.metrics_report_s) is settled once the handler's samples have
    stood for three intervals, so that no value already counted is still on its way; on such a
    page, a batch that has stood in part for STOPPED_WORKER_S is a stopped worker's, and stays as
    it is (it adds nothing to a difference of two scrapes)."""
    deadline = time.monotonic() + timeout_s
    handler_samples, unchanged_since = None, time.monotonic()
    in_part_since: dict[frozenset[tuple[str, str]], float] = {}
    while True:
        scraped, now = scrape(metrics_url), time.monotonic()
        if (
            samples := {key: value for key, value in scraped.items() if key[0].startswith("handler_")}
        ) != handler_samples:
            handler_samples, unchanged_since = samples, now
        in_part_since = {worker: in_part_since.get(worker, now) for worker in batches_read_in_part(scraped)}
        stopped = report_s > 0 and all(now - since >= STOPPED_WORKER_S for since in in_part_since.values())
        if (not in_part_since or stopped) and until(scraped) and now - unchanged_since >= 3 * report_s:
            return scraped
        if now > deadline:
            raise TimeoutError(f"{metrics_url} did not settle within {timeout_s:g} s")
        time.sleep(0.2)
