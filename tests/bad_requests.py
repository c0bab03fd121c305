"""The table of bad requests (docs/robustness.md), as data: what a client sends, and the status and error
type it must get back. In-process (test_bad_input.py) and over HTTP (test_bad_input_served.py)
run the same table."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from images import encode, photo_bytes, png_declaring, sample_photo
from scripts.harness.in_process import Request


@dataclass(frozen=True)
class Sent:
    """One request body: raw bytes with a content type, or multipart form fields."""

    body: bytes = b""
    content_type: str = "image/jpeg"
    form: dict[str, bytes] = field(default_factory=dict)

    @classmethod
    def json(cls, document: Any) -> Sent:
        return cls(document if isinstance(document, bytes) else json.dumps(document).encode(), "application/json")

    def in_process(self) -> Request:
        return Request.form(**self.form) if self.form else Request.raw(self.body, self.content_type)

    def http(self) -> dict[str, Any]:
        """Keyword arguments for requests.post."""
        if self.form:
            return {"files": {name: (name, value, "application/octet-stream") for name, value in self.form.items()}}
        return {"data": self.body, "headers": {"Content-Type": self.content_type}}


JPEG = photo_bytes((320, 240))
BAD_REQUESTS: dict[str, tuple[Sent, int, str]] = {
    "empty body": (Sent(b""), 400, "EmptyBody"),
    "not an image": (Sent(b"%PDF-1.4 definitely not a photo"), 400, "InvalidImage"),
    "truncated JPEG": (Sent(JPEG[: len(JPEG) // 2]), 400, "CorruptImage"),
    "corrupt PNG": (Sent(encode(sample_photo(), "PNG")[:2000], "image/png"), 400, "CorruptImage"),
    "unsupported format": (Sent(encode(sample_photo(), "PPM")), 415, "UnsupportedFormat"),
    "over our pixel limit (48 MP)": (Sent(png_declaring(8000, 6000), "image/png"), 413, "ImageTooLarge"),
    "over Pillow's own limit (2.5 GP)": (Sent(png_declaring(50_000, 50_000), "image/png"), 413, "ImageTooLarge"),
    "extreme aspect ratio": (Sent(encode(Image.new("RGB", (2000, 40)), "PNG"), "image/png"), 400, "ExtremeAspectRatio"),
    "invalid base64": (Sent.json({"data": "not*base64!"}), 400, "InvalidBase64"),
    "invalid JSON": (Sent.json(b'{"data": '), 400, "InvalidJSON"),
    "JSON without data": (Sent.json({"image": "abc"}), 400, "InvalidJSON"),
    "form without the data field": (Sent(form={"file": JPEG}), 400, "MissingField"),
    "text, not an image": (Sent(b"a photo of a cat", "text/plain"), 400, "InvalidImage"),  # TorchServe hands over str
}
