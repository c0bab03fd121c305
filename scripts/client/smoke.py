"""A smoke check of a deployed ResNet50, from outside, with the clients its users have: run it
after `kubectl apply` (a KServe InferenceService, or the plain Kubernetes Service) or against a
local container.

    python -m scripts.client.smoke --url http://$INGRESS --host-header resnet50.NS.example.com \\
        --isvc resnet50 --namespace NS --metrics-url http://127.0.0.1:8082/metrics \\
        --expect-canary 10 --canary-version 2.1

One line per check, then a summary; the exit status is 0 only if every check passed:

  ready    with --isvc: `kubectl wait` for the InferenceService's Ready condition; then, always,
           the URL is asked until a v2 inference answers (within --timeout)
  v1       KServe's own REST client, /v1/models/resnet50:predict: the top 5 for the sample photo
  v2       tritonclient, /v2/models/resnet50/infer (binary data, classification extension): the same
  agree    v1's and v2's top-1 are the same class
  split    --requests v2 inferences, their share per answering model_version; with --expect-canary,
           the canary version's share within 3 standard deviations (binomial) of the expected percent
  metrics  with --metrics-url: the handler's own series count the requests this check sent
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import math
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx
import kserve
import numpy as np
import requests
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from model_signature import IMAGE, PROBABILITIES
from scripts.client.prometheus_scrape import Scrape, increase, scrape
from scripts.client.rest_api import explain
from scripts.paths import MODEL_NAME, sample_photo

TOP_K = 5
REQUEST_TIMEOUT_S = 120.0  # one inference; a cold worker's first one may take a while
POLL_INTERVAL_S = 2.0
METRICS_LAG_S = 10.0  # TorchServe's frontend reads a worker's metric lines on its own thread
STANDARD_DEVIATIONS = 3
AUTH_REFUSED = ("InvalidKeyException", "Token Authorization failed")  # TorchServe answers a bad token 400
TOKEN_ADVICE = (
    "the token was refused: pass the right one with --token (a local TorchServe's is the 'inference' key of its "
    "key_file.json; behind an ingress that authenticates, the token it expects)"
)
ADVICE = {
    400: "the request was refused as malformed: is --url this model's server, TorchServe with this repo's handler?",
    401: TOKEN_ADVICE,
    403: TOKEN_ADVICE,
    404: f"nothing serves {MODEL_NAME} there: behind KServe's ingress pass --host-header (the host of the "
    "InferenceService's URL, `kubectl get inferenceservice`); check the URL's host, port and path prefix",
    501: "that route is not served: use the model's default routes (docs/protocols.md)",
    503: "the model is not ready: wait (a larger --timeout), and see the pods' events and logs",
}
UNREACHABLE = (
    "check --url: `kubectl get inferenceservice` shows the InferenceService's URL; for the plain Service, "
    "`kubectl port-forward svc/resnet50 8080:8080` and --url http://127.0.0.1:8080"
)
WAITED_OUT = (404, 502, 503, 504)  # what an ingress or TorchServe answers while the model's pods start

Classes = list[tuple[float, int, str]]  # (probability, class index, label), highest first
T = TypeVar("T")


class CheckError(Exception):
    """What went wrong, and what to do about it."""

    def __init__(self, problem: str, advice: str, status: int = 0) -> None:
        super().__init__(problem)
        self.problem = problem
        self.advice = advice
        self.status = status  # the HTTP status of a refusal


@dataclass(frozen=True)
class Target:
    """Where the model is served, and the headers every request carries (an ingress routes by
    Host; an ingress, or TorchServe itself, may want a bearer token)."""

    url: str
    headers: dict[str, str]

    def v2_client(self, timeout: float = REQUEST_TIMEOUT_S) -> triton.InferenceServerClient:
        """tritonclient takes host:port/prefix without the scheme, and TLS as a flag."""
        parts = urlsplit(self.url)
        return triton.InferenceServerClient(
            parts.netloc + parts.path.rstrip("/"),
            ssl=parts.scheme == "https",
            connection_timeout=min(timeout, 10.0),
            network_timeout=timeout,
        )


def server_words(message: str) -> str:
    """A refusal's words, on one line. TorchServe's own refusals are {"code", "type", "message"},
    which tritonclient, expecting the protocol's {"error"}, quotes inside a complaint of its own."""
    try:
        body = json.loads(message[message.index("{") :])
        words = f"{body['type']}: {body['message']}" if "type" in body else body["error"]
    except (ValueError, KeyError, TypeError):
        words = message
    return explain(" ".join(str(words).split())[:300])


