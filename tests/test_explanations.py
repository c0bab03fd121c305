"""Explanations in-process: Grad-CAM on the explanation routes, held to Grad-CAM computed by hand
on torchvision's model; every protocol's form; the crop's box; bad input failing alone."""

from __future__ import annotations

import io
import json
import logging
import sys
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms import v2

import oip
import promised
from answers import HEATMAP_TOLERANCE, VERSION_WEIGHTS, grad_cam_by_hand, heatmaps, reference_model, same_answer
from classification_transforms import ClassificationPreset
from conftest import InProcessModels, each_version
from grad_cam import GradCam
from handler_config import PreprocessConfig
from images import b64, encode, exif_rotated_jpeg, jpeg_with_orientation, noise_image, photo_bytes, sample_photo
from scripts.harness.in_process import InProcessModel, Request, Response

PHOTO = photo_bytes((640, 480))


@pytest.fixture(scope="module", params=each_version())
def model(request: pytest.FixtureRequest, in_process_models: InProcessModels) -> InProcessModel:
    """Each version in turn, from the session's in-process models."""
    return in_process_models[request.param]


def explain(model: InProcessModel, *requests: Request) -> list[Response]:
    return model.infer([request.explaining() for request in requests])


@pytest.mark.checks_the_load
def test_explaining_leaves_the_weights_without_gradients(model: InProcessModel) -> None:
    """The weights ask for no gradient (they are shared with the forward pass), so Grad-CAM's
    backward pass stops at the explained layer and keeps nothing in them."""
    [answer] = explain(model, Request.raw(PHOTO))
    assert answer.status == 200
    weights = list(model.handler.grad_cam.method.forward_func.parameters())
    assert not any(weight.requires_grad for weight in weights)
    assert all(weight.grad is None for weight in weights)


@pytest.mark.checks_the_load
def test_heatmaps_match_grad_cam_computed_by_hand(model: InProcessModel) -> None:
    """The top class of each photo, and three named classes of one: the same maps as Grad-CAM
    by hand on torchvision's model with the archive's weights, on torchvision's preprocessing."""
    photos = [PHOTO, photo_bytes((300, 450)), photo_bytes((800, 800))]
    responses = explain(model, *map(Request.raw, photos), Request.form(data=PHOTO, classes=b"1,500,999"))
    assert [r.status for r in responses] == [200] * 4

    preset = VERSION_WEIGHTS[model.version].transforms()
    batch = torch.stack([preset(Image.open(io.BytesIO(data)).convert("RGB")) for data in photos])
    reference = reference_model(model)
    top = [r.body["predictions"][0]["index"] for r in responses[:3]]
    expected = grad_cam_by_hand(reference, batch, top)
    served = torch.stack([heatmaps(r.body)[0] for r in responses[:3]])
    assert served.shape == (3, 7, 7)
    assert (served - expected).abs().max().item() <= HEATMAP_TOLERANCE
    named = grad_cam_by_hand(reference, batch[:1].expand(3, -1, -1, -1), [1, 500, 999])
    assert (heatmaps(responses[3].body) - named).abs().max().item() <= HEATMAP_TOLERANCE


def test_the_answer_is_the_top_k_a_crop_box_and_a_heatmap_per_class(model: InProcessModel) -> None:
    [predicted] = model.infer([Request.raw(PHOTO)])
    top, named = explain(model, Request.raw(PHOTO), Request.json({"data": b64(PHOTO), "classes": [7, 3]}))
    for answer in (top.body, named.body):
        assert set(answer) == {"predictions", "crop_box", "heatmaps"}
        assert same_answer(answer["predictions"], predicted.body)
        assert answer["crop_box"] == list(model.handler.preset.crop_box((640, 480)))
        for entry in answer["heatmaps"]:
            assert set(entry) == {"index", "label", "probability", "heatmap"}
            assert entry["label"] == model.handler.config.categories[entry["index"]]
            grid = np.asarray(entry["heatmap"])
            assert grid.shape == (7, 7) and grid.min() >= 0 and grid.max() == pytest.approx(1.0)
    assert [entry["index"] for entry in top.body["heatmaps"]] == [predicted.body[0]["index"]]
    assert top.body["heatmaps"][0]["probability"] == pytest.approx(predicted.body[0]["probability"], abs=1e-4)
    assert [entry["index"] for entry in named.body["heatmaps"]] == [7, 3]


