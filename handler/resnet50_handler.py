"""TorchServe handler for torchvision's ResNet50: read -> prepare -> classify -> explain -> answer.

Each request of a batch is one `Job`, carried through the stages in order:
- read: its protocol's module (TorchServe's own forms, KServe v1, the Open Inference Protocol
  over REST and gRPC) turns it into image files and, on an explanation route, the classes to explain;
- prepare: every image of the batch is decoded and transformed together;
- classify: the good requests' images go through one forward pass;
- explain: Grad-CAM, on the eager model, for the requests on an explanation route (`/explanations`,
  KServe's `:explain` and `/explain`): where in each image the evidence for a class lies;
- answer: each request in its own protocol, with its own status.
A request that fails at any stage skips the rest and gets its own error answer: a 4xx naming
the problem (and the image, where it sent several), or a 500 where the handler itself failed on
it; its batch-mates are answered as usual.
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from typing import Any, TypeVar

import torch
from ts.torch_handler.base_handler import BaseHandler

from classification_transforms import Box, ClassificationPreset
from compiled_forward import CompiledForward, for_inference, inference_dtype, select_forward
from gpu_preprocessing import GpuPreprocessor, Opened, Prepared
from grad_cam import GradCam
from handler_config import HandlerConfig
from handler_metrics import EXPLAIN_STAGE, OK, HandlerMetrics
from image_decoding import load_rgb, open_checked, upright_size
from job import Job
from model_identity import architecture
from protocols import read_request
from request_errors import RequestError
from wire_format import Explanation, Scores, ServedModel, WireRequest, explained_classes, sent_over_http

# TorchServe sets it to "True" on the explanation routes and to "False" on the prediction routes.
EXPLAIN_HEADER = "explain"

logger = logging.getLogger(__name__)
T = TypeVar("T")


class ResNet50Handler(BaseHandler):
    """ImageNet classification with the preprocessing of the weights it was built with."""

    def initialize(self, context: Any) -> None:
        self.config = HandlerConfig.from_yaml(context.model_yaml_config.get("handler"))
        self.model_id = ServedModel(
            context.manifest["model"]["modelName"],
            context.manifest["model"]["modelVersion"],
            len(self.config.categories),
        )
        # On a CPU, any GPU id (or none) selects the CPU: no mutants here.
        self.device = self._select_device(context.system_properties.get("gpu_id"))  # pragma: no mutate
        self.dtype = inference_dtype(self.device)  # pragma: no mutate (a CPU computes in float32 whatever this says)
        model = self._load_model(context)
        self.grad_cam = GradCam.for_model(model)  # explanations: the eager model in fp32, kept; None without captum
        self.forward = select_forward(
            self.config.compiled_forward, self.device, context.system_properties["model_dir"], self._eager(model)
        )
        self.preset = ClassificationPreset(self.config.preprocess)
        # Decoding and resizing release the GIL, so a batch is preprocessed on all our threads. (Its
        # size changes how fast, not what, a worker answers: no mutants here.)
        self.preprocessing_pool = ThreadPoolExecutor(max_workers=torch.get_num_threads())  # pragma: no mutate
        # pragma: no mutate start (the GPU preprocessor: on a GPU only)
        self.gpu_preprocessor = (
            GpuPreprocessor(self.preset, self.device, self.dtype, self.preprocessing_pool)
            if self.device.type == "cuda"
            else None
        )
        # pragma: no mutate end
        forward = "compiled" if isinstance(self.forward, CompiledForward) else "eager"
        self.metrics = HandlerMetrics(context.metrics, self.model_id, forward, str(self.device))
        if self.config.random_weights:
            logger.warning("This archive holds SEEDED RANDOM weights: its labels are meaningless")
        logger.info(
            "ResNet50 (%s) ready on %s with %d intra-op threads, %s forward",
            self.config.weights,
            self.device,
            torch.get_num_threads(),
            forward,
        )

    def handle(self, data: list[dict[str, Any]], context: Any) -> list[Any]:
        """One batch through the stages, each timed; one answer per request, in its protocol."""
        with self.metrics.stage("handler"):
            jobs = [self._read(index, request, context) for index, request in enumerate(data)]
            with self.metrics.stage("decode_transform"):
                self._prepare(jobs)
            ready = [job for job in jobs if job.error is None]
            if ready:
                self._classify(ready)
                if explaining := [job for job in ready if job.explained is not None]:
                    with self.metrics.stage(EXPLAIN_STAGE):
                        self._explain(explaining)
            # Answering is the postprocess stage, timed in batches that classified something (docs/metrics.md).
            with self.metrics.stage("postprocess") if ready else nullcontext():
                return [self._answer(job, context) for job in jobs]

    def finalize(self) -> None:
        """Stop the preprocessing threads. TorchServe 0.12 calls no handler when a worker stops (its
        interpreter's exit joins them); whoever runs the handler in-process calls this."""
        self.preprocessing_pool.shutdown(wait=True)  # pragma: no mutate (idle threads: waiting is instant)

    # The stages, in order.

    def _read(self, index: int, data: dict[str, Any], context: Any) -> Job:
        """The request in its protocol: its image files and, on an explanation route, its classes."""
        headers = context.get_all_request_header(index)
        job = Job(index, read_request(data, headers, self.model_id), "http" if sent_over_http(headers) else "grpc")
        try:
            job.files = self._image_files(job.request)
            if context.get_request_header(index, EXPLAIN_HEADER) == "True":
                job.explained = self._explained_classes(job.request, len(job.files))
        except RequestError as error:
            job.error = error
        return job

    def _prepare(self, jobs: list[Job]) -> None:
        """Decode and transform every image of the batch at once; a bad one fails its own request."""
        reading = [job for job in jobs if job.error is None]
        prepared = iter(self.preprocess([file for job in reading for file in job.files]))
        for job in reading:
            job.take_images([next(prepared) for _ in job.files])

    def _classify(self, jobs: list[Job]) -> None:
        """One forward pass over every image of `jobs`; each gets its share of the probabilities."""
        batch = torch.stack([image for job in jobs for image in job.images])
        with self.metrics.stage("forward"):
            probabilities = self.inference(batch)
        self.metrics.forward_pass(len(batch))
        for job, scores in zip(jobs, self.postprocess(probabilities, [len(job.images) for job in jobs]), strict=True):
            job.scores = scores

    def _explain(self, jobs: list[Job]) -> None:
        """Grad-CAM for `jobs` in one pass: each image once per class it explains (those its request
        names, else its own top class), with its crop's place in the image. If it fails (a bug, the
        GPU's memory), a 500 for those requests, never for the predictions batched with them."""
        try:
            classes = [self._classes_per_image(job) for job in jobs]
            rows = torch.cat(
                [
                    torch.stack(job.images).repeat_interleave(wanted.shape[1], dim=0)
                    for job, wanted in zip(jobs, classes, strict=True)
                ]
            )
            assert self.grad_cam is not None, "without captum, explanation requests are refused (_explained_classes)"
            maps = self.grad_cam(rows, torch.cat([wanted.flatten() for wanted in classes]).tolist())
            for job, wanted, share in zip(
                jobs, classes, maps.split([wanted.numel() for wanted in classes]), strict=True
            ):
                job.explanation = Explanation(
                    wanted, share.view(*wanted.shape, *share.shape[1:]), [self._crop_box(file) for file in job.files]
                )
        except Exception as error:
            logger.exception("Explaining %d requests failed", len(jobs))
            for job in jobs:
                job.error = _internal_error("could not explain these images", error)

    def _answer(self, job: Job, context: Any) -> Any:
        """The request's answer in its protocol, its status and headers set, and counted; a refusal
        is logged."""
        if job.error is not None:
            logger.info("Request %s rejected: %s", context.get_request_id(job.index), job.error.message)
            context.set_response_status(job.error.status, job.error.kind, job.index)
            self.metrics.answered(job.request.protocol, job.transport, job.error.kind)
            reply = job.request.refuse(job.error, job.failed_image)
        else:
            assert job.scores is not None, "a request without an error was classified"
            self.metrics.answered(job.request.protocol, job.transport, OK)
            self.metrics.classified(len(job.images))
            reply = (
                job.request.answer(job.scores)
                if job.explanation is None
                else job.request.explain(job.scores, job.explanation)
            )
        for name, value in reply.headers.items():
            context.set_response_header(job.index, name, value)
        return reply.body

    # TorchServe's names for the steps of a handler.

    def preprocess(self, files: list[bytes]) -> list[Prepared]:
        """Decode and transform each image (on the GPU when we have one); a bad one becomes its
        RequestError."""
        if self.gpu_preprocessor is None:
            return list(self.preprocessing_pool.map(self._decode_and_transform, files))
        return self.gpu_preprocessor(list(self.preprocessing_pool.map(self._open, files)))

    def inference(self, batch: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        """Forward the stacked batch and return class probabilities, computed (on a GPU, the wait
        for them is the forward's time, not the postprocess')."""
        with torch.inference_mode():
            # Preprocessing leaves the batch on the device in its dtype, and the layout changes no value: no mutants.
            batch = batch.to(self.device, self.dtype, non_blocking=True)  # pragma: no mutate
            batch = batch.contiguous(memory_format=torch.channels_last)  # pragma: no mutate
            probabilities = torch.softmax(self.forward(batch), dim=1)
        if self.device.type == "cuda":  # pragma: no mutate (runs on a GPU only)
            torch.cuda.current_stream(self.device).synchronize()  # pragma: no mutate (runs on a GPU only)
        return probabilities

    def postprocess(self, probabilities: torch.Tensor, counts: list[int]) -> list[Scores]:
        """Each request's share of the batch's probabilities; its protocol writes the top-k."""
        return [
            Scores(share, self.config.categories, self.config.topk)
            for share in probabilities.float().cpu().split(counts)
        ]

    # What the stages need.

    def _image_files(self, request: WireRequest) -> list[bytes]:
        files = _guarded(request, "could not read this request", request.images)
        limit = self.config.limits.max_images_per_request
        if len(files) > limit:
            raise RequestError(
                413,
                "TooManyImages",
                f"the request holds {len(files)} images; the limit "
                f"is {limit} per request. Split it into several requests",
            )
        return files

    def _explained_classes(self, request: WireRequest, images: int) -> tuple[int, ...]:
        """The classes a request on an explanation route names (() for the top class), within the
        limits: a pass per image and class must fit in the response timeout."""
        if self.grad_cam is None:
            raise RequestError(
                501,
                "ExplanationsUnavailable",
                "this worker cannot explain: captum is not "
                "installed in its Python (requirements.txt pins it); predictions are unaffected",
            )
        limits = self.config.limits
        classes = _guarded(
            request,
            "could not read this request's classes",
            lambda: explained_classes(request.named_classes(), self.model_id.classes, limits.max_explained_classes),
        )
        per_image = max(1, len(classes))  # no classes named: the top class
        heatmaps = images * per_image
        if heatmaps > limits.max_heatmaps_per_request:
            raise RequestError(
                413,
                "TooManyHeatmaps",
                f"the request asks for {heatmaps} heatmaps ({images} "
                f"images x {per_image} classes); the limit is "
                f"{limits.max_heatmaps_per_request} per request. Send fewer images or classes",
            )
        return classes

    def _classes_per_image(self, job: Job) -> torch.Tensor:
        """[images, classes]: the classes the request names for every image, else each one's top class."""
        assert job.scores is not None, "only classified requests"
        assert job.explained is not None, "only requests on an explanation route"
        if job.explained:
            return torch.tensor([job.explained] * len(job.images))
        return job.scores.probabilities.argmax(dim=1, keepdim=True)

    def _crop_box(self, file: bytes) -> Box:
        """Where the crop lies in the image as shown upright. The file is opened again for its size
        and EXIF orientation: its header for most formats, the whole file for a PNG whose EXIF
        comes after its pixels (Pillow must read that far to find it)."""
        return self.preset.crop_box(upright_size(open_checked(file, self.config.limits)))

    def _decode_and_transform(self, data: bytes) -> Prepared:
        """The CPU path: Pillow decodes, torchvision's preset transforms."""
        opened = self._open(data)
        if isinstance(opened, RequestError):
            return opened
        try:
            return self.preset(load_rgb(opened[1]))
        except RequestError as error:
            return error

    def _open(self, data: bytes) -> Opened:
        """The image bytes and their checked header, before any pixel is decoded."""
        try:
            return data, open_checked(data, self.config.limits)
        except RequestError as error:
            return error

    def _select_device(self, gpu_id: int | None) -> torch.device:
        """The GPU TorchServe assigned this worker (an int, or None on a CPU-only server), if CUDA is there."""
        if gpu_id is not None and torch.cuda.is_available():
            torch.cuda.set_device(gpu_id)
            return torch.device("cuda", gpu_id)
        return torch.device("cpu")

    def _load_model(self, context: Any) -> torch.nn.Module:
        """weights_only=True: an archive's weights are data, never code that runs on load."""
        weights_path = os.path.join(context.system_properties["model_dir"], context.manifest["model"]["serializedFile"])
        model = architecture(num_classes=len(self.config.categories))
        model.load_state_dict(torch.load(weights_path, map_location="cpu", weights_only=True))
        return for_inference(model, self.device, torch.float32)

    def _eager(self, model: torch.nn.Module) -> torch.nn.Module:
        """The eager forward: the fp32 model itself, or a copy in the inference precision (a GPU's fp16)."""
        return model if self.dtype == torch.float32 else for_inference(copy.deepcopy(model), self.device, self.dtype)


def _guarded(request: WireRequest, what: str, read: Callable[[], T]) -> T:
    """`read()`, where a reader's own bug fails its request with a 500, never the batch."""
    try:
        return read()
    except RequestError:
        raise
    except Exception as error:
        logger.exception("The handler %s (a %s)", what, type(request).__name__)
        raise _internal_error(what, error) from error


def _internal_error(what: str, error: Exception) -> RequestError:
    return RequestError(
        500, "InternalError", f"the handler {what} ({error!r}); this is a bug: please report it with the request"
    )
