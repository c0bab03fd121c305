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
from scripts.ray_serve.http_edge import answer_body, bearer_token, frontend_json, route, wire_request


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
        self.model = InProcessModel(Path(archive), Path(tempfile.mkdtemp(prefix="resnet50-replica-")))
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

    def __init__(self, versions: dict[str, DeploymentHandle[Any]], default: str, model: str, key_file: str) -> None:
        self.versions = versions
        self.default = default
        self.model = model
        self.inference_key = Tokens.from_key_file(Path(key_file)).inference

    async def __call__(self, http: HttpRequest) -> HttpResponse:
        headers = http.headers.items()
        token = bearer_token(headers)
        if token is None or not hmac.compare_digest(token.encode(), self.inference_key.encode()):
            return _refusal(400, "InvalidKeyException", TOKEN_REFUSED)  # before anything else, as TorchServe
        if http.url.path == "/ping":
            return HttpResponse(frontend_json({"status": "Healthy"}), media_type="application/json")
        found = route(http.url.path)
        if found is None:
            return _refusal(404, "ResourceNotFoundException", NO_SUCH_RESOURCE)
        if found.model != self.model:
            return _refusal(404, "ModelNotFoundException", f"Model not found: {found.model}")
        version = found.version or self.default
        if version not in self.versions:
            return _refusal(
                404,
                "ModelVersionNotFoundException",
                f"Model version: {version} does not exist for model: {found.model}",
            )
        answer: Response = await self.versions[version].remote(wire_request(found, headers, await http.body()))
        return HttpResponse(answer_body(answer), status_code=answer.status, headers=answer.headers)


TOKEN_REFUSED = "Token Authorization failed. Token either incorrect, expired, or not provided correctly"
NO_SUCH_RESOURCE = "Requested resource is not found, please refer to API document."


def _refusal(status: int, kind: str, message: str) -> HttpResponse:
    """A refusal of the frontend's own, in TorchServe's shape."""
    body = frontend_json({"code": status, "type": kind, "message": message})
    return HttpResponse(body, status_code=status, media_type="application/json")


def build(args: dict[str, Any]) -> Application:
    """The application, from {"archives": {version: path}, "default": version, "model": name,
    "key_file": path, "replicas": per version, "threads": per replica or None}: Serve's builder
    form, for `serve run` and a RayService's serveConfigV2."""
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
    return frontend.bind(versions, args["default"], args["model"], args["key_file"])


def _deployment(cls: type, **options: Any) -> Deployment:
    """Serve's deployment of `cls` (serve.deployment's type hints give a class the decorator form)."""
    return cast(Deployment, serve.deployment(cls)).options(**options)
