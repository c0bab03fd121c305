"""The handler's metrics in-process: the lines a worker prints for TorchServe's frontend
([METRICS]name.unit:value|#Dim:value,...), read back and checked against a known batch."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import pytest
import ts

from handler_metrics import BATCH_BUCKETS, BATCH_IMAGES, LATENCY_BUCKETS, STAGE_SECONDS, HandlerMetrics, Histogram
from images import b64, photo_bytes
from scripts.harness.in_process import METRICS_CONFIG, InProcessModel, Request, metrics_cache
from scripts.paths import archive_name
from wire_format import ServedModel

PHOTO = photo_bytes((320, 240))
NOT_AN_IMAGE = b"%PDF-1.4 not a photo"
# The stages of every batch, as docs/metrics.md names them for dashboards and alerts.
STAGES = ("decode_transform", "forward", "postprocess", "handler")
TORCHSERVE_DEFAULT_METRICS = Path(ts.__file__).parent / "configs" / "metrics.yaml"


@dataclass(frozen=True)
class Sample:
    name: str
    labels: dict[str, str]
    value: float


def printed(caplog: pytest.LogCaptureFixture) -> list[Sample]:
    """The metric lines the worker printed, as TorchServe's frontend parses them."""
    samples = []
    for record in caplog.records:
        message = record.getMessage()
        if record.name == "ts.metrics.caching_metric" and message.startswith("[METRICS]"):
            head, dimensions, *_ = message[len("[METRICS]") :].split("|#")
            name_unit, value = head.rsplit(":", 1)
            labels = dict(pair.split(":", 1) for pair in dimensions.split(",") if pair)
            samples.append(Sample(name_unit.rsplit(".", 1)[0], labels, float(value)))
    return samples


def total(samples: list[Sample], name: str, **labels: str) -> float:
    return sum(s.value for s in samples if s.name == name and labels.items() <= s.labels.items())


@pytest.fixture(scope="module")
def archive(model_store: Path) -> Path:
    return model_store / archive_name("2.0")


