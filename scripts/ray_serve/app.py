"""The Ray Serve applications (scripts/serve_config.py puts them together): one per served version, whose
replicas each load that version's archive as a TorchServe worker does (scripts/harness/in_process.py,
the same handler code), batched as the archive's model-config.yaml asks; and a frontend that speaks
TorchServe's routes, gRPC calls and tokens (http_edge.py, grpc_edge.py) and sends each request to
its version."""

from __future__ import annotations

import hmac
import shutil
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, cast

import grpc
from google.protobuf.message import Message
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.deployment import Application, Deployment
from ray.serve.exceptions import BackPressureError
from ray.serve.grpc_util import RayServegRPCContext
from ray.serve.handle import DeploymentHandle
from starlette.requests import Request as HttpRequest
from starlette.responses import Response as HttpResponse

from scripts.client.rest_api import Tokens
from scripts.harness.in_process import InProcessModel, Request, Response
from scripts.ray_serve import grpc_edge, oip_status
from scripts.ray_serve.batching import Batcher, Batching
from scripts.ray_serve.http_edge import (
    NO_SUCH_RESOURCE,
    TOKEN_REFUSED,
    WORKER_DIED,
    Headers,
    Refusal,
    Route,
    answer_body,
    bearer_token,
    frontend_json,
    queue_full,
    route,
    wire_request,
)
from scripts.ray_serve.replica_metrics import RayMetricsCache
from scripts.serve_config import version_name


class VersionReplica:
    """One version's handler, fed batches as a TorchServe worker is (batching.py)."""

    def __init__(self, archive: str, batching: Batching, unpack_under: str | None) -> None:
        # Its own copy of the archive unpacked (about 200 MB), removed when the replica ends; under
        # the engine's folder, which its stop removes, should the replica be killed first.
        self.unpacked = Path(tempfile.mkdtemp(prefix="resnet50-replica-", dir=unpack_under))
        self.model = InProcessModel.from_archive(Path(archive), self.unpacked, metrics_kind=RayMetricsCache)
        self.batcher = Batcher(self.model.infer, batching)

    async def __call__(self, request: Request) -> Response:
        return await self.batcher.submit(request)

    def __del__(self) -> None:
        self.model.close()
        shutil.rmtree(self.unpacked, ignore_errors=True)


