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

import torch
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms.v2 import functional as F

from classification_transforms import ClassificationPreset
from image_decoding import is_plain_jpeg, load_rgb
from request_errors import RequestError

logger = logging.getLogger(__name__)

Opened = tuple[bytes, Image.Image] | RequestError  # an image's bytes and checked header, or why not
Prepared = torch.Tensor | RequestError  # an image's pixels or the model's input, or why not


class GpuPreprocessor:
    """Decodes and transforms a batch's images on the GPU; the pool decodes what Pillow must."""

    def __init__(
        self, preset: ClassificationPreset, device: torch.device, dtype: torch.dtype, pool: ThreadPoolExecutor
    ) -> None:
        self.preset = preset
        self.device = device
        self.dtype = dtype
        self.pool = pool

    def __call__(self, opened: list[Opened]) -> list[Prepared]:
        """Decode (nvJPEG for plain JPEGs, Pillow for the rest) and transform on the device."""
        files = {index: item for index, item in enumerate(opened) if not isinstance(item, RequestError)}
        jpegs = [index for index, (_, image) in files.items() if is_plain_jpeg(image)]
        # By position: each file's pixels on the device, or why they could not be decoded.
        decoded: dict[int, Prepared] = {
            index: pixels
            for index, pixels in zip(jpegs, self._decode_jpegs([files[index][0] for index in jpegs]), strict=True)
            if pixels is not None  # None: left to Pillow
        }
        others = [index for index in files if index not in decoded]
        decoded.update(zip(others, self.pool.map(self._decode_on_cpu, [files[index] for index in others]), strict=True))
        # Errors stay where they are, whether from opening or from decoding.
        prepared = [item if isinstance(item, RequestError) else decoded[index] for index, item in enumerate(opened)]
        return [item if isinstance(item, RequestError) else self.preset.tensor(item, self.dtype) for item in prepared]

    def _decode_jpegs(self, payloads: list[bytes]) -> list[torch.Tensor | None]:
        """One nvJPEG call for the batch; None marks an image left to Pillow."""
        if not payloads:
            return []
        data = [torch.frombuffer(bytearray(payload), dtype=torch.uint8) for payload in payloads]
        try:
            # The device is the GPU; the mode changes no answer (a grey JPEG's one channel broadcasts over
            # the preset's three means as its RGB copy would): no mutants here.
            return list(decode_jpeg(data, mode=ImageReadMode.RGB, device=self.device))  # pragma: no mutate
        except RuntimeError as error:  # one bad stream fails the batched call: decode one by one
            logger.info("Batched JPEG decode failed (%s); decoding each image with Pillow", error)
            return [None] * len(payloads)

    def _decode_on_cpu(self, file: tuple[bytes, Image.Image]) -> Prepared:
        try:
            image = load_rgb(file[1])
        except RequestError as error:
            return error
        tensor = F.pil_to_tensor(image)
        if self.device.type == "cuda":  # pragma: no mutate (runs on a GPU only)
            tensor = tensor.pin_memory()  # pragma: no mutate (runs on a GPU only)
        return tensor.to(self.device, non_blocking=True)  # pragma: no mutate (a copy to the GPU)
