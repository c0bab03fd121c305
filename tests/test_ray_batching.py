"""The Ray Serve engine's batches (scripts/ray_serve/batching.py) are formed as a TorchServe
worker forms them: when the model is free, from every request waiting, up to the batch size,
waiting at most the max delay for more; each request gets its own answer."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

import promised
from scripts.harness.in_process import Request, Response
from scripts.paths import SERVED_VERSIONS, archive_name
from scripts.ray_serve.batching import Batcher, Batching


class Model:
    """Answers each request with its body; holds its first batch until `release` is set."""

    def __init__(self) -> None:
        self.batches: list[int] = []
        self.release = threading.Event()

    def infer(self, requests: list[Request]) -> list[Response]:
        self.batches.append(len(requests))
        if len(self.batches) == 1:
            self.release.wait(timeout=60)
        if any(request.parameters[0][2] == b"fail" for request in requests):
            raise RuntimeError("a bug in the handler")
        return [Response(200, request.parameters[0][2], {}) for request in requests]


async def answers(batcher: Batcher, model: Model, first: bytes, then: list[bytes]) -> list[object]:
    """`first` alone, then `then` one by one, further apart than the max delay, while the model
    runs it (a batcher that formed the next batch meanwhile would make each its own); the
    answers, or the errors, in order."""
    running = asyncio.ensure_future(batcher.submit(Request.raw(first)))
    while not model.batches:  # the first batch has reached the model
        await asyncio.sleep(0.01)
    rest = []
    for body in then:
        rest.append(asyncio.ensure_future(batcher.submit(Request.raw(body))))
        await asyncio.sleep(3 * batcher.batching.max_delay_s)
    model.release.set()
    outcomes = await asyncio.gather(running, *rest, return_exceptions=True)
    return [outcome.body if isinstance(outcome, Response) else repr(outcome) for outcome in outcomes]


def test_a_batch_takes_every_request_waiting_when_the_model_is_free() -> None:
    model = Model()
    batcher = Batcher(model.infer, Batching(size=8, max_delay_s=0.01))
    bodies = [f"image {i}".encode() for i in range(6)]
    assert asyncio.run(answers(batcher, model, b"first", bodies)) == [b"first", *bodies]
    assert model.batches == [1, 6]


def test_a_batch_holds_at_most_the_batch_size() -> None:
    model = Model()
    batcher = Batcher(model.infer, Batching(size=3, max_delay_s=0.01))
    bodies = [f"image {i}".encode() for i in range(7)]
    assert asyncio.run(answers(batcher, model, b"first", bodies)) == [b"first", *bodies]
    assert model.batches == [1, 3, 3, 1]


def test_a_request_that_comes_within_the_max_delay_joins_the_batch() -> None:
    """The model is free: the first request waits up to the max delay (long here, so that a busy
    machine cannot make the second miss it) for the second."""
    model = Model()
    model.release.set()
    batcher = Batcher(model.infer, Batching(size=8, max_delay_s=5))

    async def two() -> list[Response]:
        first = asyncio.ensure_future(batcher.submit(Request.raw(b"a")))
        await asyncio.sleep(0.05)
        return list(await asyncio.gather(first, batcher.submit(Request.raw(b"b"))))

    assert [response.body for response in asyncio.run(two())] == [b"a", b"b"]
    assert model.batches == [2]


@pytest.mark.parametrize("max_delay_s", [0.0, 0.2])
def test_a_lone_request_waits_the_max_delay_for_others_then_runs_alone(max_delay_s: float) -> None:
    model = Model()
    model.release.set()
    batcher = Batcher(model.infer, Batching(size=8, max_delay_s=max_delay_s))

    async def lone() -> tuple[Response, float]:
        loop = asyncio.get_running_loop()
        started = loop.time()
        response = await batcher.submit(Request.raw(b"alone"))
        return response, loop.time() - started

    response, waited = asyncio.run(lone())
    assert response.body == b"alone" and model.batches == [1]
    assert max_delay_s * 0.9 <= waited < max_delay_s + 30  # the event loop's clock may fire a timer a tick early


def test_a_failing_batch_fails_each_of_its_requests_and_the_next_batch_runs() -> None:
    model = Model()
    batcher = Batcher(model.infer, Batching(size=8, max_delay_s=0.01))

    async def run() -> list[object]:
        failed = await answers(batcher, model, b"first", [b"fail", b"other"])
        return [*failed, (await batcher.submit(Request.raw(b"after"))).body]

    error = repr(RuntimeError("a bug in the handler"))
    assert asyncio.run(run()) == [b"first", error, error, b"after"]
    assert model.batches == [1, 2, 1]


@pytest.mark.parametrize("version", SERVED_VERSIONS)
def test_an_archive_batches_and_queues_as_docs_serving_promises(model_store: Path, version: str) -> None:
    """Its model-config.yaml's batchSize and maxBatchDelay, and TorchServe's default queue, as
    it sets no jobQueueSize: the engine's replica batches and queues by these."""
    expected = Batching(promised.BATCH_SIZE, promised.MAX_BATCH_DELAY_MS / 1000, promised.JOB_QUEUE_SIZE)
    assert Batching.of(model_store / archive_name(version)) == expected