def refusal(status: int, message: str, route: str) -> CheckError:
    """A refusal, with advice by status; TorchServe refuses a bad token with a 400 of its own."""
    advice = TOKEN_ADVICE if any(mark in message for mark in AUTH_REFUSED) else ADVICE.get(status, "")
    return CheckError(
        f"{status} from {route}: {server_words(message)}",
        advice or "see the predictor's logs (`kubectl logs` of its pod, or the server's logs/)",
        status,
    )


def wait_for_inference_service(name: str, namespace: str | None, timeout_s: float) -> None:
    """The cluster's own verdict first: a Ready InferenceService has its revision's pods up and its
    route programmed. Unchecked by the tests (no cluster where they run)."""
    command = ["kubectl", "wait", "--for=condition=Ready", f"inferenceservice/{name}", f"--timeout={int(timeout_s)}s"]
    command += ["--namespace", namespace] if namespace else []
    try:
        done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=timeout_s + 30)
    except FileNotFoundError:
        raise CheckError("kubectl is not on PATH", "install kubectl, or leave out --isvc to only ask the URL") from None
    except subprocess.TimeoutExpired:
        done = subprocess.CompletedProcess(command, 1, "", "kubectl did not return")
    if done.returncode:
        verdict = done.stderr.strip().rpartition("\n")[2]  # kubectl's last line says it
        raise CheckError(
            f"`{' '.join(command)}`: {verdict}",
            f"is kubectl's context this cluster (`kubectl config current-context`)? then see why: "
            f"`kubectl describe inferenceservice {name}` (conditions, events) and the predictor pod's logs",
        )


def classify_v2(client: triton.InferenceServerClient, target: Target, photo: bytes) -> tuple[Classes, str]:
    """The top 5 over the Open Inference Protocol, as Triton's users send it (binary data both
    ways, the classification extension), and the model_version that answered."""
    image = triton.InferInput(IMAGE.name, [1], IMAGE.datatype)
    image.set_data_from_numpy(np.array([photo], dtype=object))
    ranked = triton.InferRequestedOutput(PROBABILITIES.name, class_count=TOP_K)
    try:
        answer = client.infer(MODEL_NAME, [image], outputs=[ranked], headers=dict(target.headers))
    except InferenceServerException as error:
        route = f"{target.url}/v2/models/{MODEL_NAME}/infer"
        raise refusal(int(error.status() or 0), str(error.message()), route) from None
    # Each element is "<probability>:<index>:<label>".
    rows = [item.decode().split(":", 2) for item in answer.as_numpy(PROBABILITIES.name)[0]]
    return [(float(p), int(index), label) for p, index, label in rows], answer.get_response()["model_version"]


