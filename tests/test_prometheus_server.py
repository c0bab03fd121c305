"""A real Prometheus server (Debian's `prometheus` package) scrapes the test TorchServe on
loopback with the rules of config/prometheus/rules.yml loaded, and computes the handler's p99
from our histogram with histogram_quantile. Without the binary this skips and says so."""

from __future__ import annotations

import bisect
import math
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from typing import cast

import pytest
import requests
import yaml

from handler_metrics import LATENCY_BUCKETS
from images import photo_bytes
from scripts.client.rest_api import RestClient
from scripts.endpoints import HOST, Ports, Server
from scripts.paths import CONFIG_DIR, MODEL_NAME

PROMETHEUS = shutil.which("prometheus")
BATCHES = 'handler_stage_seconds_bucket{Stage="handler"}'
COUNTS = 'handler_stage_seconds_count{Stage="handler"}'
RECORDED_P99 = 'resnet50:handler_stage_seconds:p99_5m{Stage="handler", ModelVersion="2.0"}'
RAY_RELABELING = CONFIG_DIR / "prometheus" / "ray-relabel.yml"

pytestmark = pytest.mark.skipif(
    PROMETHEUS is None,
    reason="the prometheus server is not installed (apt-get install prometheus): no real "
    "Prometheus computed a p99 from the handler's histogram",
)


def query(prometheus: str, expression: str, at: float | None = None) -> list[float]:
    """The values of an instant query (now, or at a time), one per series."""
    return [value for _, value in labelled(prometheus, expression, at)]


def labelled(prometheus: str, expression: str, at: float | None = None) -> list[tuple[dict[str, str], float]]:
    """Each series of an instant query: its labels and its value."""
    parameters = {"query": expression, **({"time": str(at)} if at is not None else {})}
    answer = requests.get(f"{prometheus}/api/v1/query", params=parameters, timeout=10).json()
    assert answer["status"] == "success", answer
    return [(series["metric"], float(series["value"][1])) for series in answer["data"]["result"]]


def wait_for(
    prometheus: str, expression: str, ready: Callable[[list[float]], bool], timeout: float = 30
) -> list[float]:
    deadline = time.monotonic() + timeout
    while not ready(values := query(prometheus, expression)):
        assert time.monotonic() < deadline, f"{expression} gave {values} after {timeout:g} s"
        time.sleep(0.5)
    return values


@pytest.fixture(scope="module")
def prometheus(server: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Prometheus on a free loopback port, scraping the server's metrics port every second."""
    folder = tmp_path_factory.mktemp("prometheus")
    config = folder / "prometheus.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": [str(CONFIG_DIR / "prometheus" / "rules.yml")],
                "scrape_configs": [
                    {
                        "job_name": "torchserve",
                        "static_configs": [{"targets": [f"{HOST}:{server.ports.metrics}"]}],
                        # Ray's names back to TorchServe's; nothing on TorchServe's page matches them.
                        "metric_relabel_configs": yaml.safe_load(RAY_RELABELING.read_text()),
                    }
                ],
            }
        )
    )
    address = f"{HOST}:{Ports.free().inference}"
    with open(folder / "prometheus.log", "wb") as log:
        process = subprocess.Popen(
            [
                cast(str, PROMETHEUS),  # the module is skipped when prometheus is not installed (None)
                f"--config.file={config}",
                f"--storage.tsdb.path={folder / 'data'}",
                f"--web.listen-address={address}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://{address}"
    try:
        deadline = time.monotonic() + 30
        while not _ready(url):
            assert process.poll() is None and time.monotonic() < deadline, (folder / "prometheus.log").read_text()
            time.sleep(0.3)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def _ready(url: str) -> bool:
    try:
        return requests.get(f"{url}/-/ready", timeout=2).status_code == 200
    except requests.ConnectionError:
        return False


def test_prometheus_computes_a_p99_within_the_bucket_of_the_slowest_request(server: Server, prometheus: str) -> None:
    """The handler's time for a batch is at most the client's time for its request, so the p99
    of this test's batches lies below the upper bound of the bucket that holds the slowest client
    latency. Only this test's batches: the buckets now minus the buckets as they were before it
    (the `@` of the sample before), never a rate(), whose extrapolation differs between buckets
    that earlier traffic filled unevenly."""
    wait_for(prometheus, 'up{job="torchserve"}', lambda values: values == [1.0])
    seen = sum(query(prometheus, COUNTS))  # none before a first batch
    before = query(prometheus, f"max(timestamp({COUNTS}))")
    client, latencies = RestClient.for_server(server), []
    for _ in range(12):
        started = time.perf_counter()
        client.predict(MODEL_NAME, photo_bytes((640, 480)), content_type="image/jpeg")
        latencies.append(time.perf_counter() - started)
    wait_for(prometheus, COUNTS, lambda values: sum(values) >= seen + 12)
    added = f"{BATCHES} - {BATCHES} @ {before[0]}" if before else BATCHES
    [p99] = query(prometheus, f"histogram_quantile(0.99, sum by (le) ({added}))")
    ceiling = [*LATENCY_BUCKETS, math.inf][bisect.bisect_left(LATENCY_BUCKETS, max(latencies))]
    assert LATENCY_BUCKETS[0] <= p99 <= ceiling, (p99, sorted(latencies))


def test_the_recorded_p99_is_the_rules_expression_for_each_version(server: Server, prometheus: str) -> None:
    """rules.yml's recording rule yields a series for the default version's whole handler, with the
    value its expression gives at the instant it was recorded."""
    seen = sum(query(prometheus, COUNTS))
    RestClient.for_server(server).predict(MODEL_NAME, photo_bytes((640, 480)), content_type="image/jpeg")
    wait_for(prometheus, COUNTS, lambda values: sum(values) > seen)
    [scraped] = query(prometheus, f"max(timestamp({COUNTS}))")
    # A recording two evaluations after the scrape that holds the batch: every sample it read is
    # stored by then, so the direct query at its instant reads the same ones.
    [at] = wait_for(
        prometheus, f"timestamp({RECORDED_P99})", lambda values: len(values) == 1 and values[0] > scraped + 2
    )
    [recorded] = query(prometheus, RECORDED_P99, at)
    assert not math.isnan(recorded)
    rules = yaml.safe_load((CONFIG_DIR / "prometheus" / "rules.yml").read_text())
    name = RECORDED_P99.split("{", maxsplit=1)[0]
    [expression] = [rule["expr"] for group in rules["groups"] for rule in group["rules"] if rule.get("record") == name]
    [direct] = [
        value
        for labels, value in labelled(prometheus, expression, at)
        if labels.get("Stage") == "handler" and labels.get("ModelVersion") == "2.0"
    ]
    assert LATENCY_BUCKETS[0] <= recorded <= LATENCY_BUCKETS[-1]
    assert recorded == pytest.approx(direct)
