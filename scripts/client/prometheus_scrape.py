"""A TorchServe /metrics page, read with prometheus_client's own parser, for the benchmark and
the tests: samples by name and labels, and sums over the samples a query names."""

from __future__ import annotations

import requests
from prometheus_client.parser import text_string_to_metric_families

# Samples by (name, labels); Hostname is left out: one server runs on one host.
Scrape = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(metrics_url: str) -> Scrape:
    text = requests.get(metrics_url, timeout=10).text
    return {
        (sample.name, frozenset((k, v) for k, v in sample.labels.items() if k != "Hostname")): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


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
