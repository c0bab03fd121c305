"""TorchServe's gRPC inference and management APIs, with the same methods as RestClient.

The token travels as call metadata ("authorization: Bearer <key>"), and the channel's message
limits follow the server's max_request_size, so an image REST accepts is accepted here too.
Errors are raised as ApiError with the HTTP status that corresponds to the gRPC code.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import empty_pb2

from model_signature import ERROR, IMAGE, PROBABILITIES
from scripts.archive_contents import identity
from scripts.client import grpc_stubs
from scripts.client.rest_api import QUEUE_FULL_MESSAGE, ApiError, Tokens, explain
from scripts.endpoints import HOST, Server

grpc_stubs.ensure()
from scripts.client.torchserve_grpc import (  # noqa: E402
    inference_pb2,
    inference_pb2_grpc,
    management_pb2,
    management_pb2_grpc,
    open_inference_grpc_pb2,
    open_inference_grpc_pb2_grpc,
)

# The HTTP status each gRPC code stands for (as in grpc-gateway's mapping).
HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}


class GrpcClient:
    def __init__(
        self,
        inference_target: str,
        management_target: str,
        tokens: Tokens,
        max_message_bytes: int,
        timeout: float = 120.0,
        model_store: Path | None = None,
    ) -> None:
        options = [
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
        ]
        self._inference_channel = grpc.insecure_channel(inference_target, options=options)
        self._management_channel = grpc.insecure_channel(management_target, options=options)
        self.inference = inference_pb2_grpc.InferenceAPIsServiceStub(self._inference_channel)
        self.management = management_pb2_grpc.ManagementAPIsServiceStub(self._management_channel)
        # TorchServe's Open Inference Protocol service, on the inference port. Its package is
        # org.pytorch.serve.grpc.openinference, so Triton's and KServe's own stubs cannot call it.
        self.open_inference = open_inference_grpc_pb2_grpc.GRPCInferenceServiceStub(self._inference_channel)
        self.tokens = tokens
        self.timeout = timeout
        self.model_store = model_store

    @classmethod
    def for_server(cls, server: Server, timeout: float = 120.0) -> GrpcClient:
        """A client of that instance: its tokens, and message limits at its max_request_size."""
        return cls(
            f"{HOST}:{server.ports.grpc_inference}",
            f"{HOST}:{server.ports.grpc_management}",
            Tokens.from_key_file(server.key_file),
            server.max_request_size(),
            timeout,
            server.model_store,
        )

    def close(self) -> None:
        self._inference_channel.close()
        self._management_channel.close()

    # Inference API
    def ping(self) -> dict[str, Any]:
        return json.loads(self._call(self.inference.Ping, empty_pb2.Empty(), self.tokens.inference).health)

    def predict(
        self, model: str, image: bytes, version: str | None = None, content_type: str = "application/octet-stream"
    ) -> Any:
        request = inference_pb2.PredictionsRequest(model_name=model, model_version=version or "", input={"data": image})
        answer = json.loads(self._call(self.inference.Predictions, request, self.tokens.inference).prediction)
        # TorchServe's gRPC layer drops the per-request status the handler set, so a rejected
        # request arrives as OK with the handler's error body; restore the error here.
        if isinstance(answer, dict) and {"code", "type", "message"} <= set(answer):
            raise ApiError(int(answer["code"]), f"{answer['type']}: {answer['message']}")
        return answer

    # Open Inference Protocol
    def infer(
        self, model: str, images: list[bytes], version: str | None = None, request_id: str = ""
    ) -> list[list[float]]:
        """ModelInfer: each image's class probabilities (the model's signature: model_signature.py)."""
        tensor = open_inference_grpc_pb2.ModelInferRequest.InferInputTensor(
            name=IMAGE.name,
            datatype=IMAGE.datatype,
            shape=[len(images)],
            contents=open_inference_grpc_pb2.InferTensorContents(bytes_contents=images),
        )
        request = open_inference_grpc_pb2.ModelInferRequest(
            model_name=model, model_version=version or "", id=request_id, inputs=[tensor]
        )
        answer = self._call(self.open_inference.ModelInfer, request, self.tokens.inference)
        outputs = {output.name: output for output in answer.outputs}
        if ERROR.name in outputs:
            # A BYTES element reaches us as the JSON text of the handler's string, quotes and all.
            error = json.loads(json.loads(outputs[ERROR.name].contents.bytes_contents[0]))
            raise ApiError(int(error["code"]), f"{error['type']}: {error['message']}")
        probabilities = outputs[PROBABILITIES.name]
        values, classes = list(probabilities.contents.fp32_contents), probabilities.shape[-1]
        return [values[row : row + classes] for row in range(0, len(values), classes)]

    def model_ready(self, model: str, version: str | None = None) -> bool:
        request = open_inference_grpc_pb2.ModelReadyRequest(name=model, version=version or "")
        return self._call(self.open_inference.ModelReady, request, self.tokens.inference).ready

    # Management API
    def list_models(self) -> dict[str, Any]:
        return self._manage("ListModels", management_pb2.ListModelsRequest(limit=100))

    def describe(self, model: str, version: str | None = None) -> list[dict[str, Any]]:
        return self._manage(
            "DescribeModel", management_pb2.DescribeModelRequest(model_name=model, model_version=version or "")
        )

    def register(self, archive: str, initial_workers: int, synchronous: bool = True) -> dict[str, Any]:
        try:
            return self._manage(
                "RegisterModel",
                management_pb2.RegisterModelRequest(
                    url=archive, initial_workers=initial_workers, synchronous=synchronous
                ),
            )
        except ApiError as error:
            raise self._explained(error, lambda: self._why_register_failed(archive)) from None

    def set_default(self, model: str, version: str) -> dict[str, Any]:
        return self._manage("SetDefault", management_pb2.SetDefaultRequest(model_name=model, model_version=version))

    def scale(self, model: str, version: str, min_workers: int, max_workers: int) -> dict[str, Any]:
        return self._manage(
            "ScaleWorker",
            management_pb2.ScaleWorkerRequest(
                model_name=model,
                model_version=version,
                min_worker=min_workers,
                max_worker=max_workers,
                synchronous=True,
            ),
        )

    def unregister(self, model: str, version: str) -> dict[str, Any]:
        try:
            return self._manage(
                "UnregisterModel", management_pb2.UnregisterModelRequest(model_name=model, model_version=version)
            )
        except ApiError as error:
            raise self._explained(error, lambda: self._why_unregister_failed(model, version)) from None

    # TorchServe 0.12's gRPC management answers some refusals with UNKNOWN and no message (REST
    # says 409 or 403). We find the reason with read-only calls rather than leave users guessing.
    @staticmethod
    def _explained(error: ApiError, diagnose: Callable[[], ApiError | None]) -> ApiError:
        if error.message.strip() not in ("", "UNKNOWN:"):
            return error
        return diagnose() or error

    def _why_register_failed(self, archive: str) -> ApiError | None:
        if self.model_store is None or not (self.model_store / archive).is_file():
            return None
        model, version = identity(self.model_store / archive)
        try:
            registered = {entry["modelVersion"] for entry in self.describe(model, "all")}
        except ApiError:
            return None
        if version in registered:
            return ApiError(409, f"Model version {version} is already registered for model {model}")
        return None

    def _why_unregister_failed(self, model: str, version: str) -> ApiError | None:
        try:
            default = self.describe(model)[0]["modelVersion"]
            versions = self.describe(model, "all")
        except ApiError:
            return None
        if default == version and len(versions) > 1:
            return ApiError(403, f"Cannot remove default version for model {model}: set another default first")
        return None

    def _manage(self, method: str, request: Any) -> Any:
        message = self._call(getattr(self.management, method), request, self.tokens.management).msg
        try:
            return json.loads(message)
        except json.JSONDecodeError:
            return {"status": message}

    def _call(self, method: Any, request: Any, token: str) -> Any:
        try:
            return method(request, metadata=(("authorization", f"Bearer {token}"),), timeout=self.timeout)
        except grpc.RpcError as error:
            code = error.code()
            if code == grpc.StatusCode.UNAVAILABLE and "connect" in (error.details() or "").lower():
                raise ApiError(0, "cannot reach TorchServe's gRPC API: is it running? (`make serve`)") from None
            details = (error.details() or "").split("\n")[0]  # drop the Java exception class line
            status = HTTP_STATUS.get(code, 500)
            if code == grpc.StatusCode.INTERNAL:  # TorchServe's gRPC inference says INTERNAL for these
                if "does not exist" in details or "not found" in details.lower():
                    status = 404
                elif QUEUE_FULL_MESSAGE in details:
                    status = 503
            raise ApiError(status, f"{code.name}: {explain(details)}") from None
