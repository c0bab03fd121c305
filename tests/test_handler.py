"""The handler in-process: fidelity to torchvision's own pipeline, payload forms and batching."""

from __future__ import annotations

import io
import json
import pickle
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image
from torchvision.models import WeightsEnum

import promised
from answers import VERSION_WEIGHTS, direct_probabilities, same_answer
from conftest import InProcessModels, each_version
from handler_config import HandlerConfig
from image_decoding import decode_rgb
from images import b64, encode, photo_bytes, sample_photo
from scripts.harness.in_process import InProcessModel, Request


@pytest.fixture(scope="module", params=each_version())
def model(request: pytest.FixtureRequest, in_process_models: InProcessModels) -> InProcessModel:
    """Each version in turn, from the session's in-process models."""
    return in_process_models[request.param]


def reference_weights(model: InProcessModel) -> WeightsEnum:
    return VERSION_WEIGHTS[model.version]


@pytest.mark.parametrize(
    ("size", "mode"),
    [
        ((640, 480), "RGB"),
        ((333, 500), "RGB"),
        ((224, 224), "RGB"),
        ((1500, 1000), "RGB"),
        ((97, 61), "RGB"),
        ((500, 375), "L"),
        ((500, 375), "CMYK"),
        ((400, 300), "P"),
        ((400, 300), "RGBA"),
    ],
)
@pytest.mark.checks_the_load
def test_preprocessing_matches_torchvision(model: InProcessModel, size: tuple[int, int], mode: str) -> None:
    image = sample_photo().resize(size).convert(mode)
    data = encode(image, "PNG" if mode in ("P", "RGBA") else "JPEG" if mode != "CMYK" else "TIFF")
    ours = model.handler.preset(decode_rgb(data, model.handler.config.limits))
    theirs = reference_weights(model).transforms()(Image.open(io.BytesIO(data)).convert("RGB"))
    assert ours.shape == theirs.shape == (3, 224, 224)
    assert (ours - theirs).abs().max().item() <= 1e-5


@pytest.mark.parametrize("version", sorted(VERSION_WEIGHTS))
@pytest.mark.checks_the_load
def test_archive_carries_the_weights_preprocessing(in_process_models: InProcessModels, version: str) -> None:
    """Every version, under `make mutants` too (each_version): its settings are what set the
    versions apart."""
    model = in_process_models[version]
    config: HandlerConfig = model.handler.config
    preset = reference_weights(model).transforms()
    assert config.preprocess.resize_size == preset.resize_size[0] == {"1.0": 256, "2.0": 232}[model.version]
    assert config.preprocess.crop_size == 224
    assert list(config.preprocess.mean) == preset.mean and list(config.preprocess.std) == preset.std
    assert list(config.categories) == reference_weights(model).meta["categories"]
    assert config.weights == reference_weights(model).name == {"1.0": "IMAGENET1K_V1", "2.0": "IMAGENET1K_V2"}[version]
    assert config.random_weights


@pytest.mark.checks_the_load
def test_outputs_match_direct_torchvision_inference(model: InProcessModel) -> None:
    photos = [photo_bytes((640, 480)), photo_bytes((300, 450)), photo_bytes((800, 800))]
    responses = model.infer([Request.raw(data) for data in photos])

    preset = reference_weights(model).transforms()
    batch = torch.stack([preset(Image.open(io.BytesIO(data)).convert("RGB")) for data in photos])
    probabilities = direct_probabilities(model, batch)

    for response, expected in zip(responses, probabilities, strict=True):
        assert response.status == 200
        top = torch.topk(expected, k=promised.TOPK)
        assert [p["index"] for p in response.body] == top.indices.tolist()
        assert [p["probability"] for p in response.body] == pytest.approx(top.values.tolist(), abs=1e-4)
        assert [p["label"] for p in response.body] == [preset_label(model, i) for i in top.indices.tolist()]


def preset_label(model: InProcessModel, index: int) -> str:
    label: str = reference_weights(model).meta["categories"][index]
    return label


@pytest.mark.checks_the_load
def test_topk_is_an_ordered_list_of_label_index_probability(model: InProcessModel) -> None:
    [response] = model.infer([Request.raw(photo_bytes())])
    assert response.status == 200
    assert [set(p) for p in response.body] == [{"label", "index", "probability"}] * promised.TOPK
    probabilities = [p["probability"] for p in response.body]
    assert probabilities == sorted(probabilities, reverse=True)


@pytest.mark.checks_the_load
def test_labels_carry_their_class_index(model: InProcessModel) -> None:
    """ImageNet names repeat in some lists ("crane", "maillot"): the index is what identifies a class."""
    [response] = model.infer([Request.raw(photo_bytes())])
    assert [p["label"] for p in response.body] == [model.handler.config.categories[p["index"]] for p in response.body]


def test_every_payload_form_gives_the_same_answer(model: InProcessModel) -> None:
    data = photo_bytes((400, 300))
    responses = model.infer(
        [
            Request.raw(data),
            Request.raw(data, "application/octet-stream"),
            Request.form(data=data),
            Request.json({"data": b64(data)}),
        ]
    )
    assert {r.status for r in responses} == {200}
    assert all(same_answer(r.body, responses[0].body) for r in responses)


def test_a_batch_of_n_gives_n_answers_in_order(model: InProcessModel) -> None:
    photos = [photo_bytes((300 + 50 * i, 300)) for i in range(5)]
    batched = model.infer([Request.raw(data) for data in photos])
    alone = [model.infer([Request.raw(data)])[0] for data in photos]
    assert len(batched) == len(photos)
    assert all(same_answer(together.body, one.body) for one, together in zip(alone, batched, strict=True))


def test_a_bad_request_fails_alone_in_its_batch(model: InProcessModel) -> None:
    good = photo_bytes()
    responses = model.infer([Request.raw(good), Request.raw(b"not an image"), Request.raw(good)])
    assert [r.status for r in responses] == [200, 400, 200]
    assert responses[1].body["type"] == "InvalidImage"
    assert same_answer(responses[0].body, responses[2].body)


def test_a_json_body_declared_with_parameters_or_in_capitals_is_read_as_json(model: InProcessModel) -> None:
    """TorchServe parses only an exact `application/json`; the handler reads JSON's other spellings."""
    photo = photo_bytes((320, 240))
    document = json.dumps({"data": b64(photo)}).encode()
    charset, two, capitals, plain = model.infer(
        [
            Request.raw(document, "application/json; charset=utf-8"),
            Request.raw(document, "application/json; charset=utf-8; q=1"),
            Request.raw(document, "Application/JSON"),
            Request.raw(photo),
        ]
    )
    assert all(same_answer(answer.body, plain.body) for answer in (charset, two, capitals))


class RunsCodeOnLoad:
    """What a tampered weights file can hold: unpickling it calls print, as it could call anything."""

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return print, ("this ran while the weights loaded",)


def test_weights_that_would_run_code_on_load_are_refused(model: InProcessModel, tmp_path: Path) -> None:
    """The weights are read as data only (torch.load's weights_only), so a file that would call
    something on load fails to load instead."""
    torch.save({"conv1.weight": RunsCodeOnLoad()}, tmp_path / "weights.pth")
    context = SimpleNamespace(
        system_properties={"model_dir": str(tmp_path)}, manifest={"model": {"serializedFile": "weights.pth"}}
    )
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        model.handler._load_model(context)
