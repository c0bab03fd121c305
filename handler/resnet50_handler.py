"""TorchServe handler for torchvision's ResNet50: decode -> transform -> batch -> forward -> top-k.

Each request in a batch is decoded and transformed on its own; one that fails gets its own 4xx
answer with a JSON body naming the problem, and its batch-mates are classified as usual.
"""

from __future__ import annotations

import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch
import torchvision
from ts.handler_utils.timer import timed
from ts.torch_handler.base_handler import BaseHandler

from classification_transforms import classification_preset
from compiled_forward import CompiledForward, for_inference, inference_dtype, select_forward
from gpu_preprocessing import GpuPreprocessor, Opened, Prepared
from handler_config import HandlerConfig
from image_decoding import load_rgb, open_checked
from request_errors import RequestError
from request_payloads import image_bytes

logger = logging.getLogger(__name__)

Prediction = list[dict[str, Any]]


class ResNet50Handler(BaseHandler):
    """ImageNet classification with the preprocessing of the weights it was built with."""

    def initialize(self, context: Any) -> None:
        self.context = context
        self.config = HandlerConfig.from_yaml(context.model_yaml_config.get("handler"))
        self.device = self._select_device(context.system_properties.get("gpu_id"))
        self.dtype = inference_dtype(self.device)
        self.forward = select_forward(self.config.compiled_forward, self.device,
                                      context.system_properties["model_dir"], self._load_model(context))
        self.transform = classification_preset(self.config.preprocess)
        # Decoding and resizing release the GIL, so a batch is preprocessed on all our threads.
        self.preprocessing_pool = ThreadPoolExecutor(max_workers=torch.get_num_threads())
        self.gpu_preprocessor = GpuPreprocessor(self.config.preprocess, self.device, self.dtype,
                                                self.preprocessing_pool) if self.device.type == "cuda" else None
        self.initialized = True
        if self.config.random_weights:
            logger.warning("This archive holds SEEDED RANDOM weights: its labels are meaningless")
        logger.info("ResNet50 (%s) ready on %s with %d intra-op threads, %s forward",
                    self.config.weights, self.device, torch.get_num_threads(),
                    "compiled" if isinstance(self.forward, CompiledForward) else "eager")

    def handle(self, data: list[dict[str, Any]], context: Any) -> list[Any]:
        """decode + transform each request, stack the good ones, forward, top-k; a bad one is
        answered with its own 4xx."""
        started = time.perf_counter()
        self.context = context
        prepared = self.preprocess(data)
        answers = [self._error_answer(index, item) if isinstance(item, RequestError) else None
                   for index, item in enumerate(prepared)]
        good = [index for index, answer in enumerate(answers) if answer is None]
        if good:
            batch = torch.stack([prepared[index] for index in good])
            for index, prediction in zip(good, self.postprocess(self.inference(batch))):
                answers[index] = prediction
        context.metrics.add_time("HandlerTime", round((time.perf_counter() - started) * 1000, 2), None, "ms")
        return answers

    @timed
    def preprocess(self, data: list[dict[str, Any]]) -> list[Prepared]:
        """Decode and transform each request (on the GPU when we have one); a bad one becomes its
        RequestError."""
        if self.gpu_preprocessor is None:
            return list(self.preprocessing_pool.map(self._prepare, range(len(data)), data))
        return self.gpu_preprocessor(list(self.preprocessing_pool.map(self._open, range(len(data)), data)))

    @timed
    def inference(self, batch: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        """Forward the stacked batch and return class probabilities."""
        with torch.inference_mode():
            batch = batch.to(self.device, self.dtype, non_blocking=True).contiguous(memory_format=torch.channels_last)
            return torch.softmax(self.forward(batch), dim=1)

    @timed
    def postprocess(self, probabilities: torch.Tensor) -> list[Prediction]:
        """Top-k as an ordered list with class indices: a dict keyed by label would lose classes
        whose names repeat (ImageNet's original synset names do)."""
        top = torch.topk(probabilities.float().cpu(), k=self.config.topk, dim=1)
        categories = self.config.categories
        return [
            [{"label": categories[i], "index": i, "probability": p}
             for i, p in zip(indices.tolist(), values.tolist())]
            for values, indices in zip(top.values, top.indices)
        ]

    def _prepare(self, index: int, request: dict[str, Any]) -> Prepared:
        """The CPU path: Pillow decodes, torchvision's preset transforms."""
        opened = self._open(index, request)
        if isinstance(opened, RequestError):
            return opened
        try:
            return self.transform(load_rgb(opened[1]))
        except RequestError as error:
            return error

    def _open(self, index: int, request: dict[str, Any]) -> Opened:
        """The request's image bytes and their checked header, before any pixel is decoded."""
        try:
            data = image_bytes(request, self.context.get_all_request_header(index))
            return data, open_checked(data, self.config.limits)
        except RequestError as error:
            return error

    def _error_answer(self, index: int, error: RequestError) -> dict[str, Any]:
        """One place for every rejection, CPU or GPU path: its log line, status and JSON body."""
        logger.info("Request %s rejected: %s", self.context.get_request_id(index), error.message)
        self.context.set_response_status(error.status, error.kind, index)
        return error.to_json()

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
        return for_inference(model, self.device, self.dtype)