class Frontend:
    """TorchServe's inference API on Ray Serve's HTTP and gRPC proxies: its token, its routes and
    calls, its refusals."""

    def __init__(self, model: str, key_file: str, max_request_size: int) -> None:
        self.model = model
        self.inference_key = Tokens.from_key_file(Path(key_file)).inference
        self.max_request_size = max_request_size
        self.versions: dict[str, DeploymentHandle[Any]] = {}
        self.default = ""

    def reconfigure(self, routing: dict[str, Any]) -> None:
        """The versions to route to and the default (scripts/serve_config.py): Serve calls this with the
        deployment's user_config as the replica starts and on each change, with no restart."""
        self.versions = {
            version: serve.get_deployment_handle(
                version_name(self.model, version), app_name=version_name(self.model, version)
            )
            for version in routing["versions"]
        }
        self.default = routing["default"]

    async def __call__(self, http: HttpRequest) -> HttpResponse:
        """TorchServe's order: the size limit (its HTTP layer, no body), the token, then the route."""
        body = await self._body(http)
        if body is None:
            return HttpResponse(status_code=413)
        headers = http.headers.items()
        destination = self._destination(http.url.path, headers)
        if isinstance(destination, HttpResponse):
            return destination
        found, version = destination
        answer = await self._answer(version, wire_request(found, headers, body), found.version)
        if isinstance(answer, Refusal):
            return _refused(answer)
        return HttpResponse(answer_body(answer), status_code=answer.status, headers=answer.headers)

    async def _answer(self, version: str, request: Request, named_version: str | None) -> Response | Refusal:
        """The version's answer, or TorchServe's for a worker that died holding the request or
        for a full queue (the archive's jobQueueSize, as the version's max_queued_requests)."""
        try:
            answer: Response = await self.versions[version].remote(request)
        except RayActorError:  # the replica died; Serve starts another
            return WORKER_DIED
        except BackPressureError:
            return queue_full(self.model, named_version)
        return answer

    def _destination(self, path: str, headers: Headers) -> tuple[Route, str] | HttpResponse:
        """The route and version a request goes to, or the frontend's own answer."""
        if not self._authorized(headers):
            return _refused(Refusal(400, "InvalidKeyException", TOKEN_REFUSED))
        status = self._status(path)
        if status is not None:
            return status
        found = route(path)
        if found is None:
            return _refused(Refusal(404, "ResourceNotFoundException", NO_SUCH_RESOURCE))
        version = self._version(found.model, found.version)
        return _refused(version) if isinstance(version, Refusal) else (found, version)

    def _status(self, path: str) -> HttpResponse | None:
        """The answer to /ping or to an Open Inference Protocol status route (oip_status.py); None
        for any other path."""
        if path == "/ping":
            return _json({"status": "Healthy"})
        if (server_status := oip_status.server_answers().get(path)) is not None:
            return _json(server_status)
        query = oip_status.model_query(path)
        if query is None:
            return None
        version = self._version(query.model, query.version)
        if isinstance(version, Refusal):
            return _refused(version)
        if query.ready:
            return _json(oip_status.model_ready(query.model, version))
        return _json(oip_status.model_metadata(query.model, sorted(self.versions)))

    def _authorized(self, headers: Headers) -> bool:
        """Whether the request carries the inference token, as `Authorization: Bearer TOKEN`."""
        token = bearer_token(headers)
        return token is not None and hmac.compare_digest(token.encode(), self.inference_key.encode())

    def _version(self, model: str, version: str | None) -> str | Refusal:
        """The served version a request names (None: the default), or TorchServe's refusal of it."""
        if model != self.model:
            return Refusal(404, "ModelNotFoundException", f"Model not found: {model}")
        chosen = version or self.default
        if chosen not in self.versions:
            return Refusal(
                404, "ModelVersionNotFoundException", f"Model version: {chosen} does not exist for model: {model}"
            )
        return chosen

    async def _body(self, http: HttpRequest) -> bytes | None:
        """The request's body, or None once it passes max_request_size (read no further than that)."""
        declared = http.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_request_size:
            return None
        body = bytearray()
        async for chunk in http.stream():
            body += chunk
            if len(body) > self.max_request_size:
                return None
        return bytes(body)

    # gRPC on the inference port (grpc_edge.py): Serve's gRPC proxy calls the method of each call's
    # name, so these carry the protocols' names. Both copies of the Open Inference Protocol's
    # service (TorchServe's package and the standard one) call the same methods.

    async def Ping(self, call: Message, grpc_context: RayServegRPCContext) -> Message:  # noqa: N802
        return await self._over_grpc(call, grpc_context, self._health)

    async def Predictions(self, call: Message, grpc_context: RayServegRPCContext) -> Message:  # noqa: N802
        return await self._over_grpc(call, grpc_context, self._predictions)

    async def ServerLive(self, call: Message, grpc_context: RayServegRPCContext) -> Message:  # noqa: N802
        return await self._over_grpc(call, grpc_context, self._server_status(oip_status.SERVER_LIVE))

    async def ServerReady(self, call: Message, grpc_context: RayServegRPCContext) -> Message:  # noqa: N802
        return await self._over_grpc(call, grpc_context, self._server_status(oip_status.SERVER_READY))

    async def ServerMetadata(self, call: Message, grpc_context: RayServegRPCContext) -> Message:  # noqa: N802
        return await self._over_grpc(call, grpc_context, self._server_status(oip_status.SERVER_METADATA))

    async def ModelReady(self, call: Message, grpc_context: RayServegRPCContext) -> Message:  # noqa: N802
        return await self._over_grpc(call, grpc_context, self._model_ready)

    async def ModelMetadata(self, call: Message, grpc_context: RayServegRPCContext) -> Message:  # noqa: N802
        return await self._over_grpc(call, grpc_context, self._model_metadata)

    async def ModelInfer(self, call: Message, grpc_context: RayServegRPCContext) -> Message:  # noqa: N802
        return await self._over_grpc(call, grpc_context, self._model_infer)

    async def _over_grpc(
        self, call: Message, context: RayServegRPCContext, answer: Callable[[Any], Awaitable[Message]]
    ) -> Message:
        """TorchServe's order: the token (its interceptor), then the method. A refusal is the call's
        status and details, which Serve's proxy sends instead of the empty reply."""
        try:
            if not self._authorized(context.invocation_metadata()):
                raise grpc_edge.token_refused()
            return await answer(call)
        except grpc_edge.RefusedCall as refusal:
            context.set_code(refusal.code)
            context.set_details(refusal.details)
            return grpc_edge.reply_type(call)()

    async def _health(self, _: Message) -> Message:
        return grpc_edge.health()

    async def _predictions(self, call: Any) -> Message:
        version = self._grpc_version(call.model_name, call.model_version, "model_name", grpc.StatusCode.INTERNAL)
        answer = await self._grpc_answer(version, grpc_edge.predictions_request(call), call.model_version)
        return grpc_edge.prediction(answer)

    async def _model_infer(self, call: Any) -> Message:
        version = self._grpc_version(call.model_name, call.model_version, "model_name", grpc.StatusCode.INTERNAL)
        answer = await self._grpc_answer(version, grpc_edge.model_infer_request(call), call.model_version)
        return grpc_edge.model_infer_reply(answer, call)

    async def _grpc_answer(self, version: str, request: Request, named_version: str) -> Response:
        """The version's answer; the frontend's refusal is the call's status."""
        answer = await self._answer(version, request, named_version or None)
        if isinstance(answer, Refusal):
            raise grpc_edge.refusal_of(answer)
        return answer

    def _server_status(self, path: str) -> Callable[[Message], Awaitable[Message]]:
        async def answer(call: Message) -> Message:
            return grpc_edge.from_document(oip_status.server_answers()[path], grpc_edge.reply_type(call))

        return answer

    async def _model_ready(self, call: Any) -> Message:
        version = self._grpc_version(call.name, call.version, "name", grpc.StatusCode.NOT_FOUND)
        return grpc_edge.from_document(oip_status.model_ready(call.name, version), grpc_edge.reply_type(call))

    async def _model_metadata(self, call: Any) -> Message:
        self._grpc_version(call.name, call.version, "model_name", grpc.StatusCode.NOT_FOUND)
        metadata = oip_status.model_metadata(call.name, sorted(self.versions))
        return grpc_edge.from_document(metadata, grpc_edge.reply_type(call))

    def _grpc_version(self, model: str, version: str, parameter: str, unknown: grpc.StatusCode) -> str:
        """The served version a call names, or TorchServe's refusal: of an empty model name, and of
        an unknown model or version with the status TorchServe gives it on that method."""
        if not model:
            raise grpc_edge.parameter_required(parameter)
        chosen = self._version(model, version or None)
        if isinstance(chosen, Refusal):
            raise grpc_edge.model_refusal(chosen, unknown)
        return chosen


