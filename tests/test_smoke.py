"""The smoke check users run after `kubectl apply` (scripts/client/smoke.py), against the session's
real TorchServe with token auth on, as users run it: main() in-process, and once as
`python -m scripts.client.smoke` for its exit status. Every check passes on a good server, and
each way of getting it wrong (a canary that never answers, a URL where nothing listens, a wrong
token, a missing Host header) fails with a line that says what went wrong and what to do.

Not checked here: `--isvc` (`kubectl wait` for the InferenceService's Ready condition) needs a
cluster, and there is none where the tests run; nor a real ingress or gateway, KServe's routing,
or a split between two revisions (only its failure, with one version answering). The ingress is
stood in for by a small proxy in front of the real server that routes by Host, as Knative's and
a Gateway's do.
"""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from images import encode, noise_image
from scripts.client import smoke
from scripts.client.rest_api import RestClient
from scripts.endpoints import HOST, Ports, Server
from scripts.paths import MODEL_NAME, ROOT, sample_photo

SERVICE_HOST = f"{MODEL_NAME}.smoke.example.com"


@pytest.fixture
def token(server: Server) -> str:
    """The inference token, read per test: a restart (tests/test_faults.py) draws new keys."""
    return RestClient.for_server(server).tokens.inference


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, dict[str, str]]:
    """main()'s exit status, its output, and each check's line by name."""
    status = smoke.main(list(argv))
    out = capsys.readouterr().out
    lines = {line.split()[1]: line for line in out.splitlines() if line.startswith(("ok ", "FAIL "))}
    return status, out, lines


