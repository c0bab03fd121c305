"""Locust users for the benchmark: closed-loop clients that classify real-size JPEGs.

Run by benchmarks/run.py as `locust --headless -u N ...`; configured through the environment:
BENCH_INPUTS (a folder of .jpg), BENCH_MODEL (e.g. resnet50 or resnet50_stock), BENCH_TOKEN,
and the host (REST, OIP) or BENCH_GRPC_TARGET (gRPC).
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

import numpy as np
from locust import FastHttpUser, User, constant, events, task

IMAGES = [path.read_bytes() for path in sorted(Path(os.environ.get("BENCH_INPUTS", ".")).glob("*.jpg"))]
MODEL = os.environ.get("BENCH_MODEL", "resnet50")
TOKEN = os.environ.get("BENCH_TOKEN", "")


class RestUser(FastHttpUser):
    """geventhttpclient, not python-requests: a GPU server needs thousands of requests a second
    from a few load processes. (On 2 cores it made no difference within noise: 1.7-2.2 against
    2.5 ms of client CPU per request at 20 requests a second, locust's start-up included.)"""

    wait_time = constant(0)

    @task
    def classify(self) -> None:
        self.client.post(
            f"/predictions/{MODEL}",
            data=random.choice(IMAGES),
            name="REST predict",
            headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "image/jpeg"},
        )


class OipUser(FastHttpUser):
    """The Open Inference Protocol as Triton's client sends it: one image per request, in the
    binary-data extension, the probabilities answered in binary (POST /v2/models/{m}/infer)."""

    wait_time = constant(0)

    def on_start(self) -> None:
        from tritonclient.http import InferenceServerClient, InferInput

        self.bodies = []
        for image in IMAGES:
            tensor = InferInput("image", [1], "BYTES")
            tensor.set_data_from_numpy(np.array([image], dtype=object))
            self.bodies.append(InferenceServerClient.generate_request_body([tensor]))

    @task
    def classify(self) -> None:
        body, header_length = random.choice(self.bodies)
        self.client.post(
            f"/v2/models/{MODEL}/infer",
            data=body,
            name="OIP infer",
            headers={"Authorization": f"Bearer {TOKEN}", "Inference-Header-Content-Length": str(header_length)},
        )


class GrpcUser(User):
    wait_time = constant(0)

    def on_start(self) -> None:
        import grpc
        import grpc.experimental.gevent as grpc_gevent

        from scripts.client import grpc_stubs

        grpc_stubs.ensure()  # generated at setup; made now if this checkout has none yet
        from scripts.client.torchserve_grpc import inference_pb2, inference_pb2_grpc

        grpc_gevent.init_gevent()
        limit = [("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20)]
        self.channel = grpc.insecure_channel(os.environ["BENCH_GRPC_TARGET"], options=limit)
        self.stub = inference_pb2_grpc.InferenceAPIsServiceStub(self.channel)
        self.request_type = inference_pb2.PredictionsRequest

    def on_stop(self) -> None:
        self.channel.close()

    @task
    def classify(self) -> None:
        image = random.choice(IMAGES)
        started = time.perf_counter()
        exception = None
        try:
            self.stub.Predictions(
                self.request_type(model_name=MODEL, input={"data": image}),
                metadata=(("authorization", f"Bearer {TOKEN}"),),
                timeout=120,
            )
        except Exception as error:  # reported to locust as a failed request
            exception = error
        events.request.fire(
            request_type="gRPC",
            name="gRPC predict",
            response_length=0,
            exception=exception,
            response_time=(time.perf_counter() - started) * 1000,
            context={},
        )