def _refused(refusal: Refusal) -> HttpResponse:
    return _json(refusal.document(), refusal.status)


def _json(document: Any, status: int = 200) -> HttpResponse:
    """An answer of the frontend's own, written as TorchServe writes its own."""
    return HttpResponse(frontend_json(document), status_code=status, media_type="application/json")


def build_frontend(args: dict[str, Any]) -> Application:
    """The frontend, from {"model": name, "key_file": path, "max_request_size": bytes}; its
    routing comes as its user_config (scripts/serve_config.py). Serve's builder form, for a Serve config."""
    frontend = _deployment(Frontend, max_ongoing_requests=1000, ray_actor_options={"num_cpus": 0})
    return frontend.bind(args["model"], args["key_file"], args["max_request_size"])


def build_version(args: dict[str, Any]) -> Application:
    """One version's replicas, from {"model": name, "version": version, "archive": path,
    "threads": per replica or None, "unpack_under": a folder for the replicas' unpacked archives,
    or None for the system's temporary folder}; their number comes from the Serve config."""
    env_vars = {"OMP_NUM_THREADS": str(args["threads"])} if args.get("threads") else {}
    batching = Batching.of(Path(args["archive"]))
    replica = _deployment(
        VersionReplica,
        name=version_name(args["model"], args["version"]),
        # Room for a batch filling while another runs (Serve's default, 5, is under a batch of 8).
        max_ongoing_requests=2 * batching.size,
        # Past these, waiting for a replica, a request is refused at once, as by TorchServe's job queue.
        max_queued_requests=batching.queue_size,
        # The worker rule sizes replicas and their threads (scripts/worker_plan.py), not Ray's CPU count.
        ray_actor_options={"num_cpus": 0, "runtime_env": {"env_vars": env_vars}},
    )
    return replica.bind(args["archive"], batching, args.get("unpack_under"))


def _deployment(cls: type, **options: Any) -> Deployment:
    """Serve's deployment of `cls` (serve.deployment's type hints give a class the decorator form)."""
    return cast(Deployment, serve.deployment(cls)).options(**options)
