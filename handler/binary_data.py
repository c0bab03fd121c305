"""The binary-data extension of the Open Inference Protocol (KServe v2 and Triton), both ways.

A request or answer is a JSON header followed by raw tensor bytes; the header's length travels
in the `Inference-Header-Content-Length` HTTP header, and each binary tensor says how many bytes
it takes (`parameters.binary_data_size`), in the order the tensors are listed. A BYTES element is
its length as 4 little-endian bytes, then its bytes.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Iterable, Sequence
from typing import Any

from request_errors import RequestError, bad_request

HEADER_LENGTH = "Inference-Header-Content-Length"
_LENGTH = struct.Struct("<I")


def split_request(raw: bytes, header_length: str) -> tuple[Any, bytes]:
    """The JSON header and the binary tail of a request."""
    if not re.fullmatch(r"[0-9]{1,10}", header_length) or not 0 < int(header_length) <= len(raw):
        raise invalid(
            f"{HEADER_LENGTH} is {header_length!r}, but the body is {len(raw)} bytes; it must be "
            "the length of the JSON header at the start of the body"
        )
    length = int(header_length)
    try:
        return json.loads(raw[:length]), raw[length:]
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        raise bad_request(
            "InvalidJSON", f"the first {length} bytes ({HEADER_LENGTH}) are not a JSON header: {error}"
        ) from None


def take(tail: bytes, size: Any, name: str) -> bytes:
    """The first `size` bytes of the binary tail, for the tensor `name`."""
    if type(size) is not int or size < 0:
        raise invalid(f"input '{name}' declares binary_data_size {size!r}; it must be a number of bytes")
    if size > len(tail):
        raise invalid(
            f"input '{name}' declares binary_data_size {size}, but the body holds only {len(tail)} bytes of binary data"
        )
    return tail[:size]


def bytes_elements(data: bytes, name: str) -> list[bytes]:
    """The elements of a BYTES tensor sent in binary: each prefixed with its length."""
    elements: list[bytes] = []
    offset = 0
    while offset < len(data):
        if offset + _LENGTH.size > len(data):
            raise invalid(f"input '{name}' ends inside an element's 4-byte length prefix")
        (size,) = _LENGTH.unpack_from(data, offset)
        offset += _LENGTH.size
        if offset + size > len(data):
            raise invalid(
                f"input '{name}' element {len(elements)} declares {size} bytes, but only {len(data) - offset} are left"
            )
        elements.append(data[offset : offset + size])
        offset += size
    return elements


def serialize_bytes(elements: Iterable[bytes]) -> bytes:
    return b"".join(_LENGTH.pack(len(element)) + element for element in elements)


def join_answer(header: dict[str, Any], tensors: Sequence[bytes] = ()) -> tuple[bytes, dict[str, str]]:
    """An answer as compact JSON, followed by its binary outputs' bytes if it has any, with the
    HTTP headers that say which."""
    encoded = json.dumps(header, separators=(",", ":")).encode()  # pragma: no mutate (any JSON reads alike)
    if not tensors:
        return encoded, {"Content-Type": "application/json"}
    return encoded + b"".join(tensors), {HEADER_LENGTH: str(len(encoded)), "Content-Type": "application/octet-stream"}


def invalid(message: str) -> RequestError:
    return bad_request("InvalidBinaryData", message)