def test_every_payload_form_explains_alike(model: InProcessModel) -> None:
    """TorchServe's raw body, form and JSON, KServe v1 and the OIP (JSON, and binary out): the
    same classes explained with the same maps, each in its own protocol's shape."""
    other = photo_bytes((300, 450))
    raw, form, document, v1, v2_json, v2_binary = explain(
        model,
        Request.raw(PHOTO),
        Request.form(data=PHOTO, classes=b"5 9"),
        Request.json({"data": b64(PHOTO), "classes": [5, 9]}),
        Request.kserve({"instances": [b64(PHOTO), {"b64": b64(other)}], "classes": [5, 9]}),
        oip_request([PHOTO, other], binary=False, classes=[5, 9]),
        oip_request([PHOTO, other], binary=True, classes=[5, 9]),
    )
    assert {r.status for r in (raw, form, document, v1, v2_json, v2_binary)} == {200}
    maps = heatmaps(form.body)
    assert torch.allclose(heatmaps(document.body), maps, atol=HEATMAP_TOLERANCE)
    [top] = explain(model, Request.form(data=PHOTO, classes=str(raw.body["predictions"][0]["index"]).encode()))
    assert torch.allclose(heatmaps(raw.body), heatmaps(top.body), atol=HEATMAP_TOLERANCE)
    first, second = v1.body["explanations"]
    assert torch.allclose(heatmaps(first), maps, atol=HEATMAP_TOLERANCE)
    assert first["crop_box"] == form.body["crop_box"] and second["crop_box"] != first["crop_box"]
    for response in (v2_json, v2_binary):
        answer = oip.result(response)
        assert answer.as_numpy("explained_classes").tolist() == [[5, 9], [5, 9]]
        assert np.allclose(answer.as_numpy("heatmaps")[0], maps.numpy(), atol=HEATMAP_TOLERANCE)
        assert np.allclose(answer.as_numpy("heatmaps")[1], heatmaps(second).numpy(), atol=HEATMAP_TOLERANCE)
        assert np.allclose(answer.as_numpy("crop_boxes"), [first["crop_box"], second["crop_box"]], atol=1e-3)
        assert answer.as_numpy(oip.OUTPUT).shape == (2, 1000)
        assert set(sent_in_binary(answer).values()) == {response is v2_binary}


def sent_in_binary(answer: Any) -> dict[str, bool]:
    """For each output of an OIP explanation (a tritonclient InferResult): whether it came in binary."""
    return {
        name: "binary_data_size" in answer.get_output(name).get("parameters", {})
        for name in (oip.OUTPUT, "explained_classes", "heatmaps", "crop_boxes")
    }


def oip_request(images: list[bytes], binary: bool, classes: Any) -> Request:
    """An explanation request as tritonclient writes an inference request, with the classes in
    its parameters: binary, naming no output (so every output comes in binary), or all JSON."""
    if binary:
        return oip.in_process([oip.image_input(images)], parameters={"classes": classes})
    return oip.in_process(
        [oip.image_input(list(map(b64, images)), binary=False)],
        [oip.requested(binary=False)],
        parameters={"classes": classes},
    )


ONE_CLASS_TOO_MANY = list(range(1, promised.MAX_EXPLAINED_CLASSES + 2))


@pytest.mark.parametrize("classes", [1000, -1, [3, 3], ONE_CLASS_TOO_MANY, [2.5], "seven", [], True])
def test_bad_classes_are_a_400_in_every_protocol(model: InProcessModel, classes: Any) -> None:
    responses = explain(
        model,
        Request.json({"data": b64(PHOTO), "classes": classes}),
        Request.kserve({"instances": [b64(PHOTO)], "classes": classes}),
        oip_request([PHOTO], binary=False, classes=classes),
    )
    assert [r.status for r in responses] == [400] * 3
    assert responses[0].body["type"] == "InvalidClasses"
    assert (
        f"'classes' must be 1 to {promised.MAX_EXPLAINED_CLASSES} distinct class indices from 0 to 999"
        in responses[0].body["message"]
    )
    assert responses[1].body["error"].startswith("InvalidClasses: 'classes' must be")
    assert json.loads(responses[2].body)["error"].startswith("InvalidClasses: 'classes' must be")


@pytest.mark.checks_the_load
def test_one_image_may_name_5_classes_from_class_0_to_999(model: InProcessModel) -> None:
    classes = [0, *range(500, 500 + promised.MAX_EXPLAINED_CLASSES - 2), 999]
    [response] = explain(model, Request.json({"data": b64(PHOTO), "classes": classes}))
    assert response.status == 200
    assert [entry["index"] for entry in response.body["heatmaps"]] == classes


