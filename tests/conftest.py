"""Shared fixtures: seeded random weights, a handler in-process, and one real TorchServe.

TorchServe puts the archive's folder on sys.path so the handler's modules import each other
flat; the tests do the same with handler/.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

import mutation_preload as mutants  # tests/mutation_preload.py ("mutants" is the folder mutmut writes)

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "handler"))
sys.path.insert(0, str(ROOT))

from scripts.client.cli import management_client  # noqa: E402
from scripts.client.rest_api import ApiError, RestClient  # noqa: E402
from scripts.endpoints import HOST, Ports, Server  # noqa: E402
from scripts.harness.in_process import InProcessModel  # noqa: E402
from scripts.packaging import build_archives  # noqa: E402
from scripts.packaging.weights import RANDOM  # noqa: E402
from scripts.paths import BUILD_DIR, DEFAULT_VERSION, MODEL_NAME, SERVED_VERSIONS, archive_name  # noqa: E402
from scripts.ray_serve import lifecycle as ray_engine  # noqa: E402
from scripts.server.lifecycle import start, stop  # noqa: E402
from scripts.worker_plan import WorkerPlan  # noqa: E402

# One worker per version, two threads: this machine has two cores.
TEST_PLAN = WorkerPlan(workers_per_version=1, number_of_gpu=0, threads_per_worker=2)
TEST_MODEL_STORE = BUILD_DIR / "test-model-store"


def pytest_collection_finish(session: pytest.Session) -> None:
    """Under `make mutants`, load the archives once, in mutmut's fork server (mutation_preload.py)."""
    if mutants.in_the_fork_server(session.config):
        mutants.preload(TEST_MODEL_STORE)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Under `make mutants`, note the test that killed a mutant (mutation_preload.py)."""
    if report.failed:
        mutants.note_a_kill(report.nodeid)


@pytest.fixture(scope="session")
def model_store() -> Path:
    """Archives of seeded random weights, kept between runs: an unchanged archive (same
    handler, config, weights and CPU) is not rebuilt, which saves compiling its forward pass.
    A mutant's tests take them as mutmut's first run built them: a mutant that changes an
    archive's fingerprint would otherwise rebuild it, and the next mutant rebuild it back."""
    store = TEST_MODEL_STORE
    if mutants.mutant():
        return store
    for version in SERVED_VERSIONS:
        build_archives.build(version, RANDOM, store)
    return store


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory, model_store: Path) -> Iterator[Server]:
    """One TorchServe for the whole session: free ports, its own run dir and TMPDIR, token auth on."""
    instance = Server(run_dir=tmp_path_factory.mktemp("run"), model_store=model_store, ports=Ports.free())
    start(instance, TEST_PLAN)  # 1.0 and 2.0, 2.0 the default, as config/config.properties says
    try:
        yield instance
    finally:
        stop(instance)