def test_every_check_passes_and_the_default_version_answers_every_request(
    server: Server, token: str, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, lines = run(
        capsys,
        "--url",
        server.inference_url,
        f"--token={token}",
        "--metrics-url",
        server.metrics_url,
        "--requests",
        "40",
    )
    assert status == 0, out
    assert list(lines) == ["ready", "v1", "v2", "agree", "split", "metrics"]
    assert all(line.startswith("ok ") for line in lines.values()), out
    top = RestClient.for_server(server).predict(MODEL_NAME, sample_photo().read_bytes())[0]
    assert f"both {top['label']} ({top['index']})" in lines["agree"]
    assert "(model_version 2.0)" in lines["v2"]
    assert lines["split"].endswith("40 v2 answers by model_version: 2.0 100.0%")
    # The ready check's inference, one v1 and one v2 prediction, the split's 40: this server is the only pod.
    assert lines["metrics"].endswith("handler_requests_total counted kserve_v1 1 of 1, open_inference 42 of 42")
    assert out.endswith("all 6 checks passed\n")


def test_each_protocol_gives_the_top_5_of_our_rest_answer(server: Server, token: str) -> None:
    target, photo = (
        smoke.Target(server.inference_url, {"Authorization": f"Bearer {token}"}),
        sample_photo().read_bytes(),
    )
    expected = [p["index"] for p in RestClient.for_server(server).predict(MODEL_NAME, photo)]
    client = target.v2_client()
    try:
        v2, version = smoke.classify_v2(client, target, photo)
    finally:
        client.close()
    assert [index for _, index, _ in smoke.predict_v1(target, photo)] == expected
    assert [index for _, index, _ in v2] == expected and version == "2.0"


def test_v1_and_v2_answers_with_different_top_1_disagree(server: Server, token: str) -> None:
    """Real answers, for two different images: the agreement check must see they differ."""
    target = smoke.Target(server.inference_url, {"Authorization": f"Bearer {token}"})
    client = target.v2_client()
    try:
        noise, _ = smoke.classify_v2(client, target, encode(noise_image((320, 240))))
    finally:
        client.close()
    photo = smoke.predict_v1(target, sample_photo().read_bytes())
    assert photo[0][1] != noise[0][1], "the test needs two images with different top-1"
    with pytest.raises(smoke.CheckError) as error:
        smoke.agreement(photo, noise)
    assert error.value.problem == f"v1's top-1 is {photo[0][2]} ({photo[0][1]}), v2's {noise[0][2]} ({noise[0][1]})"


def test_a_canary_that_never_answers_fails_the_split(
    server: Server, token: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Only 2.0 answers here, so 2.1's 0% is outside 10% ± 9% (3 standard deviations of 100);
    with 20 requests the tolerance would hold 0% too, and the check says how many it needs."""
    common = ("--url", server.inference_url, f"--token={token}", "--expect-canary", "10", "--canary-version", "2.1")
    status, out, lines = run(capsys, *common)
    assert status == 1
    assert lines["split"].startswith("FAIL  split")
    assert lines["split"].endswith(
        "100 v2 answers by model_version: 2.0 100.0%; 2.1 0.0%, expected 10% ± 9.0% "
        "(3 standard deviations of a binomial share of 100)"
    )
    assert "is canaryTrafficPercent set" in out
    assert out.endswith("1 of 5 checks failed: split\n")

    status, out, lines = run(capsys, *common, "--requests", "20")
    assert status == 1
    assert lines["split"].endswith("20 v2 answers by model_version: 2.0 100.0%; too few to tell 10% from 0%")
    assert "what to do: --requests 82" in out


def test_a_url_where_nothing_listens_fails_fast(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://{HOST}:{Ports.free().inference}"
    started = time.monotonic()
    status, out, lines = run(capsys, "--url", url, "--timeout", "3")
    assert time.monotonic() - started < 15
    assert status == 1
    assert list(lines) == ["ready"]
    assert re.match(rf"FAIL  ready    no v2 inference answered in [23] s \(--timeout\); last: {url}: ", lines["ready"])
    assert "ConnectionRefusedError" in lines["ready"]
    assert "what to do: check --url" in out
    assert out.endswith("1 of 1 checks failed: ready\n")


def test_a_wrong_token_fails_at_once_with_its_exit_status(server: Server) -> None:
    """As a command: its output, and the exit status a script or CI job sees."""
    command = [sys.executable, "-m", "scripts.client.smoke", "--url", server.inference_url, "--token=not-the-token"]
    started = time.monotonic()
    done = subprocess.run(
        [*command, "--timeout", "60"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert time.monotonic() - started < 30, "a refused token must not be waited out"
    assert done.returncode == 1, done.stderr
    route = f"{server.inference_url}/v2/models/{MODEL_NAME}/infer"
    assert f"FAIL  ready    400 from {route}: InvalidKeyException: Token Authorization failed." in done.stdout
    assert "what to do: the token was refused: pass the right one with --token" in done.stdout
    assert done.stdout.endswith("1 of 1 checks failed: ready\n")


@pytest.fixture
def ingress(server: Server) -> Iterator[tuple[str, list[tuple[str, str]]]]:
    """An ingress in front of the server that routes by Host, as Knative's does: a request for
    SERVICE_HOST is passed on, any other is answered 404. Yields its URL and the (Host, path)
    of each request it saw."""
    seen: list[tuple[str, str]] = []
    passed_on = ("Authorization", "Content-Type", "Inference-Header-Content-Length")

    class Ingress(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            seen.append((self.headers["Host"], self.path))
            if self.headers["Host"] != SERVICE_HOST:
                self.answer(404, {}, b"no route for this host")
                return
            headers = {name: self.headers[name] for name in passed_on if name in self.headers}
            answer = requests.post(f"{server.inference_url}{self.path}", data=body, headers=headers, timeout=120)
            self.answer(answer.status_code, {k: v for k, v in answer.headers.items() if k in passed_on}, answer.content)

        def answer(self, status: int, headers: dict[str, str], content: bytes) -> None:
            self.send_response(status)
            for name, value in {**headers, "Content-Length": str(len(content))}.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(content)

        def log_message(self, format: str, *args: object) -> None:
            """Quiet: the test reads `seen`."""

    proxy = ThreadingHTTPServer((HOST, 0), Ingress)
    thread = threading.Thread(target=proxy.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{HOST}:{proxy.server_address[1]}", seen
    finally:
        proxy.shutdown()
        proxy.server_close()
        thread.join()


def test_behind_an_ingress_that_routes_by_host(
    ingress: tuple[str, list[tuple[str, str]]], token: str, capsys: pytest.CaptureFixture[str]
) -> None:
    url, seen = ingress
    status, out, _ = run(capsys, "--url", url, "--host-header", SERVICE_HOST, f"--token={token}", "--requests", "3")
    assert status == 0, out
    # Both clients sent the Host header: the ready poll, v1, v2 and the split's three.
    v1, v2 = f"/v1/models/{MODEL_NAME}:predict", f"/v2/models/{MODEL_NAME}/infer"
    assert seen == [(SERVICE_HOST, v2), (SERVICE_HOST, v1)] + [(SERVICE_HOST, v2)] * 4

    status, out, lines = run(capsys, "--url", url, f"--token={token}", "--timeout", "3")
    assert status == 1
    assert re.match(r"FAIL  ready    no v2 inference answered in [23] s \(--timeout\); last: 404 from ", lines["ready"])
    assert "what to do: nothing serves resnet50 there: behind KServe's ingress pass --host-header" in out
