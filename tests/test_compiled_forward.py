"""The archive's ahead-of-time compiled forward: used where it was compiled for this device (in
chunks of its batch size for larger batches), the eager model everywhere else. (That its answers match torchvision's is
test_handler's test_outputs_match_direct_torchvision_inference, which runs through it.)"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

import compiled_forward
from compiled_forward import CompiledForward, native_target, select_forward
from handler_config import CompiledForwardConfig
from model_identity import architecture
from scripts.harness.in_process import InProcessModel
from scripts.packaging.compile_forward import missing_compiler

CPU = torch.device("cpu")


def eager_model() -> torch.nn.Module:
    return architecture().eval().to(memory_format=torch.channels_last)


@pytest.mark.skipif(missing_compiler() is not None, reason="no C++ compiler: archives are built eager-only")
def test_the_archive_carries_a_forward_compiled_for_this_cpu(model: InProcessModel) -> None:
    handler = model.handler
    package = handler.config.compiled_forward["cpu"]
    assert package.target == native_target(CPU)
    assert package.max_batch == 8  # the archive's batchSize: every batch TorchServe can form
    assert isinstance(handler.forward, CompiledForward)


def test_batches_beyond_the_compiled_size_run_through_the_package_in_chunks(model: InProcessModel) -> None:
    """Requests of several images make batches larger than batchSize; they stay compiled (the
    package answers a chunk smaller than its size), each image's answer in its place."""
    handler = model.handler
    compiled = CompiledForward(handler.config.compiled_forward["cpu"], CPU, str(model.model_dir))
    runner, seen = compiled.runner, []

    def counting(batch: torch.Tensor) -> torch.Tensor:
        seen.append(batch.shape[0])
        return runner(batch)

    compiled.runner = counting
    batch = torch.randn(9, 3, 224, 224).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        whole = compiled(batch)
        first_and_last = compiled(batch[[0, -1]])
    assert seen == [8, 1, 2]
    assert whole.shape == (9, 1000)
    assert torch.allclose(whole[[0, -1]], first_and_last, atol=1e-4)


@pytest.mark.parametrize(("size", "calls"), [(1, [1]), (8, [8]), (9, [8, 1]), (19, [8, 8, 3])])
def test_a_batch_is_cut_in_chunks_of_the_compiled_size(
    monkeypatch: pytest.MonkeyPatch, size: int, calls: list[int]
) -> None:
    """Up to the compiled size in one call, beyond it in order; a stand-in package shows which."""
    seen: list[int] = []

    def package(batch: torch.Tensor) -> torch.Tensor:
        seen.append(batch.shape[0])
        return batch * 2

    monkeypatch.setattr(compiled_forward, "load_package", lambda path, device: package)
    config = CompiledForwardConfig(package="resnet50_cpu.pt2", target=native_target(CPU), max_batch=8)
    answers = CompiledForward(config, CPU, "/nonexistent")(torch.arange(size).unsqueeze(1))
    assert seen == calls
    assert answers.squeeze(1).tolist() == [2 * row for row in range(size)]


def test_a_package_compiled_for_another_cpu_is_not_used(caplog: pytest.LogCaptureFixture) -> None:
    eager = eager_model()
    elsewhere = {"cpu": CompiledForwardConfig(package="resnet50_cpu.pt2", target="NOT-THIS-CPU", max_batch=8)}
    with caplog.at_level(logging.WARNING):
        assert select_forward(elsewhere, CPU, "/nonexistent", eager) is eager
    assert "compiled for NOT-THIS-CPU" in caplog.text and "Rebuild the archive on this machine" in caplog.text


def test_a_package_compiled_with_another_torch_is_not_used(caplog: pytest.LogCaptureFixture) -> None:
    """A serving image (TorchServe's own, say) whose torch is not the build's runs the eager model."""
    eager = eager_model()
    other_torch = native_target(CPU).replace(torch.__version__, "2.4.0")
    packages = {"cpu": CompiledForwardConfig(package="resnet50_cpu.pt2", target=other_torch, max_batch=8)}
    with caplog.at_level(logging.WARNING):
        assert select_forward(packages, CPU, "/nonexistent", eager) is eager
    assert f"compiled for {other_torch} and this device is {native_target(CPU)}" in caplog.text


@pytest.fixture
def an_sm_80_gpu(monkeypatch: pytest.MonkeyPatch) -> torch.device:
    """A GPU of compute capability 8.0 (an A100), as torch would describe it."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    return torch.device("cuda", 0)


@pytest.mark.parametrize(
    ("target", "warning"),
    [
        (
            f"sm_90, torch {torch.__version__}",
            f"compiled for sm_90, torch {torch.__version__} and this device is sm_80",
        ),
        (f"sm_80, torch {torch.__version__}", "could not be loaded"),  # this one: loaded (and the package is not there)
    ],
)
def test_a_gpu_package_is_loaded_only_on_its_own_architecture(
    an_sm_80_gpu: torch.device, target: str, warning: str, caplog: pytest.LogCaptureFixture
) -> None:
    eager = eager_model()
    packages = {"cuda": CompiledForwardConfig(package="resnet50_cuda.pt2", target=target, max_batch=8)}
    with caplog.at_level(logging.WARNING):
        assert select_forward(packages, an_sm_80_gpu, "/nonexistent", eager) is eager
    ours = [record.getMessage() for record in caplog.records if record.name == "compiled_forward"]
    assert len(ours) == 1 and warning in ours[0]


def test_an_archive_without_a_gpu_package_runs_eager_on_a_gpu(
    an_sm_80_gpu: torch.device, caplog: pytest.LogCaptureFixture
) -> None:
    """Not by way of the CPU package (whose target would not match either): it has none for cuda."""
    eager = eager_model()
    cpu_only = {"cpu": CompiledForwardConfig(package="resnet50_cpu.pt2", target=native_target(CPU), max_batch=8)}
    with caplog.at_level(logging.INFO):
        assert select_forward(cpu_only, an_sm_80_gpu, "/nonexistent", eager) is eager
    ours = [record.getMessage() for record in caplog.records if record.name == "compiled_forward"]
    assert ours == ["The archive has no forward compiled for cuda: using the eager model"]


def test_a_package_that_cannot_be_loaded_leaves_the_eager_model_serving(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    eager = eager_model()
    (tmp_path / "resnet50_cpu.pt2").write_bytes(b"not a package")
    damaged = {"cpu": CompiledForwardConfig(package="resnet50_cpu.pt2", target=native_target(CPU), max_batch=8)}
    with caplog.at_level(logging.WARNING):
        assert select_forward(damaged, CPU, str(tmp_path), eager) is eager
    assert "could not be loaded" in caplog.text
