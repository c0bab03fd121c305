"""TorchServe handler for torchvision's ResNet50: read -> decode -> transform -> batch -> forward -> top-k.

Every protocol (TorchServe's own forms, KServe v1, the Open Inference Protocol over REST and
gRPC) is read by its own module into image files, and those of the whole batch go through one
forward pass. A request with a bad image gets its own 4xx answer naming the problem (and the
image, where it sent several); its batch-mates are classified as usual.

Requests on TorchServe's explanation routes (`/explanations`, KServe's `:explain` and
`/explain`) are classified in the same batch, then explained together by Grad-CAM on the eager
model: where in each image the evidence for its top class (or the classes it names) lies.
"""

from __future__ import annotations

import copy
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch
import torchvision
from ts.torch_handler.base_handler import BaseHandler

from classification_transforms import Box, classification_preset, crop_box
from compiled_forward import CompiledForward, for_inference, inference_dtype, select_forward
from gpu_preprocessing import GpuPreprocessor, Opened, Prepared
from grad_cam import GradCam
from handler_config import HandlerConfig
from handler_metrics import EXPLAIN_STAGE, OK, HandlerMetrics
from image_decoding import load_rgb, open_checked, upright_size
from protocols import read_request
from request_errors import RequestError
from wire_format import Explanation, Reply, Scores, ServedModel, WireRequest, explained_classes, sent_over_http

# TorchServe sets it to "True" on the explanation routes and to "False" on the prediction routes.
EXPLAIN_HEADER = "explain"

logger = logging.getLogger(__name__)


