"""The Ray Serve application: a deployment per served version, whose replicas each load that
version's archive as a TorchServe worker does (scripts/harness/in_process.py, the same handler
code), batched as the archive's model-config.yaml asks; and one frontend deployment that speaks
TorchServe's routes and tokens (http_edge.py) and sends each request to its version."""

from __future__ import annotations

import asyncio
import hmac
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import yaml
from ray import serve
from ray.serve.deployment import Application, Deployment
from ray.serve.handle import DeploymentHandle
from starlette.requests import Request as HttpRequest
from starlette.responses import Response as HttpResponse

from scripts.client.rest_api import Tokens
from scripts.harness.in_process import InProcessModel, Request, Response
from scripts.ray_serve import oip_status
from scripts.ray_serve.http_edge import Headers, Route, answer_body, bearer_token, frontend_json, route, wire_request


@dataclass(frozen=True)
class Batching:
    """An archive's batching, from the model-config.yaml it carries."""

    size: int
    max_delay_s: float

    @classmethod
    def of(cls, archive: Path) -> Batching:
        with zipfile.ZipFile(archive) as mar:
            settings = yaml.safe_load(mar.read("model-config.yaml"))
        return cls(int(settings["batchSize"]), int(settings["maxBatchDelay"]) / 1000)


class VersionReplica:
    """One version's handler. Batches wait up to the archive's maxBatchDelay for batchSize requests."""

    def __init__(self, archive: str, batching: Batching) -> None:
        self.model = InProcessModel.from_archive(Path(archive), Path(tempfile.mkdtemp(prefix="resnet50-replica-")))
        batched: Any = self.run_batch  # @serve.batch's method, which its type does not say
        batched.set_max_batch_size(batching.size)
        batched.set_batch_wait_timeout_s(batching.max_delay_s)

    async def __call__(self, request: Request) -> Response:
        return await self.run_batch(request)

    @serve.batch
    async def run_batch(self, requests: list[Request]) -> list[Response]:
        # The forward pass holds the GIL only in bursts: off the event loop, health checks still answer.
        return await asyncio.to_thread(self.model.infer, requests)

    def __del__(self) -> None:
        self.model.close()


class Frontend:
    """TorchServe's inference API on Ray Serve's HTTP proxy: its token, its routes, its refusals."""

    def __init__(
        self, versions: dict[str, DeploymentHandle[Any]], default: str, model: str, key_file: str, max_request_size: int
    ) -> None:
        self.versions = versions
        self.default = default
        self.model = model
        self.inference_key = Tokens.from_key_file(Path(key_file)).inference
        self.max_request_size = max_request_size

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
        answer: Response = await self.versions[version].remote(wire_request(found, headers, body))
        return HttpResponse(answer_body(answer), status_code=answer.status, headers=answer.headers)

    def _destination(self, path: str, headers: Headers) -> tuple[Route, str] | HttpResponse:
        """The route and version a request goes to, or the frontend's own answer."""
        token = bearer_token(headers)
        if token is None or not hmac.compare_digest(token.encode(), self.inference_key.encode()):
            return _refusal(400, "InvalidKeyException", TOKEN_REFUSED)
        status = self._status(path)
        if status is not None:
            return status
        found = route(path)
        if found is None:
            return _refusal(404, "ResourceNotFoundException", NO_SUCH_RESOURCE)
        version = self._version(found.model, found.version)
        return version if isinstance(version, HttpResponse) else (found, version)

    def _status(self, path: str) -> HttpResponse | None:
        """The answer to /ping or to an Open Inference Protocol status route (oip_status.py); None
        for any other path."""
        if path == "/ping":
            return _json({"status": "Healthy"})
        if (server_status := oip_status.server_answer(path)) is not None:
            return _json(server_status)
        query = oip_status.model_query(path)
        if query is None:
            return None
        version = self._version(query.model, query.version)
        if isinstance(version, HttpResponse):
            return version
        if query.ready:
            return _json(oip_status.model_ready(query.model, version))
        return _json(oip_status.model_metadata(query.model, sorted(self.versions)))

    def _version(self, model: str, version: str | None) -> str | HttpResponse:
        """The served version a request names (None: the default), or TorchServe's 404 for it."""
        if model != self.model:
            return _refusal(404, "ModelNotFoundException", f"Model not found: {model}")
        chosen = version or self.default
        if chosen not in self.versions:
            return _refusal(
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


TOKEN_REFUSED = "Token Authorization failed. Token either incorrect, expired, or not provided correctly"
NO_SUCH_RESOURCE = "Requested resource is not found, please refer to API document."


def _refusal(status: int, kind: str, message: str) -> HttpResponse:
    """A refusal of the frontend's own, in TorchServe's shape."""
    return _json({"code": status, "type": kind, "message": message}, status)


def _json(document: Any, status: int = 200) -> HttpResponse:
    """An answer of the frontend's own, written as TorchServe writes its own."""
    return HttpResponse(frontend_json(document), status_code=status, media_type="application/json")


def build(args: dict[str, Any]) -> Application:
    """The application, from {"archives": {version: path}, "default": version, "model": name,
    "key_file": path, "max_request_size": bytes, "replicas": per version, "threads": per replica
    or None}: Serve's builder form, for `serve run` and a RayService's serveConfigV2."""
    env_vars = {"OMP_NUM_THREADS": str(args["threads"])} if args.get("threads") else {}
    batching = {version: Batching.of(Path(archive)) for version, archive in args["archives"].items()}
    versions = {
        version: _deployment(
            VersionReplica,
            name=f"{args['model']}-{version}",
            num_replicas=args["replicas"],
            # Room for a batch filling while another runs (Serve's default, 5, is under a batch of 8).
            max_ongoing_requests=2 * batching[version].size,
            # The worker rule sizes replicas and their threads (scripts/worker_plan.py), not Ray's CPU count.
            ray_actor_options={"num_cpus": 0, "runtime_env": {"env_vars": env_vars}},
        ).bind(archive, batching[version])
        for version, archive in args["archives"].items()
    }
    frontend = _deployment(Frontend, max_ongoing_requests=1000, ray_actor_options={"num_cpus": 0})
    return frontend.bind(versions, args["default"], args["model"], args["key_file"], args["max_request_size"])


def _deployment(cls: type, **options: Any) -> Deployment:
    """Serve's deployment of `cls` (serve.deployment's type hints give a class the decorator form)."""
    return cast(Deployment, serve.deployment(cls)).options(**options)
