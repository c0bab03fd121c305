"""Weights provisioning (verification, offline messages) and the worker-placement rule."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import pytest
import torch

from scripts.packaging import weights
from scripts.packaging.build_archives import _fingerprint
from scripts.packaging.weights import WeightsError, random_weights_file, weights_file
from scripts.worker_plan import Machine, plan_workers

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
        (16, (), (4, 0, 4)),  # one worker per 4 cores
        (16, (80.0,), (2, 1, 8)),  # one H100: two workers
        (32, (80.0,) * 4, (8, 4, 4)),  # four GPUs: two workers on each
        (8, (3.0,), (1, 1, 8)),  # a small GPU fits one worker
    ],
)
def test_the_worker_rule(cores: int, gpus: tuple[float, ...], expected: tuple[int, int, int]) -> None:
    plan = plan_workers(Machine(cores=cores, gpu_memory_gib=gpus))
    assert (plan.workers_per_version, plan.number_of_gpu, plan.threads_per_worker) == expected


def test_every_part_of_the_rule_can_be_overridden() -> None:
    plan = plan_workers(Machine(cores=16, gpu_memory_gib=(80.0, 80.0)), workers=3, num_gpus=1, threads_per_worker=5)
    assert (plan.workers_per_version, plan.number_of_gpu, plan.threads_per_worker) == (3, 1, 5)