class ResNet50Handler(BaseHandler):
    """ImageNet classification with the preprocessing of the weights it was built with."""

    def initialize(self, context: Any) -> None:
        self.context = context
        self.config = HandlerConfig.from_yaml(context.model_yaml_config.get("handler"))
        self.model_id = ServedModel(context.manifest["model"]["modelName"],
                                    context.manifest["model"]["modelVersion"], len(self.config.categories))
        self.device = self._select_device(context.system_properties.get("gpu_id"))
        self.dtype = inference_dtype(self.device)
        model = self._load_model(context)
        self.grad_cam = GradCam.for_model(model)  # explanations: the eager model in fp32, kept; None without captum
        self.forward = select_forward(self.config.compiled_forward, self.device,
                                      context.system_properties["model_dir"], self._eager(model))
        self.transform = classification_preset(self.config.preprocess)
        # Decoding and resizing release the GIL, so a batch is preprocessed on all our threads.
        self.preprocessing_pool = ThreadPoolExecutor(max_workers=torch.get_num_threads())
        self.gpu_preprocessor = GpuPreprocessor(self.config.preprocess, self.device, self.dtype,
                                                self.preprocessing_pool) if self.device.type == "cuda" else None
        forward = "compiled" if isinstance(self.forward, CompiledForward) else "eager"
        # "cuda0", not "cuda:0": TorchServe's metric lines use ":" between a dimension's name and value.
        self.metrics = HandlerMetrics(context.metrics, self.model_id, forward, str(self.device).replace(":", ""))
        self.initialized = True
        if self.config.random_weights:
            logger.warning("This archive holds SEEDED RANDOM weights: its labels are meaningless")
        logger.info("ResNet50 (%s) ready on %s with %d intra-op threads, %s forward",
                    self.config.weights, self.device, torch.get_num_threads(), forward)

    def handle(self, data: list[dict[str, Any]], context: Any) -> list[Any]:
        """Read each request's images in its protocol, decode + transform them all, forward the
        good requests' images as one batch, and answer each request in its own protocol."""
        self.context = context
        with self.metrics.stage("handler"):
            # read: each request's image files, in its own protocol (and on an explanation route, its classes)
            requests = [read_request(request, context.get_all_request_header(index), self.model_id)
                        for index, request in enumerate(data)]
            files = [self._image_files(request) for request in requests]
            explained = [self._explained_classes(index, request, files[index]) for index, request in enumerate(requests)]
            files = [classes if isinstance(classes, RequestError) else item for item, classes in zip(files, explained)]
            # decode + transform every image of the batch, then give each request its own back
            with self.metrics.stage("decode_transform"):
                prepared = iter(self.preprocess([file for item in files if isinstance(item, list) for file in item]))
                images = [[next(prepared) for _ in item] if isinstance(item, list) else item for item in files]
            failures = [_failure(item) for item in images]
            replies = [None if failure is None else self._refuse(index, requests[index], *failure)
                       for index, failure in enumerate(failures)]
            # batch + forward the good requests' images together; top-k, written in each one's protocol
            good = [index for index, failure in enumerate(failures) if failure is None]
            if good:
                batch = torch.stack([tensor for index in good for tensor in images[index]])
                with self.metrics.stage("forward"):
                    probabilities = self.inference(batch)
                self.metrics.forward_pass(len(batch))
                scores = dict(zip(good, self.postprocess(probabilities, [len(images[i]) for i in good])))
                # explain: Grad-CAM for the requests on an explanation route, together
                explaining = [index for index in good if explained[index] is not None]
                explanations: dict[int, Explanation | RequestError] = {}
                if explaining:
                    with self.metrics.stage(EXPLAIN_STAGE):
                        explanations = self._explain(explaining, images, files, explained, scores)
                # top-k (and the explanations), written in each request's protocol
                with self.metrics.stage("postprocess"):
                    for index in good:
                        replies[index] = self._answer(index, requests[index], scores[index], explanations.get(index))
        return [self._send(index, reply) for index, reply in enumerate(replies)]

    def preprocess(self, files: list[bytes]) -> list[Prepared]:
        """Decode and transform each image (on the GPU when we have one); a bad one becomes its
        RequestError."""
        if self.gpu_preprocessor is None:
            return list(self.preprocessing_pool.map(self._prepare, files))
        return self.gpu_preprocessor(list(self.preprocessing_pool.map(self._open, files)))

    def inference(self, batch: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        """Forward the stacked batch and return class probabilities, computed (on a GPU, the wait
        for them is the forward's time, not the postprocess')."""
        with torch.inference_mode():
            batch = batch.to(self.device, self.dtype, non_blocking=True).contiguous(memory_format=torch.channels_last)
            probabilities = torch.softmax(self.forward(batch), dim=1)
        if self.device.type == "cuda":
            torch.cuda.current_stream(self.device).synchronize()
        return probabilities

    def postprocess(self, probabilities: torch.Tensor, counts: list[int]) -> list[Scores]:
        """Each request's share of the batch's probabilities; its protocol writes the top-k."""
        return [Scores(share, self.config.categories, self.config.topk)
                for share in probabilities.float().cpu().split(counts)]

    def _explain(self, explaining: list[int], images: list[Any], files: list[Any], named: list[Any],
                 scores: dict[int, Scores]) -> dict[int, Explanation | RequestError]:
        """Grad-CAM for the `explaining` requests in one pass: each image once per class it explains
        (those its request names, else its own top class), with its crop's place in the image. If
        it fails (a bug, the GPU's memory), a 500 for those requests, never for the predictions
        batched with them."""
        try:
            classes = {index: torch.tensor([named[index]] * len(scores[index].probabilities)) if named[index]
                       else scores[index].probabilities.argmax(dim=1, keepdim=True) for index in explaining}
            rows = torch.cat([torch.stack(images[index]).repeat_interleave(classes[index].shape[1], dim=0)
                              for index in explaining])
            maps = self.grad_cam(rows, torch.cat([classes[index].flatten() for index in explaining]).tolist())
            shares = maps.split([classes[index].numel() for index in explaining])
            return {index: Explanation(classes[index], share.view(*classes[index].shape, *share.shape[1:]),
                                       [self._crop_box(file) for file in files[index]])
                    for index, share in zip(explaining, shares)}
        except Exception as error:
            logger.exception("Explaining %d requests failed", len(explaining))
            return dict.fromkeys(explaining, _internal_error("could not explain these images", error))

    def _explained_classes(self, index: int, request: WireRequest,
                           files: list[bytes] | RequestError) -> tuple[int, ...] | RequestError | None:
        """None for a prediction; on an explanation route, the classes it names (() for the top
        class), within the limits: a pass per image and class must fit in the response timeout."""
        if self.context.get_request_header(index, EXPLAIN_HEADER) != "True" or isinstance(files, RequestError):
            return None
        if self.grad_cam is None:
            return RequestError(501, "ExplanationsUnavailable", "this worker cannot explain: captum is not "
                                "installed in its Python (requirements.txt pins it); predictions are unaffected")
        limits = self.config.limits
        try:
            classes = explained_classes(request.named_classes(), self.model_id.classes, limits.max_explained_classes)
        except RequestError as error:
            return error
        except Exception as error:  # a reader's bug must fail its request only, not the batch
            logger.exception("Could not read the classes of a %s", type(request).__name__)
            return _internal_error("could not read this request's classes", error)
        heatmaps = len(files) * max(1, len(classes))
        if heatmaps > limits.max_heatmaps_per_request:
            return RequestError(413, "TooManyHeatmaps", f"the request asks for {heatmaps} heatmaps ({len(files)} "
                                f"images x {max(1, len(classes))} classes); the limit is "
                                f"{limits.max_heatmaps_per_request} per request. Send fewer images or classes")
        return classes

    def _crop_box(self, file: bytes) -> Box:
        """Where the crop lies in the image as shown upright. The file is opened again for its size
        and EXIF orientation: its header for most formats, the whole file for a PNG whose EXIF
        comes after its pixels (Pillow must read that far to find it)."""
        return crop_box(upright_size(open_checked(file, self.config.limits)), self.config.preprocess)

    def _image_files(self, request: WireRequest) -> list[bytes] | RequestError:
        try:
            files = request.images()
        except RequestError as error:
            return error
        except Exception as error:  # a reader's bug must fail its request only, not the batch
            logger.exception("Could not read a %s", type(request).__name__)
            return _internal_error("could not read this request", error)
        limit = self.config.limits.max_images_per_request
        if len(files) > limit:
            return RequestError(413, "TooManyImages", f"the request holds {len(files)} images; the limit "
                                f"is {limit} per request. Split it into several requests")
        return files

    def _prepare(self, data: bytes) -> Prepared:
        """The CPU path: Pillow decodes, torchvision's preset transforms."""
        opened = self._open(data)
        if isinstance(opened, RequestError):
            return opened
        try:
            return self.transform(load_rgb(opened[1]))
        except RequestError as error:
            return error

    def _open(self, data: bytes) -> Opened:
        """The image bytes and their checked header, before any pixel is decoded."""
        try:
            return data, open_checked(data, self.config.limits)
        except RequestError as error:
            return error

    def _answer(self, index: int, request: WireRequest, scores: Scores,
                explanation: Explanation | RequestError | None) -> Reply:
        if isinstance(explanation, RequestError):
            return self._refuse(index, request, explanation, None)
        self._count(index, request, OK, len(scores.probabilities))
        return request.answer(scores) if explanation is None else request.explain(scores, explanation)

    def _refuse(self, index: int, request: WireRequest, error: RequestError, element: int | None) -> Reply:
        """One place for every rejection, whatever the protocol: its log line, count, status and body."""
        logger.info("Request %s rejected: %s", self.context.get_request_id(index), error.message)
        self._count(index, request, error.kind, 0)
        self.context.set_response_status(error.status, error.kind, index)
        return request.refuse(error, element)

    def _count(self, index: int, request: WireRequest, outcome: str, images: int) -> None:
        transport = "http" if sent_over_http(self.context.get_all_request_header(index)) else "grpc"
        self.metrics.answered(request.protocol, transport, outcome, images)

    def _send(self, index: int, reply: Reply) -> Any:
        for name, value in reply.headers.items():
            self.context.set_response_header(index, name, value)
        return reply.body

    def _select_device(self, gpu_id: int | None) -> torch.device:
        if gpu_id is not None and torch.cuda.is_available():
            torch.cuda.set_device(int(gpu_id))
            return torch.device("cuda", int(gpu_id))
        return torch.device("cpu")

    def _load_model(self, context: Any) -> torch.nn.Module:
        """weights_only=True: an archive's weights are data, never code that runs on load."""
        weights_path = os.path.join(context.system_properties["model_dir"],
                                    context.manifest["model"]["serializedFile"])
        model = torchvision.models.resnet50(weights=None, num_classes=len(self.config.categories))
        model.load_state_dict(torch.load(weights_path, map_location="cpu", weights_only=True))
        return for_inference(model, self.device, torch.float32)

    def _eager(self, model: torch.nn.Module) -> torch.nn.Module:
        """The eager forward: the fp32 model itself, or a copy in the inference precision (a GPU's fp16)."""
        return model if self.dtype == torch.float32 else for_inference(copy.deepcopy(model), self.device, self.dtype)


def _internal_error(what: str, error: Exception) -> RequestError:
    return RequestError(500, "InternalError", f"the handler {what} ({error!r}); this is a bug: please report it "
                        "with the request")


def _failure(images: list[Prepared] | RequestError) -> tuple[RequestError, int | None] | None:
    """Why a request fails, and which of its images (None when the request itself is malformed)."""
    if isinstance(images, RequestError):
        return images, None
    return next(((item, element) for element, item in enumerate(images) if isinstance(item, RequestError)), None)