@pytest.fixture(scope="session")
def ray_server(model_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The test archives on Ray Serve (docs/engines.md), on free ports, for the session; stopped at
    the end, and held to leave nothing behind."""
    instance = Server(run_dir=tmp_path_factory.mktemp("ray-run"), model_store=model_store, ports=Ports.free())
    with pytest.MonkeyPatch.context() as patch:
        # A token another Ray left in ~/.ray (any ray.init() leaves one): the engine keeps to its own.
        home = tmp_path_factory.mktemp("home")
        (home / ".ray").mkdir()
        (home / ".ray" / "auth_token").write_text("a-token-of-another-ray")
        patch.setenv("HOME", str(home))
        ray_engine.start(instance, TEST_PLAN)
    try:
        yield instance
    finally:
        ray_engine.stop(instance)
    assert ray_engine.members(instance) == [], "make stop left processes of the engine running"
    assert not ray_engine.unpacked_archives(instance).exists(), "make stop left the archives its replicas unpacked"
    for port in (instance.ports.inference, instance.ports.grpc_inference, instance.ports.metrics):
        with socket.socket() as sock:
            assert sock.connect_ex((HOST, port)) != 0, f"port {port} still listens after the engine stopped"


@pytest.fixture
def client(server: Server) -> RestClient:
    """Per test: it reads the key file, which a restart (tests/test_faults.py) rewrites."""
    return RestClient.for_server(server)


@pytest.fixture(scope="session")
def canary_archive(model_store: Path) -> str:
    """A rebuild of 2.0's recipe as version 2.1, in the server's model store."""
    if mutants.mutant():
        return archive_name("2.1")
    return build_archives.build("2.1", RANDOM, model_store, recipe_version="2.0").name


class InProcessModels:
    """Each version's archive loaded in-process at most once a session (a load takes seconds),
    shared by every test that asks for it. So a test that changes a loaded handler (its config,
    its forward...) must undo the change, as monkeypatch does; `changed()` says what was not undone."""

    def __init__(self, model_store: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
        self._model_store = model_store
        self._tmp_path_factory = tmp_path_factory
        # Each loaded model, with its handler's attributes as loaded.
        self._loaded: dict[str, tuple[InProcessModel, dict[str, Any]]] = {}

    def __getitem__(self, version: str) -> InProcessModel:
        if version not in self._loaded:
            with mutants.noting_what_a_load_runs():
                model = mutants.preloaded(version) or InProcessModel.from_archive(
                    self._model_store / archive_name(version), self._tmp_path_factory.mktemp(f"model-{version}")
                )
            self._loaded[version] = model, dict(vars(model.handler))
        return self._loaded[version][0]

    def changed(self) -> list[str]:
        """The handler attributes that are no longer the objects they were when loaded."""
        missing = object()
        return [
            f"{version}: handler.{name}"
            for version, (model, as_loaded) in sorted(self._loaded.items())
            for name in sorted(as_loaded.keys() | vars(model.handler).keys())
            if vars(model.handler).get(name, missing) is not as_loaded.get(name, missing)
        ]

    def close(self) -> None:
        for model, _ in self._loaded.values():
            model.close()


@pytest.fixture(scope="session")
def in_process_models(model_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessModels]:
    """The session's in-process models, each loaded when first asked for and closed at the end."""
    models = InProcessModels(model_store, tmp_path_factory)
    try:
        yield models
    finally:
        models.close()


@pytest.fixture(scope="session")
def model(in_process_models: InProcessModels) -> InProcessModel:
    """2.0 (the default version) in-process, one for the whole session: a test that changes its
    handler undoes the change (monkeypatch), or the test fails at teardown."""
    return in_process_models["2.0"]


@pytest.fixture(autouse=True)
def in_process_models_left_as_loaded(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail a test that changed a shared in-process handler and did not undo it: the change would
    leak into every later test. Autouse fixtures are set up first, so this runs after monkeypatch
    has undone its changes."""
    models = request.getfixturevalue("in_process_models") if "in_process_models" in request.fixturenames else None
    yield
    if models is not None:
        changed = models.changed()
        assert not changed, f"{request.node.nodeid} left these changed (undo them, e.g. with monkeypatch): {changed}"


@pytest.fixture(autouse=True)
def depends_on_the_load(request: pytest.FixtureRequest) -> None:
    """Under `make mutants`: a test marked checks_the_load depends on the load (mutation_preload.py)."""
    if request.node.get_closest_marker("checks_the_load"):
        mutants.depends_on_the_load()


def each_version() -> list[str]:
    """The versions a test of each version runs on. Under `make mutants`, the default only: both
    archives run the same code, each with its settings (held for every version by
    test_archive_carries_the_weights_preprocessing and test_model_snapshot), so a second version
    would double every surviving mutant's cost."""
    return [DEFAULT_VERSION] if mutants.running() else list(SERVED_VERSIONS)


def served_versions(server: Server) -> set[str]:
    """The versions the server serves, in its own words (REST, or the Ray Serve engine's Serve
    config), whatever client a test used."""
    return {entry["modelVersion"] for entry in management_client(server).describe(MODEL_NAME, "all")}


def refused(call: Callable[..., Any], *args: Any) -> ApiError:
    """The ApiError `call(*args)` must raise."""
    with pytest.raises(ApiError) as error:
        call(*args)
    return error.value


def inference_auth(server: Server) -> dict[str, str]:
    """The header the inference API wants (token auth is on): the inference token, as a bearer token."""
    return {"Authorization": f"Bearer {RestClient.for_server(server).tokens.inference}"}


def post_inference(
    server: Server,
    path: str = f"predictions/{MODEL_NAME}",
    headers: dict[str, str] | None = None,
    timeout: float = 60.0,
    **kwargs: Any,
) -> requests.Response:
    """A raw POST to the inference API with the inference token, as curl sends it."""
    return requests.post(
        f"{server.inference_url}/{path}",
        headers={**inference_auth(server), **(headers or {})},
        timeout=timeout,
        **kwargs,
    )


def restore(server: Server) -> None:
    """Put the server back as the session started it: 1.0 and 2.0 served, 2.0 the default."""
    versions = management_client(server)
    served = served_versions(server)
    for version in set(SERVED_VERSIONS) - served:
        versions.register(archive_name(version), TEST_PLAN.workers_per_version)
    versions.set_default(MODEL_NAME, DEFAULT_VERSION)
    for version in served - set(SERVED_VERSIONS):
        versions.unregister(MODEL_NAME, version)
