"""The GPU fast path's preprocessing: plain JPEGs are decoded together in one nvJPEG batch, and
every image is resized, cropped and normalised on the GPU.

Anything a GPU decoder might show differently from Pillow (progressive or CMYK JPEGs, EXIF
rotation, other formats) is decoded by Pillow on the CPU, exactly as on the CPU path, and
copied over from pinned memory. The preset's tensor path then resizes, crops and normalises
them; tensors differ from torchvision's uint8 CPU pipeline by at most about one grey level
after normalisation (tests hold them to 0.02).
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Union

import torch
import torchvision
from PIL import Image
from torchvision.io import ImageReadMode
from torchvision.transforms.v2 import functional as F

from classification_transforms import ClassificationPreset
from image_decoding import is_plain_jpeg, load_rgb
from request_errors import RequestError

logger = logging.getLogger(__name__)

Opened = Union[tuple[bytes, Image.Image], RequestError]
Prepared = Union[torch.Tensor, RequestError]


class GpuPreprocessor:
    """Decodes and transforms a batch's images on the GPU; the pool decodes what Pillow must."""

    def __init__(self, preset: ClassificationPreset, device: torch.device, dtype: torch.dtype,
                 pool: ThreadPoolExecutor) -> None:
        self.preset = preset
        self.device = device
        self.dtype = dtype
        self.pool = pool

    def __call__(self, opened: list[Opened]) -> list[Prepared]:
        """Decode (nvJPEG for plain JPEGs, Pillow for the rest) and transform on the device."""
        decoded: list[torch.Tensor | RequestError] = list(opened)  # errors stay where they are
        jpegs = [i for i, item in enumerate(opened) if not isinstance(item, RequestError) and is_plain_jpeg(item[1])]
        for index, image in zip(jpegs, self._decode_jpegs([opened[i][0] for i in jpegs])):
            decoded[index] = image
        others = [i for i, item in enumerate(decoded) if isinstance(item, tuple) or item is None]
        for index, image in zip(others, self.pool.map(self._decode_on_cpu, [opened[i] for i in others])):
            decoded[index] = image
        return [item if isinstance(item, RequestError) else self.preset.tensor(item, self.dtype) for item in decoded]

    def _decode_jpegs(self, payloads: list[bytes]) -> list[torch.Tensor | None]:
        """One nvJPEG call for the batch; None marks an image left to Pillow."""
        if not payloads:
            return []
        data = [torch.frombuffer(bytearray(payload), dtype=torch.uint8) for payload in payloads]
        try:
            return list(torchvision.io.decode_jpeg(data, mode=ImageReadMode.RGB, device=self.device))
        except RuntimeError as error:  # one bad stream fails the batched call: decode one by one
            logger.info("Batched JPEG decode failed (%s); decoding each image with Pillow", error)
            return [None] * len(payloads)

    def _decode_on_cpu(self, item: Opened | None) -> torch.Tensor | RequestError:
        try:
            image = load_rgb(item[1])
        except RequestError as error:
            return error
        tensor = F.pil_to_tensor(image)
        if self.device.type == "cuda":
            tensor = tensor.pin_memory()
        return tensor.to(self.device, non_blocking=True)