def test_a_form_field_names_classes_as_text_and_a_bad_one_says_what_it_got(model: InProcessModel) -> None:
    good, bad, undecodable = explain(
        model,
        Request.form(data=PHOTO, classes=b" 12, 34 "),
        Request.form(data=PHOTO, classes=b"12,x"),
        Request.form(data=PHOTO, classes=b"12,\xff"),  # not UTF-8: still a 400 that shows what it got
    )
    assert [entry["index"] for entry in good.body["heatmaps"]] == [12, 34]
    assert bad.status == 400 and bad.body["message"].endswith("got 'x'")
    assert undecodable.status == 400 and undecodable.body["message"].endswith("got '\ufffd'")


def test_classes_on_a_prediction_route_change_nothing(model: InProcessModel) -> None:
    plain, named = model.infer([Request.raw(PHOTO), Request.json({"data": b64(PHOTO), "classes": "not checked"})])
    assert named.status == 200 and same_answer(named.body, plain.body)


def test_a_bad_request_fails_alone_in_a_batch_of_explanations(model: InProcessModel) -> None:
    """Explanations, a prediction, a bad image and bad classes in one batch: each bad one gets
    its own 400; the others are answered as they are alone."""
    requests = [
        Request.raw(PHOTO).explaining(),
        Request.raw(b"not an image").explaining(),
        Request.raw(PHOTO),
        Request.form(data=PHOTO, classes=b"1000").explaining(),
        Request.kserve({"instances": [b64(PHOTO), b64(b"junk")]}).explaining(),
        Request.form(data=photo_bytes((300, 450)), classes=b"4,2").explaining(),
    ]
    together = model.infer(requests)
    assert [r.status for r in together] == [200, 400, 200, 400, 400, 200]
    assert together[1].body["type"] == "InvalidImage" and together[3].body["type"] == "InvalidClasses"
    assert together[4].body["error"].startswith("InvalidImage: instance 1:")
    for index in (0, 2, 5):
        [alone] = model.infer([requests[index]])
        if index == 2:
            assert same_answer(together[index].body, alone.body)
        else:
            assert same_answer(together[index].body["predictions"], alone.body["predictions"])
            assert torch.allclose(heatmaps(together[index].body), heatmaps(alone.body), atol=HEATMAP_TOLERANCE)


def test_explanations_work_inside_a_callers_inference_mode(model: InProcessModel) -> None:
    """Grad-CAM needs gradients: a worker (or a benchmark) calling the handler under
    torch.inference_mode must still get maps, the same ones."""
    [outside] = explain(model, Request.raw(PHOTO))
    with torch.inference_mode():
        [inside] = explain(model, Request.raw(PHOTO))
    assert inside.status == 200 and torch.allclose(
        heatmaps(inside.body), heatmaps(outside.body), atol=HEATMAP_TOLERANCE
    )


def test_different_images_get_different_maps(model: InProcessModel) -> None:
    """A guard against a map that ignores its image: the photo, noise and the photo turned."""
    images = [PHOTO, encode(noise_image((640, 480))), encode(sample_photo().rotate(180))]
    maps = [heatmaps(r.body)[0] for r in explain(model, *(Request.form(data=data, classes=b"0") for data in images))]
    assert all((maps[i] - maps[j]).abs().max() > 0.1 for i in range(3) for j in range(i + 1, 3))


