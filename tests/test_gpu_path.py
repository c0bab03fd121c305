"""The GPU fast path's logic, run on the CPU (this machine has no GPU; docs/benchmarks.md says
what has and has not run on one).

Tolerances: preprocessing on float pixels differs from torchvision's uint8 pipeline by at most
0.02 after normalisation (about one grey level). The fp16 forward gives the same top-1 class as
fp32 with probabilities within 0.04: measured up to 0.03 here with the seeded random weights,
whose answers swing more with small perturbations than trained weights do, in the CPU's fp16
arithmetic (a GPU accumulates in fp32).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import cast

import pytest
import torch
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.models import ResNet
from torchvision.transforms import v2

import compiled_forward
from answers import HEATMAP_TOLERANCE, direct_probabilities, grad_cam_by_hand, reference_model
from classification_transforms import ClassificationPreset
from compiled_forward import for_inference
from gpu_preprocessing import GpuPreprocessor
from handler_config import InputLimits, PreprocessConfig
from image_decoding import decode_rgb, is_plain_jpeg, open_checked
from images import encode, exif_rotated_jpeg, noise_image, photo_bytes, sample_photo
from model_identity import architecture, weight_sets
from request_errors import RequestError
from resnet50_handler import ResNet50Handler
from scripts.harness.in_process import InProcessModel, Request

WEIGHTS = weight_sets()["IMAGENET1K_V2"]
PRESET = WEIGHTS.transforms()
CONFIG = PreprocessConfig(
    resize_size=PRESET.resize_size[0], crop_size=PRESET.crop_size[0], mean=tuple(PRESET.mean), std=tuple(PRESET.std)
)
TOLERANCE = 0.02
FP16_TOLERANCE = 0.04
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def preprocessor() -> Iterator[GpuPreprocessor]:
    with ThreadPoolExecutor(max_workers=2) as pool:
        yield GpuPreprocessor(ClassificationPreset(CONFIG), CPU, torch.float32, pool)


def opened(data: bytes) -> tuple[bytes, Image.Image]:
    return data, open_checked(data, InputLimits())


def cpu_path(data: bytes) -> torch.Tensor:
    preprocessed: torch.Tensor = PRESET(decode_rgb(data, InputLimits()))
    return preprocessed


def decoded_jpeg(data: bytes) -> torch.Tensor:
    """torchvision's JPEG decoder on one file, to RGB."""
    # cast: decode_jpeg takes one tensor or a list of them, and is typed to return either; given one, one.
    return cast(torch.Tensor, decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB))


@pytest.fixture
def as_on_a_gpu(model: InProcessModel, monkeypatch: pytest.MonkeyPatch) -> Callable[[torch.dtype], None]:
    """Configures the session's model as initialize() does when TorchServe gives it a GPU, with the
    CPU standing in for the GPU: the eager model in `dtype`, channels_last, and the GPU preprocessor.
    Through monkeypatch, so the model is as loaded again after the test."""
    handler = model.handler

    def configure(dtype: torch.dtype) -> None:
        monkeypatch.setattr(handler, "dtype", dtype)
        monkeypatch.setattr(handler, "forward", handler._eager(handler._load_model(model.service.context)))
        monkeypatch.setattr(
            handler, "gpu_preprocessor", GpuPreprocessor(handler.preset, CPU, dtype, handler.preprocessing_pool)
        )

    return configure


@pytest.mark.parametrize("size", [(640, 480), (333, 500), (1632, 1224), (97, 61)])
def test_the_tensor_preset_matches_torchvision_on_decoded_jpegs(size: tuple[int, int]) -> None:
    data = photo_bytes(size)
    decoded = decoded_jpeg(data)
    ours = ClassificationPreset(CONFIG).tensor(decoded, torch.float32)
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
    payloads = [
        photo_bytes((640, 480)),
        encode(sample_photo(), "PNG"),
        exif_rotated_jpeg(),
        photo_bytes(mode="CMYK"),
        encode(sample_photo(), "JPEG", progressive=True),
        photo_bytes(mode="L"),
    ]
    refused = RequestError(400, "InvalidImage", "not an image")
    results = preprocessor([opened(data) for data in payloads] + [refused])
    assert results[-1] is refused
    # The last result is the refused request's own RequestError (checked above); the payloads' are
    # tensors, which mypy cannot tell from the list's type (Tensor | RequestError).
    for data, result in zip(payloads, cast(list[torch.Tensor], results[:-1]), strict=True):
        assert (result - cpu_path(data)).abs().max().item() <= TOLERANCE