def wait_until_answering(target: Target, photo: bytes, deadline: float) -> str:
    """Asks for a v2 inference until one answers: while pods start, an ingress answers 404 or 503,
    or nothing listens yet. A refusal that waiting cannot cure (a bad token) fails at once."""
    started = time.monotonic()
    while True:
        client = target.v2_client(max(1.0, min(REQUEST_TIMEOUT_S, deadline - time.monotonic())))
        try:
            classify_v2(client, target, photo)
            return f"a v2 inference answered after {time.monotonic() - started:.1f} s"
        except CheckError as failed:
            if failed.status not in WAITED_OUT:
                raise
            last = failed
        except OSError as error:  # refused, reset, timed out, no such host
            last = CheckError(f"{target.url}: {error!r}", UNREACHABLE)
        finally:
            client.close()
        if time.monotonic() + POLL_INTERVAL_S > deadline:
            raise CheckError(
                f"no v2 inference answered in {time.monotonic() - started:.0f} s (--timeout); last: {last.problem}",
                last.advice,
            )
        time.sleep(POLL_INTERVAL_S)


def predict_v1(target: Target, photo: bytes) -> Classes:
    """The top 5 over KServe v1, with KServe's own REST client."""

    async def infer() -> Any:
        client = kserve.InferenceRESTClient(kserve.RESTConfig(protocol="v1", timeout=REQUEST_TIMEOUT_S))
        try:
            body = {"instances": [{"b64": base64.b64encode(photo).decode()}]}
            return await client.infer(target.url, body, model_name=MODEL_NAME, headers=dict(target.headers))
        finally:
            await client.close()

    route = f"{target.url}/v1/models/{MODEL_NAME}:predict"
    try:
        answer = asyncio.run(infer())
    except httpx.HTTPStatusError as error:
        raise refusal(error.response.status_code, error.response.text, route) from None
    except httpx.HTTPError as error:
        raise CheckError(f"{route}: {error!r}", UNREACHABLE) from None
    try:
        return [(p["probability"], p["index"], p["label"]) for p in answer["predictions"][0]]
    except (KeyError, IndexError, TypeError):
        raise CheckError(f"{route} answered {answer!r:.300}, not KServe v1 predictions", ADVICE[400]) from None


def top_k(classes: Classes, protocol: str) -> str:
    """The answer, if it holds the 5 classes asked for."""
    if len(classes) != TOP_K:
        raise CheckError(f"{protocol} answered {len(classes)} classes, not {TOP_K}", "see the handler's topk setting")
    return ", ".join(f"{label} {probability:.1%}" for probability, _, label in classes)


def agreement(v1: Classes, v2: Classes) -> str:
    """Both routes reach the default version with the same photo, so their top-1 must be the same."""
    if v1[0][1] != v2[0][1]:
        raise CheckError(
            f"v1's top-1 is {v1[0][2]} ({v1[0][1]}), v2's {v2[0][2]} ({v2[0][1]})",
            "were both answered by the same version? a rollout in progress splits them; run the check again",
        )
    return f"both {v1[0][2]} ({v1[0][1]})"


def measure_split(target: Target, photo: bytes, requests_sent: int) -> Counter[str]:
    """How many of `requests_sent` v2 inferences each model_version answered."""
    client = target.v2_client()
    try:
        return Counter(classify_v2(client, target, photo)[1] for _ in range(requests_sent))
    finally:
        client.close()


def tolerance(share: float, requests_sent: int) -> float:
    """3 standard deviations of the share of `requests_sent` answered by a version that gets
    `share` of the traffic (binomial): a right split falls outside about one time in 370."""
    return STANDARD_DEVIATIONS * math.sqrt(share * (1 - share) / requests_sent)


def requests_needed(share: float) -> int:
    """The fewest requests whose tolerance around `share` (0 < share < 1) is narrower than its
    distance to 0% and to 100%, so that a version that never answers (or answers all) fails.
    A hair over the bound: where rounding decides a tie, one request more."""
    edge = min(share, 1 - share)
    return math.floor(STANDARD_DEVIATIONS**2 * share * (1 - share) / edge**2 * (1 + 1e-9)) + 1