@pytest.mark.parametrize("size", [(640, 480), (480, 640), (224, 224), (97, 61), (1500, 1000), (333, 500), (1001, 999)])
@pytest.mark.parametrize("resize", [256, 232])
def test_the_crop_box_is_where_the_preset_crops(size: tuple[int, int], resize: int) -> None:
    """Cutting the box out of the photo and scaling it to the crop's size gives the preset's
    crop (up to resampling: the preset scales the whole photo first); a box a few pixels off does not."""
    config = PreprocessConfig(resize, 224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    photo = sample_photo().resize(size)
    preset = ClassificationPreset(config)
    box = preset.crop_box(size)
    crop = preset(photo)

    def cut(left: float, top: float, right: float, bottom: float) -> torch.Tensor:
        return ClassificationPreset(PreprocessConfig(224, 224, config.mean, config.std))(
            photo.resize((224, 224), Image.Resampling.BILINEAR, box=(left, top, right, bottom))
        )

    assert box == pytest.approx(torchvision_crop_box(size, config), abs=0.01)
    assert box == tuple(round(value, 2) for value in box), "docs/explanations.md: to a hundredth of a pixel"
    error = (cut(*box) - crop).abs().mean().item()
    shift = 2 * (box[2] - box[0]) / 224  # two of the crop's pixels, sideways where there is room
    shift = shift if box[2] + shift <= size[0] else -shift
    shifted = (cut(box[0] + shift, box[1], box[2] + shift, box[3]) - crop).abs().mean().item()
    assert error < 0.01 and shifted > 0.1  # measured: at most 0.001, and at least 0.12


def torchvision_crop_box(size: tuple[int, int], config: PreprocessConfig) -> tuple[float, ...]:
    """The reference: the photo's outline taken through torchvision's own resize and crop (as an
    unclamped box), which says where the photo lands in the crop; the crop's place in the photo
    is the inverse of that mapping."""
    width, height = size
    outline = tv_tensors.BoundingBoxes(
        torch.tensor([[0.0, 0.0, width, height]]), format="XYXY", canvas_size=(height, width), clamping_mode=None
    )
    geometry = v2.Compose([v2.Resize(config.resize_size, antialias=True), v2.CenterCrop(config.crop_size)])
    left, top, right, bottom = geometry(outline)[0].tolist()
    x_scale, y_scale = width / (right - left), height / (bottom - top)
    return (-left * x_scale, -top * y_scale, (config.crop_size - left) * x_scale, (config.crop_size - top) * y_scale)


def test_the_crop_box_follows_exif_orientation(model: InProcessModel) -> None:
    """A photo stored on its side is explained as shown: its box is in the upright photo's pixels."""
    upright = sample_photo().resize((400, 300))
    [turned, plain] = explain(
        model, Request.raw(jpeg_with_orientation(upright.rotate(90, expand=True), 6)), Request.raw(encode(upright))
    )
    assert turned.body["crop_box"] == plain.body["crop_box"] == list(model.handler.preset.crop_box((400, 300)))
    # Lossless (PNG with EXIF), so the turned photo's pixels, once upright, are the photo's: the same map.
    exif = Image.Exif()
    exif[0x0112] = 6
    [lossless_turned, lossless_plain] = explain(
        model,
        Request.form(data=encode(upright.rotate(90, expand=True), "PNG", exif=exif.tobytes()), classes=b"7"),
        Request.form(data=encode(upright, "PNG"), classes=b"7"),
    )
    assert (heatmaps(lossless_turned.body) - heatmaps(lossless_plain.body)).abs().max() <= HEATMAP_TOLERANCE
    [rotated] = explain(model, Request.raw(exif_rotated_jpeg()))
    width, height = sample_photo().size
    assert rotated.body["crop_box"] == list(model.handler.preset.crop_box((width, height)))


@pytest.mark.checks_the_load
def test_a_request_may_ask_for_32_heatmaps(model: InProcessModel, monkeypatch: pytest.MonkeyPatch) -> None:
    """8 images x 4 classes, each image's maps for the classes named. Grad-CAM itself is stubbed
    out (32 passes take seconds here); the maps' values are the other tests' business."""
    assert promised.MAX_HEATMAPS_PER_REQUEST == 8 * 4, "at the limit, not under it"
    monkeypatch.setattr(model.handler, "grad_cam", lambda images, classes: torch.zeros(len(images), 7, 7))
    [answered] = explain(model, Request.kserve({"instances": [b64(PHOTO)] * 8, "classes": [1, 2, 3, 4]}))
    assert answered.status == 200
    explanations = answered.body["explanations"]
    assert [[entry["index"] for entry in answer["heatmaps"]] for answer in explanations] == [[1, 2, 3, 4]] * 8


def test_a_full_request_may_be_explained_for_each_images_top_class(
    model: InProcessModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No classes named: one map per image, so a request of the most images allowed is answered."""
    assert promised.MAX_IMAGES_PER_REQUEST == promised.MAX_HEATMAPS_PER_REQUEST, "at the limit, not under it"
    monkeypatch.setattr(model.handler, "grad_cam", lambda images, classes: torch.zeros(len(images), 7, 7))
    [answered] = explain(model, Request.kserve({"instances": [b64(PHOTO)] * promised.MAX_IMAGES_PER_REQUEST}))
    assert answered.status == 200
    assert [len(answer["heatmaps"]) for answer in answered.body["explanations"]] == [1] * 32


@pytest.mark.checks_the_load
def test_too_many_heatmaps_are_a_413_before_any_work(model: InProcessModel) -> None:
    """A request may ask for 32 maps (images x classes): a batch's passes must fit in the response timeout."""
    eleven = {"instances": [b64(PHOTO)] * 11, "classes": [1, 2, 3]}
    [refused] = explain(model, Request.kserve(eleven))
    assert refused.status == 413
    assert refused.body["error"] == (
        "TooManyHeatmaps: the request asks for 33 heatmaps (11 images x 3 classes); "
        f"the limit is {promised.MAX_HEATMAPS_PER_REQUEST} per request. Send fewer images or classes"
    )


def test_a_failing_explanation_fails_only_the_requests_that_asked(
    model: InProcessModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Grad-CAM raising (a bug, a GPU out of memory): the explanation requests get a 500 naming it,
    the predictions batched with them their answers, and the worker goes on."""

    def out_of_memory(images: torch.Tensor, classes: list[int]) -> torch.Tensor:
        raise RuntimeError("out of memory")

    monkeypatch.setattr(model.handler, "grad_cam", out_of_memory)
    [plain] = model.infer([Request.raw(PHOTO)])
    explained, predicted = model.infer([Request.raw(PHOTO).explaining(), Request.raw(PHOTO)])
    assert explained.status == 500 and explained.body["type"] == "InternalError"
    assert "could not explain these images (RuntimeError('out of memory'))" in explained.body["message"]
    assert predicted.status == 200 and same_answer(predicted.body, plain.body)


@pytest.mark.checks_the_load
def test_without_captum_a_worker_classifies_and_says_why_it_cannot_explain(
    model: InProcessModel, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "captum.attr", None)  # what an image without captum gives
    with caplog.at_level(logging.WARNING):
        assert GradCam.for_model(reference_model(model)) is None
    assert "captum cannot be imported" in caplog.text
    monkeypatch.setattr(model.handler, "grad_cam", None)
    explained, predicted = model.infer([Request.raw(PHOTO).explaining(), Request.raw(PHOTO)])
    assert explained.status == 501 and explained.body["type"] == "ExplanationsUnavailable"
    assert "captum is not installed" in explained.body["message"]
    assert predicted.status == 200


def test_an_error_message_never_echoes_a_huge_value(model: InProcessModel) -> None:
    [refused] = explain(model, Request.json({"data": b64(PHOTO), "classes": ["x" * 100_000]}))
    assert refused.status == 400 and len(refused.body["message"]) < 200


@pytest.mark.parametrize(
    ("classes", "quoted"),
    [
        (list(range(1, 9)), "got [1, 2, 3, 4, 5, 6, 7, 8]"),
        (list(range(1, 10)), "got [1, 2, 3, 4, 5, 6, 7, 8, ...]"),
        (["x" * 38], "got '" + "x" * 38 + "'"),
        (["x" * 39], "got '" + "x" * 36 + "..."),
    ],
    ids=["8 values", "9 values", "a value of 40 characters", "a value of 41 characters"],
)
def test_an_error_message_quotes_at_most_8_values_of_40_characters(
    model: InProcessModel, classes: list[Any], quoted: str
) -> None:
    """The values as the client wrote them (repr: a string's quotes count), cut beyond those bounds."""
    [refused] = explain(model, Request.json({"data": b64(PHOTO), "classes": classes}))
    assert refused.status == 400 and refused.body["message"].endswith(quoted)


def test_binary_data_output_is_the_default_for_the_outputs_a_request_does_not_name(model: InProcessModel) -> None:
    """The request asks for every output in binary, and for its probabilities in JSON: the three
    explanation outputs, which it cannot name, come in binary."""
    document = {
        "inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [b64(PHOTO)]}],
        "parameters": {"binary_data_output": True},
        "outputs": [{"name": "probabilities", "parameters": {"binary_data": False}}],
    }
    [response] = explain(model, Request.kserve(document))
    answer = oip.result(response)
    assert sent_in_binary(answer) == {
        oip.OUTPUT: False,
        "explained_classes": True,
        "heatmaps": True,
        "crop_boxes": True,
    }


def test_each_image_of_a_request_is_explained_for_its_own_top_class(model: InProcessModel) -> None:
    """One request of two images, no classes named: each image's own top class, not the first's."""
    images = [PHOTO, encode(noise_image((320, 240)))]
    tops = [response.body[0]["index"] for response in model.infer([Request.raw(image) for image in images])]
    [answer] = explain(model, Request.kserve({"instances": [b64(image) for image in images]}))
    assert tops[0] != tops[1], "two images of different top classes, or this test shows nothing"
    assert [explained["heatmaps"][0]["index"] for explained in answer.body["explanations"]] == tops
