"""The archive's ahead-of-time compiled forward: used where it was compiled for this device (in
chunks of its batch size for larger batches), the eager model everywhere else. (That its answers match torchvision's is
test_handler's test_outputs_match_direct_torchvision_inference, which runs through it.)"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

import compiled_forward
from answers import same_answer
from compiled_forward import CompiledForward, for_inference, inference_dtype, native_target, select_forward
from handler_config import CompiledForwardConfig
from images import photo_bytes
from model_identity import architecture
from scripts.harness.in_process import InProcessModel, Request
from scripts.packaging.compile_forward import missing_compiler
from scripts.paths import archive_name

CPU = torch.device("cpu")
PHOTO = photo_bytes((500, 400))


def eager_model() -> torch.nn.Module:
    return architecture().eval().to(memory_format=torch.channels_last)


@pytest.mark.skipif(missing_compiler() is not None, reason="no C++ compiler: archives are built eager-only")
@pytest.mark.checks_the_load
def test_the_archive_carries_a_forward_compiled_for_this_cpu(model: InProcessModel) -> None:
    handler = model.handler
    package = handler.config.compiled_forward["cpu"]
    assert package.target == native_target(CPU)
    assert package.max_batch == 8  # the archive's batchSize: every batch TorchServe can form
    assert isinstance(handler.forward, CompiledForward)


@pytest.mark.checks_the_load
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


def test_an_archive_compiled_for_another_cpu_serves_the_same_answers_eagerly(
    model: InProcessModel, model_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Loaded where its package does not fit, the archive serves its eager model, whose answers are
    the compiled one's."""
    monkeypatch.setattr(compiled_forward, "native_target", lambda device: "ANOTHER-CPU")
    with InProcessModel.from_archive(model_store / archive_name(model.version), tmp_path) as eager:
        assert not isinstance(eager.handler.forward, CompiledForward)
        assert eager.handler.metrics.forward == ["eager", "cpu"]  # the Forward and Device its batches are counted by
        [answer] = eager.infer([Request.raw(PHOTO)])
    [compiled] = model.infer([Request.raw(PHOTO)])
    assert answer.status == compiled.status == 200
    assert same_answer(answer.body, compiled.body)


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
    gpu = torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "get_device_capability", {gpu: (8, 0)}.__getitem__)  # of that GPU only
    return gpu


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


def test_a_gpu_runs_fp16_and_a_cpu_fp32() -> None:
    assert inference_dtype(torch.device("cuda", 0)) == torch.float16
    assert inference_dtype(CPU) == torch.float32


def test_a_model_for_inference_is_on_its_device_in_its_devices_precision() -> None:
    """On the meta device (no memory, no GPU needed), which like a CPU runs float32."""
    model = for_inference(eager_model(), torch.device("meta"))
    assert {(weight.device.type, weight.dtype) for weight in model.parameters()} == {("meta", torch.float32)}


@pytest.mark.parametrize(("device", "index"), [(CPU, -1), (torch.device("cuda", 1), 1)])
def test_a_package_is_loaded_for_its_devices_index(
    monkeypatch: pytest.MonkeyPatch, device: torch.device, index: int
) -> None:
    """AOTInductor takes -1 for a device without an index (the CPU)."""
    loaded: list[tuple[str, int]] = []
    monkeypatch.setattr(
        torch._inductor, "aoti_load_package", lambda path, device_index: loaded.append((path, device_index))
    )
    compiled_forward.load_package("resnet50.pt2", device)
    assert loaded == [("resnet50.pt2", index)]


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