def split(versions: Counter[str], expected_percent: float | None, canary: str | None) -> str:
    """Each version's share; with an expected percent, the canary's share must be within the
    tolerance of it, from enough requests for that tolerance to tell it from none (or all)."""
    total = versions.total()
    shares = ", ".join(f"{version} {count / total:.1%}" for version, count in sorted(versions.items()))
    observed = f"{total} v2 answers by model_version: {shares}"
    if expected_percent is None or canary is None:
        return observed
    p, share = expected_percent / 100, versions[canary] / total
    if 0 < p < 1 and total < requests_needed(p):
        raise CheckError(
            f"{observed}; too few to tell {expected_percent:g}% from {round(p) * 100}%",
            f"--requests {requests_needed(p)}",
        )
    verdict = (
        f"{observed}; {canary} {share:.1%}, expected {expected_percent:g}% ± {tolerance(p, total):.1%} "
        f"({STANDARD_DEVIATIONS} standard deviations of a binomial share of {total})"
    )
    if abs(share - p) > tolerance(p, total):
        raise CheckError(
            verdict,
            f"`kubectl get inferenceservice` shows the split (PREV, LATEST); is canaryTrafficPercent set, is the "
            f"latest revision Ready, and is {canary} its bundle's default version (make kserve-bundle BUNDLE_DEFAULT)?",
        )
    return verdict


def read_metrics(metrics_url: str) -> Scrape:
    """The page, or what to do to reach it."""
    try:
        return scrape(metrics_url)
    except (requests.RequestException, ValueError) as error:
        raise CheckError(
            f"cannot read {metrics_url} ({type(error).__name__})",
            "port-forward a pod's metrics port: `kubectl port-forward pod/POD 8082:8082` and "
            "--metrics-url http://127.0.0.1:8082/metrics",
        ) from None


def first_scrape(metrics_url: str) -> Scrape | CheckError:
    """/metrics before this check's first request, or why it could not be read: the metrics check,
    which runs last, reports that. A pod must be up to port-forward its metrics port, so the page
    can be read before the ready check."""
    try:
        return read_metrics(metrics_url)
    except CheckError as failure:
        return failure


def counted_requests(metrics_url: str, before: Scrape | CheckError, sent: Counter[str]) -> str:
    """The handler's own requests counter (handler_requests_total, by protocol) grew by the requests
    this check had answered; waits a little for it, as TorchServe takes the counts in late. With
    several pods (replicas, a canary) the pod behind --metrics-url counted only its share."""
    if isinstance(before, CheckError):
        raise before
    deadline = time.monotonic() + METRICS_LAG_S
    while True:
        after = read_metrics(metrics_url)
        counted = {
            protocol: increase(
                before, after, "handler_requests_total", ModelName=MODEL_NAME, Protocol=protocol, Outcome="OK"
            )
            for protocol in sent
        }
        if all(counted[protocol] >= number for protocol, number in sent.items()) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    counts = ", ".join(f"{protocol} {counted[protocol]:g} of {number}" for protocol, number in sorted(sent.items()))
    if not any(counted.values()):
        raise CheckError(
            f"handler_requests_total counted none of the requests sent ({counts})",
            "is --metrics-url a pod of this model, and its metrics_config the bundle's config/metrics.yaml?",
        )
    others = " (other pods answered the rest)" if any(counted[p] < number for p, number in sent.items()) else ""
    return f"handler_requests_total counted {counts}{others}"