def test_a_worker_counts_its_start_and_each_batch_by_protocol_outcome_and_stage(
    archive: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO), InProcessModel.from_archive(archive, tmp_path) as model:
        assert total(printed(caplog), "handler_worker_starts_total", ModelName="resnet50", ModelVersion="2.0") == 1
        caplog.clear()
        answers = model.infer(
            [
                Request.raw(PHOTO),  # torchserve, 1 image
                Request.kserve({"instances": [b64(PHOTO)] * 3}),  # kserve_v1, 3 images
                Request.raw(NOT_AN_IMAGE),  # refused
                Request.kserve({"instances": [b64(PHOTO), b64(NOT_AN_IMAGE)]}),  # refused, for its 2nd image
                Request.grpc(
                    {"id": "1", "inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [b64(PHOTO)]}]}
                ),  # open_inference over gRPC
            ]
        )
    samples = printed(caplog)
    assert [answer.status for answer in answers] == [200, 200, 400, 400, 200]
    requests = {
        (s.labels["Protocol"], s.labels["Transport"], s.labels["Outcome"]): s.value
        for s in samples
        if s.name == "handler_requests_total"
    }
    refused_kind = answers[2].body["type"]
    assert requests == {
        ("torchserve", "http", "OK"): 1,
        ("kserve_v1", "http", "OK"): 1,
        ("torchserve", "http", refused_kind): 1,
        ("kserve_v1", "http", refused_kind): 1,
        ("open_inference", "grpc", "OK"): 1,
    }
    assert total(samples, "handler_images_total") == 5
    assert total(samples, "handler_forward_batches_total", Forward="compiled", Device="cpu") == 1
    # The one forward pass ran the 5 good images: every batch bucket from 8 up holds it, 4 does not.
    assert {s.labels["le"]: s.value for s in samples if s.name == "handler_batch_images_bucket"} == {
        repr(float(bound)): 1 for bound in BATCH_BUCKETS if bound >= 5
    } | {"+Inf": 1}
    assert total(samples, "handler_batch_images_sum") == 5 and total(samples, "handler_batch_images_count") == 1
    for stage in STAGES:
        seconds = total(samples, "handler_stage_seconds_sum", Stage=stage)
        buckets = {
            s.labels["le"] for s in samples if s.name == "handler_stage_seconds_bucket" and s.labels["Stage"] == stage
        }
        assert total(samples, "handler_stage_seconds_count", Stage=stage) == 1
        assert buckets == {repr(bound) for bound in LATENCY_BUCKETS if bound >= seconds} | {"+Inf"}, stage
    assert total(samples, "handler_stage_seconds_count", Stage="explain") == 0  # nothing asked to be explained
    stage_time = {stage: total(samples, "handler_stage_seconds_sum", Stage=stage) for stage in STAGES}
    assert stage_time["handler"] >= stage_time["decode_transform"] + stage_time["forward"] + stage_time["postprocess"]
    assert all(
        sample.labels["ModelName"] == "resnet50" and sample.labels["ModelVersion"] == "2.0"
        for sample in samples
        if sample.name.startswith("handler_")
    )
    assert all(math.isfinite(sample.value) and sample.value >= 0 for sample in samples)


def test_a_batch_with_explanations_times_them_as_the_explain_stage(
    model: InProcessModel, caplog: pytest.LogCaptureFixture
) -> None:
    """Grad-CAM has a stage of its own (docs/metrics.md), timed once a batch, apart from the forward."""
    with caplog.at_level(logging.INFO):
        answers = model.infer([Request.raw(PHOTO).explaining(), Request.raw(PHOTO)])
    samples = printed(caplog)
    assert [answer.status for answer in answers] == [200, 200]
    counted = {s.labels["Stage"]: s.value for s in samples if s.name == "handler_stage_seconds_count" and s.value}
    assert counted == dict.fromkeys((*STAGES, "explain"), 1)
    assert total(samples, "handler_images_total") == 2


def test_a_batch_with_nothing_to_classify_times_no_forward_and_no_postprocess(
    model: InProcessModel, caplog: pytest.LogCaptureFixture
) -> None:
    """docs/metrics.md: the forward and postprocess stages are timed in batches that classified something."""
    with caplog.at_level(logging.INFO):
        [answer] = model.infer([Request.raw(NOT_AN_IMAGE)])
    assert answer.status == 400
    counted = {s.labels["Stage"] for s in printed(caplog) if s.name == "handler_stage_seconds_count" and s.value}
    assert counted == {"decode_transform", "handler"}


@pytest.mark.parametrize("image", [PHOTO, NOT_AN_IMAGE], ids=["classified", "refused"])
def test_a_batch_opens_with_its_first_stages_inf_bucket_and_closes_with_the_handler_count(
    model: InProcessModel, caplog: pytest.LogCaptureFixture, image: bytes
) -> None:
    """What lets a scrape tell a batch the frontend has read in part (prometheus_scrape's
    batches_read_in_part): the order of a batch's metric lines."""
    with caplog.at_level(logging.INFO):
        model.infer([Request.raw(image)])
    lines = [sample for sample in printed(caplog) if sample.name.startswith("handler_")]
    first, last = lines[0], lines[-1]
    assert (first.name, first.labels["Stage"], first.labels["le"]) == (
        "handler_stage_seconds_bucket",
        "decode_transform",
        "+Inf",
    )
    assert (last.name, last.labels["Stage"]) == ("handler_stage_seconds_count", "handler")


def test_a_gpu_is_named_without_its_colon(caplog: pytest.LogCaptureFixture) -> None:
    """TorchServe's metric lines put ":" between a dimension's name and its value: "cuda:0" would be cut."""
    metrics = HandlerMetrics(metrics_cache(METRICS_CONFIG), ServedModel("resnet50", "2.0", 1000), "compiled", "cuda:0")
    with caplog.at_level(logging.INFO):
        metrics.forward_pass(1)
    assert total(printed(caplog), "handler_forward_batches_total", Forward="compiled", Device="cuda0") == 1


def test_without_our_metrics_config_the_handler_serves_and_says_its_metrics_are_off(
    archive: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """TorchServe's own metrics config declares none of ours: a server started with it still serves."""
    with (
        caplog.at_level(logging.INFO),
        InProcessModel.from_archive(archive, tmp_path, metrics_config=TORCHSERVE_DEFAULT_METRICS) as model,
    ):
        [answer] = model.infer([Request.raw(PHOTO)])
    assert answer.status == 200
    assert "the handler's metrics are off. Serve with config/metrics.yaml" in caplog.text
    assert not [sample for sample in printed(caplog) if sample.name.startswith("handler_")]


@pytest.mark.parametrize(
    ("histogram", "labels"), [(STAGE_SECONDS, ["resnet50", "2.0", "forward"]), (BATCH_IMAGES, ["resnet50", "2.0"])]
)
def test_a_value_on_a_bound_is_counted_in_that_bucket_and_not_the_one_below(
    histogram: Histogram, labels: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    """Prometheus' `le` means "less than or equal": an observation exactly on a bound belongs to
    that bound's bucket (and every bucket above), and the smallest value above it does not."""
    cache = metrics_cache(METRICS_CONFIG)
    bound = histogram.buckets[2]
    with caplog.at_level(logging.INFO):
        histogram.observe(cache, bound, labels)
        histogram.observe(cache, math.nextafter(bound, math.inf), labels)
    counted: dict[str, float] = {}
    for sample in printed(caplog):
        if sample.name == f"{histogram.name}_bucket":
            counted[sample.labels["le"]] = counted.get(sample.labels["le"], 0) + sample.value
    assert counted == {repr(float(bound)): 1} | {repr(float(b)): 2 for b in histogram.buckets if b > bound} | {
        "+Inf": 2
    }
