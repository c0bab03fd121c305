"""Batches formed as a TorchServe worker forms them: when the model is free, from the requests
waiting, up to the archive's batchSize, waiting at most its maxBatchDelay for more.

Not Serve's `@serve.batch`: it forms the next batch while the current one runs, from the
requests that reach it within maxBatchDelay of the first, and queues that batch behind the
running one, so under load its batches ran far from full (docs/engines.md#measured-side-by-side)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from scripts.archive_contents import model_config
from scripts.harness.in_process import Request, Response

# TorchServe's job_queue_size when neither config.properties nor the archive sets one (ours do not).
TORCHSERVE_JOB_QUEUE_SIZE = 100


@dataclass(frozen=True)
class Batching:
    """An archive's batching, and the queue in front of it, from the model-config.yaml it carries."""

    size: int
    max_delay_s: float
    queue_size: int = TORCHSERVE_JOB_QUEUE_SIZE

    @classmethod
    def of(cls, archive: Path) -> Batching:
        settings = model_config(archive)
        queue_size = int(settings.get("jobQueueSize", TORCHSERVE_JOB_QUEUE_SIZE))
        return cls(int(settings["batchSize"]), int(settings["maxBatchDelay"]) / 1000, queue_size)


Waiting = tuple[Request, "asyncio.Future[Response]"]


class Batcher:
    """Runs `infer` over batches of the requests submitted, one batch at a time, off the event
    loop (the forward pass holds the GIL only in bursts: health checks still answer), always on
    the same thread, as a TorchServe worker does: torch's OpenMP pool belongs to the thread that
    calls it, and a new caller each batch would start another."""

    def __init__(self, infer: Callable[[list[Request]], list[Response]], batching: Batching) -> None:
        self.infer = infer
        self.batching = batching
        self.thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="batches")
        self.waiting: asyncio.Queue[Waiting] | None = None  # made on the replica's event loop, at the first request

    async def submit(self, request: Request) -> Response:
        if self.waiting is None:
            self.waiting = asyncio.Queue()
            self.running = asyncio.create_task(self._run(self.waiting))
        answer: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        self.waiting.put_nowait((request, answer))
        return await answer

    async def _run(self, waiting: asyncio.Queue[Waiting]) -> None:
        while True:
            batch = [item for item in await self._next_batch(waiting) if not item[1].done()]  # done: cancelled
            if not batch:
                continue
            try:
                requests = [request for request, _ in batch]
                responses = await asyncio.get_running_loop().run_in_executor(self.thread, self.infer, requests)
            except Exception as error:  # a bug in the handler: every request of the batch gets it
                for _, answer in batch:
                    if not answer.done():
                        answer.set_exception(error)
                continue
            for (_, answer), response in zip(batch, responses, strict=True):
                if not answer.done():
                    answer.set_result(response)

    async def _next_batch(self, waiting: asyncio.Queue[Waiting]) -> list[Waiting]:
        """The first request to come, then every one waiting, up to the batch size, and for at
        most the max delay after the first those that come meanwhile."""
        loop = asyncio.get_running_loop()
        batch = [await waiting.get()]
        deadline = loop.time() + self.batching.max_delay_s
        while len(batch) < self.batching.size:
            if not waiting.empty():
                batch.append(waiting.get_nowait())
                continue
            try:
                batch.append(await asyncio.wait_for(waiting.get(), deadline - loop.time()))
            except TimeoutError:
                break
        return batch