@dataclass
class Report:
    """Prints each check's line as it ends, and the summary."""

    failed: list[str] = field(default_factory=list)
    passed: int = 0

    def check(self, name: str, run: Callable[[], tuple[T, str]]) -> T | None:
        """run()'s value, or None when it failed."""
        try:
            value, detail = run()
        except CheckError as failure:
            self.failed.append(name)
            print(f"FAIL  {name:<8} {failure.problem}\n      {'':<8} what to do: {failure.advice}", flush=True)
            return None
        self.passed += 1
        print(f"ok    {name:<8} {detail}", flush=True)
        return value

    def summary(self) -> int:
        if self.failed:
            print(f"{len(self.failed)} of {len(self.failed) + self.passed} checks failed: {', '.join(self.failed)}")
            return 1
        print(f"all {self.passed} checks passed")
        return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m scripts.client.smoke", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--url",
        required=True,
        metavar="URL",
        help="the model server's base URL, e.g. http://INGRESS or http://127.0.0.1:8080",
    )
    parser.add_argument(
        "--host-header",
        metavar="HOST",
        help="the Host header for an ingress that routes by it (resnet50.NS.example.com)",
    )
    parser.add_argument(
        "--token",
        metavar="TOKEN",
        help="sent as 'Authorization: Bearer TOKEN' (write --token=TOKEN: a TorchServe key may start with '-')",
    )
    parser.add_argument("--isvc", metavar="NAME", help="an InferenceService to `kubectl wait` for first")
    parser.add_argument("--namespace", metavar="NS", help="the InferenceService's namespace (default: kubectl's)")
    parser.add_argument(
        "--timeout", type=float, default=600, metavar="SECONDS", help="seconds to wait for readiness (default 600)"
    )
    parser.add_argument(
        "--metrics-url", metavar="URL", help="a pod's /metrics, e.g. http://127.0.0.1:8082/metrics (port-forwarded)"
    )
    parser.add_argument(
        "--requests", type=int, default=100, metavar="N", help="v2 inferences for the split (default 100)"
    )
    parser.add_argument("--expect-canary", type=float, metavar="PERCENT", help="the canary's expected share")
    parser.add_argument("--canary-version", metavar="VERSION", help="the model_version the canary answers with")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if urlsplit(args.url).scheme not in ("http", "https"):
        parser.error("--url needs its scheme: http://... or https://...")
    if (args.expect_canary is None) != (args.canary_version is None):
        parser.error("--expect-canary and --canary-version go together")
    if args.requests < (1 if args.expect_canary is not None else 0):
        parser.error("--requests must be at least 1 with --expect-canary, and never negative")
    headers = {"Host": args.host_header} if args.host_header else {}
    headers |= {"Authorization": f"Bearer {args.token}"} if args.token else {}
    target, photo = Target(args.url.rstrip("/"), headers), sample_photo().read_bytes()
    deadline = time.monotonic() + args.timeout
    report = Report()
    before = first_scrape(args.metrics_url) if args.metrics_url else None
    sent: Counter[str] = Counter()  # requests answered, by the handler's Protocol label

    def ready() -> tuple[bool, str]:
        if args.isvc:
            wait_for_inference_service(args.isvc, args.namespace, args.timeout)
        answered = wait_until_answering(target, photo, deadline)
        return True, f"InferenceService {args.isvc} Ready; {answered}" if args.isvc else answered

    if not report.check("ready", ready):
        return report.summary()  # nothing else can pass
    sent["open_inference"] += 1  # the inference that answered

    def v1() -> tuple[Classes, str]:
        classes = predict_v1(target, photo)
        sent["kserve_v1"] += 1
        return classes, top_k(classes, "v1")

    def v2() -> tuple[Classes, str]:
        client = target.v2_client()
        try:
            classes, version = classify_v2(client, target, photo)
        finally:
            client.close()
        sent["open_inference"] += 1
        return classes, f"{top_k(classes, 'v2')} (model_version {version})"

    v1_classes, v2_classes = report.check("v1", v1), report.check("v2", v2)
    if v1_classes and v2_classes:
        report.check("agree", lambda: (None, agreement(v1_classes, v2_classes)))

    def canary_split() -> tuple[None, str]:
        versions = measure_split(target, photo, args.requests)
        sent["open_inference"] += args.requests
        return None, split(versions, args.expect_canary, args.canary_version)

    if args.requests:
        report.check("split", canary_split)
    if before is not None:
        report.check("metrics", lambda: (None, counted_requests(args.metrics_url, before, sent)))
    return report.summary()


if __name__ == "__main__":
    sys.exit(main())
