"""What every wire format shares: a request holds images, and its answer is built from their scores.

A wire format (TorchServe's own forms, KServe v1, the Open Inference Protocol) is one small module
that turns a request into image files and the scores of those images back into that format's
answer. The handler in between sees only images, so every protocol is decoded, batched and
classified alike.
"""

from __future__ import annotations

import base64
import binascii
import re
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from request_errors import RequestError, bad_request


@dataclass(frozen=True)
class ServedModel:
    """What an answer says about the model that made it."""

    name: str
    version: str
    classes: int


@dataclass(frozen=True)
class Scores:
    """The class probabilities of one request's images, with what is needed to name the classes."""

    probabilities: torch.Tensor  # [images, classes], float32 on the CPU
    categories: Sequence[str]
    topk: int

    def top(self, k: int | None = None) -> list[list[tuple[float, int, str]]]:
        """Per image, the k best classes as (probability, index, label), highest first."""
        best = torch.topk(self.probabilities, k=k or self.topk, dim=1)
        return [
            [(p, i, self.categories[i]) for p, i in zip(values.tolist(), indices.tolist(), strict=True)]
            for values, indices in zip(best.values, best.indices, strict=True)
        ]

    def predictions(self) -> list[list[dict[str, Any]]]:
        """Our top-k format: an ordered list with class indices. A dict keyed by label would lose
        classes whose names repeat (ImageNet's original synset names do)."""
        return [[{"label": label, "index": index, "probability": p} for p, index, label in row] for row in self.top()]


@dataclass(frozen=True)
class Explanation:
    """Grad-CAM for one request's images: the classes explained for each image, a heatmap per
    class, and where each image's crop lies in it, so that a client can lay a heatmap over the photo."""

    classes: torch.Tensor  # [images, classes per image], int64
    heatmaps: torch.Tensor  # [images, classes per image, h, w], float32; each map's peak is 1 (or all 0)
    crop_boxes: list[tuple[float, float, float, float]]  # per image: left, top, right, bottom, in its pixels

    def per_image(self, scores: Scores) -> list[dict[str, Any]]:
        """Our JSON form: per image, the top-k, the crop's box, and each class's heatmap (rows top to bottom)."""
        return [
            {
                "predictions": predictions,
                "crop_box": list(box),
                "heatmaps": [
                    {
                        "index": index,
                        "label": scores.categories[index],
                        "probability": probabilities[index].item(),
                        "heatmap": heatmap.tolist(),
                    }
                    for index, heatmap in zip(classes.tolist(), heatmaps, strict=True)
                ],
            }
            for predictions, box, classes, heatmaps, probabilities in zip(
                scores.predictions(), self.crop_boxes, self.classes, self.heatmaps, scores.probabilities, strict=True
            )
        ]


@dataclass(frozen=True)
class Reply:
    """One request's answer: a JSON-able body or raw bytes, with the HTTP headers to set."""

    body: Any
    headers: Mapping[str, str] = field(default_factory=dict)


class WireRequest(ABC):
    """One request in one wire format: its image files, and how its answers and errors are written."""

    protocol: str  # the wire format's name in metrics: torchserve, kserve_v1, open_inference

    @abstractmethod
    def images(self) -> list[bytes]:
        """The request's image files, in order; raises RequestError if the request is malformed."""

    @abstractmethod
    def answer(self, scores: Scores) -> Reply:
        """The answer for this request's images, in order."""

    @abstractmethod
    def explain(self, scores: Scores, explanation: Explanation) -> Reply:
        """The answer on an explanation route: the top-k, and where in each image the model looked."""

    @abstractmethod
    def refuse(self, error: RequestError, element: int | None = None) -> Reply:
        """The error answer; `element` is the position of the image that failed, if one did."""

    @abstractmethod
    def named_classes(self) -> Any:
        """The classes the request asks to explain, as sent (None if it names none); read after images()."""


def header(headers: Mapping[str, Any], name: str) -> str | None:
    """An HTTP header's value; TorchServe keeps each client's own spelling of header names."""
    wanted = name.lower()
    return next((str(value) for key, value in headers.items() if key.lower() == wanted), None)


def from_base64(text: Any, where: str) -> bytes:
    """An image file sent as base64 text (JSON carries only text); `where` names it in errors."""
    if not isinstance(text, str):
        raise bad_request("InvalidJSON", f"{where} must be a base64 string, got {type(text).__name__}")
    try:
        decoded = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as error:
        raise bad_request("InvalidBase64", f"{where} is not valid base64: {error}") from None
    if not decoded:
        raise bad_request("EmptyBody", f"{where} decodes to an empty image")
    return decoded


def explained_classes(named: Any, classes: int, limit: int) -> tuple[int, ...]:
    """The classes to explain, checked: a class index, a list of them, or text such as "207,281"
    (a form field). None gives (): each image's top class."""
    if named is None:
        return ()
    if isinstance(named, (bytes, bytearray)):
        named = named.decode(errors="replace")
    if isinstance(named, str):
        named = [
            int(text) if re.fullmatch(r"[0-9]{1,9}", text) else text for text in re.split(r"[\s,]+", named.strip())
        ]
    elif not isinstance(named, list):
        named = [named]
    wanted = f"'classes' must be 1 to {limit} distinct class indices from 0 to {classes - 1}"
    if not 1 <= len(named) <= limit or len(set(map(repr, named))) != len(named):
        raise bad_request("InvalidClasses", f"{wanted}; got [{_shown(named)}]")
    bad = next((index for index in named if type(index) is not int or not 0 <= index < classes), None)
    if bad is not None:
        raise bad_request("InvalidClasses", f"{wanted}; got {_brief(bad)}")
    return tuple(named)


_SHOWN_VALUES = 8  # the most values of a client's list an error message quotes
_BRIEF_LENGTH = 40  # the most characters of one value an error message quotes


def _shown(values: list[Any]) -> str:
    text = ", ".join(map(_brief, values[:_SHOWN_VALUES]))
    return text + ", ..." if len(values) > _SHOWN_VALUES else text


def _brief(value: Any) -> str:
    """A client's value as an error message shows it: never more than a line."""
    text = repr(value)
    return text if len(text) <= _BRIEF_LENGTH else text[: _BRIEF_LENGTH - len("...")] + "..."


def sent_over_http(headers: Mapping[str, Any]) -> bool:
    """Whether a request came over HTTP: TorchServe passes HTTP headers beside each parameter's
    content type (a mapping); its gRPC frontends pass no headers at all."""
    return any(not isinstance(value, Mapping) for value in headers.values())
