"""The GPU fast path's logic, run on the CPU (this machine has no GPU; see the README's
benchmark section for what was measured on one).

Tolerances: preprocessing on float pixels differs from torchvision's uint8 pipeline by at most
0.02 after normalisation (about one grey level); fp16 probabilities agree with fp32 to 1e-2
with the same top-1 class.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
import torchvision
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.models import ResNet50_Weights

from gpu_preprocessing import GpuPreprocessor, TensorPreset
from handler_config import InputLimits, PreprocessConfig
from image_decoding import decode_rgb, is_plain_jpeg, open_checked
from images import encode, photo_bytes, sample_photo
from scripts.in_process import InProcessModel, Request
from request_errors import RequestError
from scripts.paths import archive_name
from test_bad_input import exif_rotated_jpeg

WEIGHTS = ResNet50_Weights.IMAGENET1K_V2
PRESET = WEIGHTS.transforms()
CONFIG = PreprocessConfig(resize_size=PRESET.resize_size[0], crop_size=PRESET.crop_size[0],
                          mean=tuple(PRESET.mean), std=tuple(PRESET.std))
TOLERANCE = 0.02
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def preprocessor() -> GpuPreprocessor:
    return GpuPreprocessor(CONFIG, CPU, torch.float32, ThreadPoolExecutor(max_workers=2))


def opened(data: bytes) -> tuple[bytes, Image.Image]:
    return data, open_checked(data, InputLimits())


def cpu_path(data: bytes) -> torch.Tensor:
    return PRESET(decode_rgb(data, InputLimits()))


@pytest.mark.parametrize("size", [(640, 480), (333, 500), (1632, 1224), (97, 61)])
def test_the_tensor_preset_matches_torchvision_on_decoded_jpegs(size: tuple[int, int]) -> None:
    data = photo_bytes(size)
    decoded = decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
    ours = TensorPreset(CONFIG, CPU, torch.float32)(decoded)
    assert ours.shape == (3, 224, 224)
    assert (ours - PRESET(decoded)).abs().max().item() <= TOLERANCE


def test_only_plain_jpegs_go_to_the_jpeg_decoder() -> None:
    assert is_plain_jpeg(opened(photo_bytes())[1])
    assert is_plain_jpeg(opened(photo_bytes(mode="L"))[1])
    assert not is_plain_jpeg(opened(photo_bytes(mode="CMYK"))[1])
    assert not is_plain_jpeg(opened(encode(sample_photo(), "JPEG", progressive=True))[1])
    assert not is_plain_jpeg(opened(exif_rotated_jpeg())[1])
    assert not is_plain_jpeg(opened(encode(sample_photo(), "PNG"))[1])


def test_a_mixed_batch_matches_the_cpu_path(preprocessor: GpuPreprocessor) -> None:
    payloads = [photo_bytes((640, 480)), encode(sample_photo(), "PNG"), exif_rotated_jpeg(),
                photo_bytes(mode="CMYK"), encode(sample_photo(), "JPEG", progressive=True), photo_bytes(mode="L")]
    refused = RequestError(400, "InvalidImage", "not an image")
    results = preprocessor([opened(data) for data in payloads] + [refused])
    assert results[-1] is refused
    for data, result in zip(payloads, results):
        assert (result - cpu_path(data)).abs().max().item() <= TOLERANCE


def test_a_corrupt_jpeg_fails_alone_when_the_batched_decode_fails(preprocessor: GpuPreprocessor) -> None:
    good = photo_bytes((400, 300))
    corrupt = good[:600] + bytes(len(good) - 600)  # header intact, scan data zeroed
    results = preprocessor([opened(good), opened(corrupt), opened(good)])
    assert isinstance(results[0], torch.Tensor) and isinstance(results[2], torch.Tensor)
    assert isinstance(results[1], (torch.Tensor, RequestError))  # libjpeg may conceal damage, never raise


def test_fp16_agrees_with_fp32() -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet50().eval()
    batch = torch.stack([cpu_path(photo_bytes((500 + 40 * i, 400))) for i in range(3)])
    with torch.inference_mode():
        full = torch.softmax(model(batch), dim=1)
        half = torch.softmax(model.half()(batch.half()).float(), dim=1)
    assert torch.equal(full.argmax(dim=1), half.argmax(dim=1))
    assert (full - half).abs().max().item() <= 1e-2


def test_the_handler_serves_through_the_gpu_preprocessor(model_store: Path, tmp_path: Path) -> None:
    """The handler's GPU branch (batched decode, preset on the device), here with the CPU as device."""
    model = InProcessModel(model_store / archive_name("2.0"), tmp_path)
    handler = model.handler
    requests = [Request.raw(photo_bytes((640, 480))), Request.raw(b"junk"), Request.raw(encode(sample_photo(), "PNG"))]
    on_cpu = model.infer(requests)
    handler.gpu_preprocessor = GpuPreprocessor(handler.config.preprocess, CPU, torch.float32,
                                               handler.preprocessing_pool)
    on_gpu_path = model.infer(requests)
    assert [r.status for r in on_gpu_path] == [r.status for r in on_cpu] == [200, 400, 200]
    for fast, reference in zip(on_gpu_path[0::2], on_cpu[0::2]):
        assert [p["index"] for p in fast.body][:1] == [p["index"] for p in reference.body][:1]
        assert [p["probability"] for p in fast.body] == pytest.approx([p["probability"] for p in reference.body],
                                                                      abs=2e-2)


