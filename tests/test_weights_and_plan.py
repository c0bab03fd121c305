"""Weights provisioning (verification, offline messages) and the worker-placement rule."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import pytest
import torch

from scripts.packaging import weights
from scripts.packaging.build_archives import _fingerprint
from scripts.packaging.kserve_bundle import Pod
from scripts.packaging.weights import WeightsError, random_weights_file, weights_file
from scripts.worker_plan import Machine, WorkerPlan, plan_from_environment, plan_workers

V2_FILE = "resnet50-11ad3fa6.pth"


def test_random_weights_are_seeded(tmp_path: Path) -> None:
    """Made twice from the same seed, bit for bit the same; another seed differs."""
    first = torch.load(random_weights_file(seed=1, folder=tmp_path / "first"), weights_only=True)
    again = torch.load(random_weights_file(seed=1, folder=tmp_path / "again"), weights_only=True)
    assert first.keys() == again.keys() and all(torch.equal(first[name], again[name]) for name in first)
    other = torch.load(random_weights_file(seed=0), weights_only=True)
    assert not torch.equal(first["fc.weight"], other["fc.weight"])


def test_the_archive_fingerprint_follows_the_weights_content(tmp_path: Path) -> None:
    """Same name and size, different bytes: a changed random-weights recipe does exactly this."""
    weights = tmp_path / "weights.pth"
    weights.write_bytes(b"a" * 64)
    before = _fingerprint({}, weights, "build")
    weights.write_bytes(b"b" * 64)
    assert _fingerprint({}, weights, "build") != before


def test_a_local_folder_without_the_file_says_what_to_put_where(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match=f"put torchvision's {V2_FILE}"):
        weights_file("IMAGENET1K_V2", str(tmp_path))


def test_a_corrupt_local_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / V2_FILE).write_bytes(b"not the weights")
    with pytest.raises(WeightsError, match="corrupt or not torchvision's file"):
        weights_file("IMAGENET1K_V2", str(tmp_path))


def test_offline_download_says_how_to_provide_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_network(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr(weights, "download_url_to_file", no_network)
    monkeypatch.setattr(weights, "get_dir", lambda: str(tmp_path))
    with pytest.raises(WeightsError) as refused:
        weights_file("IMAGENET1K_V2")
    message = str(refused.value)
    assert "Copy that file into" in message and "WEIGHTS=<folder>" in message and "WEIGHTS=random" in message


@pytest.mark.parametrize(
    ("cores", "gpus", "expected"),
    [
        (2, (), (1, 0, 2)),  # this machine: one worker, both cores
        (4, (), (1, 0, 4)),  # one worker per 4 cores
        (7, (), (1, 0, 7)),  # a second worker needs 4 more cores
        (8, (), (2, 0, 4)),
        (16, (), (4, 0, 4)),
        (16, (80.0,), (2, 1, 8)),  # one H100: two workers
        (32, (80.0,) * 4, (8, 4, 4)),  # four GPUs: two workers on each
        (8, (4.0,), (2, 1, 4)),  # 2 GiB per worker: 4 GiB fits two
        (8, (3.99,), (1, 1, 8)),  # just under fits one
        (8, (1.5,), (1, 1, 8)),  # too small for even one still gets one
    ],
)
def test_the_worker_rule(cores: int, gpus: tuple[float, ...], expected: tuple[int, int, int]) -> None:
    plan = plan_workers(Machine(cores=cores, gpu_memory_gib=gpus))
    assert (plan.workers_per_version, plan.number_of_gpu, plan.threads_per_worker) == expected


def test_every_part_of_the_rule_can_be_overridden() -> None:
    plan = plan_workers(Machine(cores=16, gpu_memory_gib=(80.0, 80.0)), workers=3, num_gpus=1, threads_per_worker=5)
    assert (plan.workers_per_version, plan.number_of_gpu, plan.threads_per_worker) == (3, 1, 5)


@pytest.mark.parametrize(("workers", "threads"), [(2, 1), (3, 1)])
def test_workers_beyond_the_cores_get_one_thread_each(workers: int, threads: int) -> None:
    assert plan_workers(Machine(cores=2, gpu_memory_gib=()), workers=workers).threads_per_worker == threads


@pytest.mark.parametrize(("asked", "used"), [(2, 2), (3, 2)])
def test_num_gpus_is_capped_at_the_visible_gpus(asked: int, used: int) -> None:
    assert plan_workers(Machine(cores=16, gpu_memory_gib=(80.0, 80.0)), num_gpus=asked).number_of_gpu == used


def test_zero_workers_are_refused() -> None:
    machine = Machine(cores=16, gpu_memory_gib=())
    assert plan_workers(machine, workers=1, threads_per_worker=1).workers_per_version == 1
    with pytest.raises(ValueError, match="WORKERS must be at least 1, got 0"):
        plan_workers(machine, workers=0, threads_per_worker=1)


FOUR_GPUS = Machine(cores=16, gpu_memory_gib=(80.0,) * 4)  # the rule: 8 workers on 4 GPUs, 2 threads each
OVERRIDES = ("WORKERS", "NUM_GPUS", "THREADS_PER_WORKER")


@pytest.fixture
def environment(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """The environment without any override of the rule, to set one in."""
    for name in OVERRIDES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("WORKERS", "3", (3, 4, 5)),
        ("NUM_GPUS", "3", (6, 3, 2)),
        ("THREADS_PER_WORKER", "3", (8, 4, 3)),
        ("WORKERS", "", (8, 4, 2)),
        ("NUM_GPUS", "", (8, 4, 2)),
        ("THREADS_PER_WORKER", "", (8, 4, 2)),
    ],
)
def test_the_environment_overrides_the_rule_and_empty_means_the_rule(
    environment: pytest.MonkeyPatch, variable: str, value: str, expected: tuple[int, int, int]
) -> None:
    environment.setenv(variable, value)
    plan = plan_from_environment(FOUR_GPUS)
    assert (plan.workers_per_version, plan.number_of_gpu, plan.threads_per_worker) == expected


@pytest.mark.parametrize("variable", OVERRIDES)
@pytest.mark.parametrize("value", ["x", "-1"])
def test_an_environment_value_that_is_not_a_whole_number_is_refused_by_name(
    environment: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    environment.setenv(variable, value)
    with pytest.raises(ValueError, match=f"^{variable} must be a whole number, got '{value}'$"):
        plan_from_environment(FOUR_GPUS)


def test_a_pod_with_one_gpu_runs_two_workers_on_it() -> None:
    """What the GPU overlays (8 CPUs, one GPU) get from `make kserve-bundle POD_CPUS=8 POD_GPUS=1`."""
    assert Pod(cpus=8, gpus=1).plan() == WorkerPlan(workers_per_version=2, number_of_gpu=1, threads_per_worker=4)


@pytest.mark.parametrize(
    ("plan", "said"),
    [
        (WorkerPlan(2, 0, 4), "2 worker(s) per version on CPU, 4 CPU thread(s) each"),
        (WorkerPlan(2, 1, None), "2 worker(s) per version on 1 GPU(s), all CPU thread(s) each"),
    ],
)
def test_the_plan_is_said_as_make_serve_prints_it(plan: WorkerPlan, said: str) -> None:
    """`make serve` prints it and the KServe bundle's config.properties records it: what a user reads."""
    assert plan.describe() == said
