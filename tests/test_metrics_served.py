"""The handler's metrics on a real TorchServe's /metrics, read with prometheus_client's own
parser: a known mix of good and bad requests over every protocol and transport, counted
exactly by version, protocol, transport and outcome, with histograms that add up."""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
import tritonclient.http as triton

import oip
from conftest import inference_auth, post_inference
from images import b64, photo_bytes
from scripts.client.grpc_client import GrpcClient
from scripts.client.prometheus_scrape import Scrape, increase, settled_scrape
from scripts.client.rest_api import ApiError, RestClient
from scripts.endpoints import Server
from scripts.paths import MODEL_NAME

PHOTO = photo_bytes((320, 240))
NOT_AN_IMAGE = b"%PDF-1.4 not a photo"
Key = tuple[str, str, str, str]  # version, protocol, transport, outcome
Counted = tuple[Counter[Key], Scrape, Scrape]  # what the traffic sent; /metrics before it and after


def traffic(server: Server) -> Counter[Key]:
    """One request after another (each its own batch), good and bad, over every protocol and
    transport; returns what each should count as, read from each answer."""
    sent: Counter[Key] = Counter()
    rest, grpc = RestClient.for_server(server), GrpcClient.for_server(server)
    triton_client = triton.InferenceServerClient(f"127.0.0.1:{server.ports.inference}", network_timeout=60)
    try:

        def call(version: str, protocol: str, transport: str, send: Callable[[], object]) -> None:
            try:
                send()
                sent[version, protocol, transport, "OK"] += 1
            except ApiError as error:
                sent[version, protocol, transport, error.message.split(":")[0]] += 1

        def posted(path: str, **kwargs: Any) -> Callable[[], object]:
            def send() -> object:
                response = post_inference(server, path, **kwargs)
                if response.status_code != 200:  # KServe v1 refuses with {"error": "<Kind>: ..."}
                    raise ApiError(response.status_code, response.json()["error"])
                return response

            return send

        for image in (PHOTO, PHOTO, NOT_AN_IMAGE):
            call(
                "2.0",
                "torchserve",
                "http",
                functools.partial(rest.predict, MODEL_NAME, image, content_type="image/jpeg"),
            )
        call("1.0", "torchserve", "http", lambda: rest.predict(MODEL_NAME, PHOTO, "1.0", "image/jpeg"))
        call(
            "2.0", "kserve_v1", "http", posted(f"v1/models/{MODEL_NAME}:predict", json={"instances": [b64(PHOTO)] * 3})
        )
        call(
            "2.0",
            "kserve_v1",
            "http",
            posted(f"v1/models/{MODEL_NAME}:predict", json={"instances": [b64(NOT_AN_IMAGE)]}),
        )
        call(
            "2.0",
            "open_inference",
            "http",
            lambda: triton_client.infer(MODEL_NAME, [oip.image_input([PHOTO, PHOTO])], headers=inference_auth(server)),
        )
        for image in (PHOTO, NOT_AN_IMAGE):
            call("2.0", "torchserve", "grpc", functools.partial(grpc.predict, MODEL_NAME, image))
        call("1.0", "open_inference", "grpc", lambda: grpc.infer(MODEL_NAME, [PHOTO], "1.0"))
        call("2.0", "open_inference", "grpc", lambda: grpc.infer(MODEL_NAME, [NOT_AN_IMAGE]))
    finally:
        triton_client.close()
        grpc.close()
    return sent


IMAGES_PER_GOOD_REQUEST = {
    ("torchserve", "http"): 1,
    ("kserve_v1", "http"): 3,
    ("open_inference", "http"): 2,
    ("torchserve", "grpc"): 1,
    ("open_inference", "grpc"): 1,
}


@pytest.fixture(scope="module")
def counted(server: Server) -> Counted:
    """The traffic, and /metrics before and after it, each scraped when no batch is read in part
    (the frontend reads a worker's metric lines on its own thread, after the answer)."""
    before = settled_scrape(server.metrics_url, report_s=server.metrics_report_s)
    sent = traffic(server)
    batches = sum(sent.values())  # one request after another: a batch each
    after = settled_scrape(
        server.metrics_url,
        report_s=server.metrics_report_s,
        until=lambda scraped: increase(before, scraped, "handler_stage_seconds_count", Stage="handler") >= batches,
    )
    return sent, before, after


def test_every_request_is_counted_by_version_protocol_transport_and_outcome(counted: Counted) -> None:
    sent, before, after = counted
    assert {outcome for *_, outcome in sent} > {"OK"}, "the traffic must hold refusals too"
    for (version, protocol, transport, outcome), number in sent.items():
        assert (
            increase(
                before,
                after,
                "handler_requests_total",
                ModelVersion=version,
                Protocol=protocol,
                Transport=transport,
                Outcome=outcome,
            )
            == number
        ), (version, protocol, transport, outcome)
    assert increase(before, after, "handler_requests_total") == sum(sent.values())


def test_images_forward_passes_and_batch_fill_add_up(counted: Counted) -> None:
    sent, before, after = counted
    good = {key: number for key, number in sent.items() if key[3] == "OK"}
    for version in ("1.0", "2.0"):
        mine = {key: number for key, number in good.items() if key[0] == version}
        images = sum(number * IMAGES_PER_GOOD_REQUEST[key[1], key[2]] for key, number in mine.items())
        assert increase(before, after, "handler_images_total", ModelVersion=version) == images
        assert increase(before, after, "handler_batch_images_sum", ModelVersion=version) == images
        assert increase(before, after, "handler_batch_images_count", ModelVersion=version) == sum(mine.values())
        assert increase(
            before, after, "handler_forward_batches_total", ModelVersion=version, Forward="compiled", Device="cpu"
        ) == sum(mine.values())


@pytest.mark.parametrize("stage", ["decode_transform", "forward", "postprocess", "handler"])
def test_stage_histograms_are_cumulative_and_add_up(counted: Counted, stage: str) -> None:
    """Buckets grow with `le`, +Inf holds every observation, and the sum is plausible."""
    sent, before, after = counted
    batches = {"handler": sum(sent.values()), "decode_transform": sum(sent.values())}.get(
        stage, sum(number for key, number in sent.items() if key[3] == "OK")
    )
    bounds = sorted(
        {dict(labels)["le"] for name, labels in after if name.startswith("handler_stage_seconds_bucket")}, key=float
    )
    buckets = [increase(before, after, "handler_stage_seconds_bucket", Stage=stage, le=bound) for bound in bounds]
    assert bounds[0] == "0.001" and bounds[-1] == "+Inf"
    assert buckets == sorted(buckets) and buckets[-1] == batches
    assert increase(before, after, "handler_stage_seconds_count", Stage=stage) == batches
    assert 0 < increase(before, after, "handler_stage_seconds_sum", Stage=stage) < 10 * batches


def test_the_handler_counts_open_inference_grpc_which_the_frontend_does_not(counted: Counted) -> None:
    """Why the handler counts: TorchServe 0.12's request counter misses OIP gRPC altogether."""
    sent, before, after = counted
    oip_grpc = sum(number for key, number in sent.items() if key[1:3] == ("open_inference", "grpc"))
    assert (
        oip_grpc
        and increase(before, after, "handler_requests_total", Protocol="open_inference", Transport="grpc") == oip_grpc
    )
    assert (
        increase(before, after, "ts_inference_requests_total", model_name=MODEL_NAME) == sum(sent.values()) - oip_grpc
    )