def test_a_corrupt_jpeg_fails_alone_when_the_batched_decode_fails(
    preprocessor: GpuPreprocessor, caplog: pytest.LogCaptureFixture
) -> None:
    good, other = photo_bytes((400, 300)), photo_bytes((300, 400))
    truncated = good[: len(good) // 2]  # its header passes the checks; its pixels cannot be decoded
    with caplog.at_level(logging.INFO):
        results = preprocessor([opened(good), opened(truncated), opened(other)])
    assert "Batched JPEG decode failed" in caplog.text
    assert isinstance(results[1], RequestError) and results[1].kind == "CorruptImage"
    alone = preprocessor([opened(good), opened(other)])
    # The good JPEGs' results are tensors, which mypy cannot tell from the list's type (Tensor | RequestError).
    assert torch.equal(results[0], alone[0]) and torch.equal(results[2], alone[1])  # type: ignore[arg-type]


def float_preset(image: torch.Tensor) -> torch.Tensor:
    """The GPU path's preprocessing, written independently with torchvision's float transforms."""
    preprocessed: torch.Tensor = v2.Compose(
        [
            v2.ToDtype(torch.float32, scale=False),
            v2.Resize(CONFIG.resize_size, antialias=True),
            v2.CenterCrop(CONFIG.crop_size),
            v2.Lambda(lambda pixels: pixels / 255),
            v2.Normalize(mean=list(CONFIG.mean), std=list(CONFIG.std)),
        ]
    )(image)
    return preprocessed


DISTINCT_IMAGES: dict[str, Callable[[], bytes]] = {
    "photo (JPEG, batched decode)": lambda: photo_bytes((640, 480)),
    "colours swapped (JPEG, batched decode)": lambda: encode(Image.merge("RGB", sample_photo().split()[::-1])),
    "noise (PNG, Pillow)": lambda: encode(noise_image((300, 300)), "PNG"),
    "red (PNG, Pillow)": lambda: encode(Image.new("RGB", (320, 240), "red"), "PNG"),
}


def test_the_handlers_gpu_branch_answers_as_torchvision_does(
    model: InProcessModel, as_on_a_gpu: Callable[[torch.dtype], None]
) -> None:
    """Batched decode and the preset on the device, forward, top-k: the same top-5 as
    torchvision's own model on the same decoded pixels, and different images tell apart."""
    payloads = [make() for make in DISTINCT_IMAGES.values()]
    as_on_a_gpu(torch.float32)
    responses = model.infer([Request.raw(payloads[0]), Request.raw(b"junk"), *map(Request.raw, payloads[1:])])
    assert [r.status for r in responses] == [200, 400, 200, 200, 200]
    answers = [responses[0], *responses[2:]]
    pixels = [
        decoded_jpeg(data) if data[:2] == b"\xff\xd8" else v2.functional.pil_to_tensor(decode_rgb(data, InputLimits()))
        for data in payloads
    ]
    expected = direct_probabilities(model, torch.stack([float_preset(image) for image in pixels]))
    for answer, probabilities in zip(answers, expected, strict=True):
        top = torch.topk(probabilities, k=5)
        assert [p["index"] for p in answer.body] == top.indices.tolist()
        assert [p["probability"] for p in answer.body] == pytest.approx(top.values.tolist(), abs=1e-4)
    assert len({answer.body[0]["index"] for answer in answers}) == len(answers)


def test_the_handlers_fp16_path_agrees_with_fp32(
    model: InProcessModel, as_on_a_gpu: Callable[[torch.dtype], None]
) -> None:
    """fp16 weights and inputs, channels_last, through the handler's GPU branch: the same top-1
    and close probabilities, on images with different answers."""
    requests = [Request.raw(make()) for make in DISTINCT_IMAGES.values()]
    as_on_a_gpu(torch.float32)
    full = model.infer(requests)
    as_on_a_gpu(torch.float16)
    assert next(model.handler.forward.parameters()).dtype == torch.float16
    half = model.infer(requests)
    for fp32, fp16 in zip(full, half, strict=True):
        assert fp16.status == fp32.status == 200
        assert fp16.body[0]["index"] == fp32.body[0]["index"]
        assert [p["probability"] for p in fp16.body] == pytest.approx(
            [p["probability"] for p in fp32.body], abs=FP16_TOLERANCE
        )


def test_the_fp16_forward_is_made_from_a_copy_of_the_fp32_model(
    model: InProcessModel, as_on_a_gpu: Callable[[torch.dtype], None]
) -> None:
    """Grad-CAM explains with the fp32 model the fp16 forward is made from: it must stay fp32."""
    as_on_a_gpu(torch.float16)
    fp32 = model.handler._load_model(model.service.context)
    model.handler._eager(fp32)
    assert {weight.dtype for weight in fp32.parameters()} == {torch.float32}


def test_in_fp32_the_eager_forward_is_the_explained_model_itself(model: InProcessModel) -> None:
    """On a CPU the eager forward and Grad-CAM share one model: a copy would hold the weights twice."""
    fp32 = model.handler._load_model(model.service.context)
    assert model.handler._eager(fp32) is fp32


def test_the_explained_model_is_fp32_on_the_workers_device(
    model: InProcessModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever precision the device's forward runs in (fp16 on a GPU, as patched here); the meta
    device stands in for the GPU."""
    monkeypatch.setattr(model.handler, "device", torch.device("meta"))
    monkeypatch.setattr(compiled_forward, "inference_dtype", lambda device: torch.float16)
    explained = model.handler._load_model(model.service.context)
    assert {(weight.device.type, weight.dtype) for weight in explained.parameters()} == {("meta", torch.float32)}


def test_torchserves_gpu_id_selects_that_gpu_and_without_cuda_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    selected: list[int] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", selected.append)
    handler = ResNet50Handler()
    assert handler._select_device(1) == torch.device("cuda", 1)
    assert selected == [1]
    assert handler._select_device(None) == CPU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert handler._select_device(0) == CPU
    assert selected == [1]


def test_the_model_for_inference_on_a_gpu_is_fp16_and_channels_last() -> None:
    # cast: for_inference returns the module it is given (a ResNet here), prepared.
    model = cast(ResNet, for_inference(architecture(), CPU, torch.float16))
    assert all(parameter.dtype == torch.float16 for parameter in model.parameters())
    assert model.conv1.weight.is_contiguous(memory_format=torch.channels_last)


def test_the_handlers_gpu_branch_explains_in_fp32(
    model: InProcessModel, as_on_a_gpu: Callable[[torch.dtype], None]
) -> None:
    """fp16 preprocessing and forward, as on a GPU: Grad-CAM still runs in fp32 on the eager
    weights, on the fp16 images upcast: Grad-CAM by hand on those images gives the same maps.
    One image of each decode path: Grad-CAM takes seconds an image here."""
    payloads = [DISTINCT_IMAGES[name]() for name in ("photo (JPEG, batched decode)", "noise (PNG, Pillow)")]
    as_on_a_gpu(torch.float16)
    answers = model.infer([Request.form(data=data, classes=b"1,2").explaining() for data in payloads])
    assert next(model.handler.grad_cam.method.forward_func.parameters()).dtype == torch.float32
    pixels = [
        decoded_jpeg(data) if data[:2] == b"\xff\xd8" else v2.functional.pil_to_tensor(decode_rgb(data, InputLimits()))
        for data in payloads
    ]
    for answer, image in zip(answers, pixels, strict=True):
        assert answer.status == 200
        fp16_image = float_preset(image).half().float()
        expected = grad_cam_by_hand(reference_model(model), fp16_image.expand(2, -1, -1, -1), [1, 2])
        served_maps = torch.tensor([entry["heatmap"] for entry in answer.body["heatmaps"]])
        # The handler's preset rounds to fp16 from its own float arithmetic, this one from
        # torchvision's: a few inputs land on the other side of an fp16 step (measured: 0.003).
        assert (served_maps - expected).abs().max() <= 10 * HEATMAP_TOLERANCE
