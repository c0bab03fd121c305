"""Every private (underscored) TorchServe and KServe API this project uses, and nothing else.

Running the handler in-process as a worker does (in_process.py) needs TorchServe's wire decoder and
the handler a loaded Service wraps; building Kubernetes types inside kserve's REST deserializer
(tests/manifests.py) needs kserve's per-value deserializer. None of them is public, and a
private name can change in any release, so each hook first checks that the installed package is
the version pinned in requirements*.txt, the version the hooks were checked against
(tests/test_private_hooks.py), and fails with an error that says so otherwise.
"""

from __future__ import annotations

import functools
import io
import re
import struct
from collections.abc import Callable
from importlib import metadata
from types import MethodType
from typing import Any

from scripts.paths import ROOT


class PrivateHookError(RuntimeError):
    """An installed package is not the version the private hooks were checked against."""


def pinned_version(distribution: str) -> str:
    """The version a requirements*.txt file pins `distribution` to (`name==version`)."""

    def canonical(name: str) -> str:
        return re.sub(r"[-_.]+", "-", name.split("[", maxsplit=1)[0].strip()).lower()

    for path in sorted(ROOT.glob("requirements*.txt")):
        for line in path.read_text().splitlines():
            name, _, version = line.split("#", 1)[0].partition("==")
            if version and canonical(name) == canonical(distribution):
                return version.strip()
    raise PrivateHookError(f"{distribution} is pinned in no requirements*.txt in {ROOT}")


# The versions every hook below was checked against: the pins, read from requirements*.txt.
CHECKED_AGAINST = {distribution: pinned_version(distribution) for distribution in ("torchserve", "kserve")}


@functools.cache
def require_pinned(distribution: str) -> None:
    """Fail unless the installed `distribution` is the version the hooks were checked against."""
    installed, checked = metadata.version(distribution), CHECKED_AGAINST[distribution]
    if installed != checked:
        raise PrivateHookError(
            f"{distribution} {installed} is installed, but the private {distribution} APIs in {__file__} were "
            f"checked against {checked}, the version requirements*.txt pins: install {checked}, or check every "
            f"hook on {installed} (tests/test_private_hooks.py) and then change the pin"
        )


# TorchServe


def decode_parameter(name: str, content_type: str, value: bytes) -> dict[str, Any]:
    """One request parameter as a worker gets it: framed as the frontend sends it (each part
    length-prefixed) and decoded by TorchServe's own decoder, which parses JSON and text bodies."""
    require_pinned("torchserve")
    from ts.protocol import otf_message_handler

    frame = b"".join(struct.pack("!i", len(part)) + part for part in (name.encode(), content_type.encode(), value))
    decoded: dict[str, Any] = otf_message_handler._retrieve_input_data(_Connection(frame))
    return decoded


class _Connection:
    """The worker's socket, as far as the decoder reads it."""

    def __init__(self, data: bytes) -> None:
        self._stream = io.BytesIO(data)

    def recv(self, size: int) -> bytes:
        return self._stream.read(size)


def entry_point(service: Any) -> Callable[[list[dict[str, Any]], Any], list[Any]]:
    """The handle(data, context) a ts.service.Service calls with each batch."""
    require_pinned("torchserve")
    handle: Callable[[list[dict[str, Any]], Any], list[Any]] = service._entry_point
    return handle


def handler_of(service: Any) -> Any:
    """The handler instance a ts.service.Service wraps: the one its entry point is bound to."""
    handle = entry_point(service)
    assert isinstance(handle, MethodType), "a handler class's entry point is its bound handle()"
    return handle.__self__


# KServe


@functools.cache
def kserve_api_client() -> type:
    """kserve.ApiClient with its private per-value deserializer open to subclasses as
    deserialize_value(data, klass), klass a type or a type name such as "V1ObjectMeta"."""
    require_pinned("kserve")
    import kserve

    class ApiClient(kserve.ApiClient):
        # kserve's private __deserialize, under its mangled name: the name is the override.
        def _ApiClient__deserialize(self, data: Any, klass: Any) -> Any:  # noqa: N802
            return self.deserialize_value(data, klass)

        def deserialize_value(self, data: Any, klass: Any) -> Any:
            return super()._ApiClient__deserialize(data, klass)

    return ApiClient
