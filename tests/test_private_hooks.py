"""Each private TorchServe and KServe API the project uses (scripts/harness/private_hooks.py) still
exists, and does what the hook relies on, in the installed versions, which are the pinned ones."""

from __future__ import annotations

import json
import types
from importlib import metadata
from typing import Any

import kserve
import pytest
from ts.service import Service

import promised
from scripts.harness import private_hooks
from scripts.harness.private_hooks import (
    PrivateHookError,
    decode_parameter,
    entry_point,
    handler_of,
    kserve_api_client,
    require_pinned,
)


@pytest.mark.parametrize("distribution", sorted(private_hooks.CHECKED_AGAINST))
def test_the_installed_version_is_the_one_the_hooks_were_checked_against(distribution: str) -> None:
    require_pinned(distribution)


def test_torchserve_is_pinned_at_the_promised_version() -> None:
    """docs/engines.md: the engine keeps TorchServe's Python package, at its last release."""
    assert private_hooks.pinned_version("torchserve") == promised.TORCHSERVE_VERSION


def test_another_installed_version_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metadata, "version", lambda distribution: "0.0.1")  # the module the hooks read versions with
    with pytest.raises(PrivateHookError, match=r"torchserve 0\.0\.1 is installed.*checked against"):
        require_pinned.__wrapped__("torchserve")


def test_torchserves_decoder_parses_a_frame_as_a_worker_does() -> None:
    assert decode_parameter("body", "application/json", b'{"a": 1}') == {
        "name": "body",
        "contentType": "application/json",
        "value": {"a": 1},
    }
    assert decode_parameter("data", "image/jpeg", b"\xff\xd8") == {
        "name": "data",
        "contentType": "image/jpeg",
        "value": b"\xff\xd8",
    }


def test_a_service_calls_the_handler_its_entry_point_is_bound_to(tmp_path: Any) -> None:
    class Handler:
        def handle(self, data: list[Any], context: Any) -> list[Any]:
            return data

    handler = Handler()
    service = Service("model", str(tmp_path), None, handler.handle, None, 1)
    assert entry_point(service) == handler.handle
    assert handler_of(service) is handler


def test_kserves_deserializer_calls_the_opened_hook_for_every_value() -> None:
    asked: list[Any] = []

    # mypy takes no base class from a call; kserve_api_client() makes this one at run time.
    class Recording(kserve_api_client()):  # type: ignore[misc]
        def deserialize_value(self, data: Any, klass: Any) -> Any:
            asked.append(klass)
            return super().deserialize_value(data, klass)

    response = types.SimpleNamespace(
        data=json.dumps({"apiVersion": "serving.kserve.io/v1beta1", "spec": {"predictor": {"minReplicas": 1}}})
    )
    service = Recording().deserialize(response, "V1beta1InferenceService")
    assert isinstance(service, kserve.V1beta1InferenceService) and service.api_version == "serving.kserve.io/v1beta1"
    assert asked[0] == "V1beta1InferenceService" and "V1beta1PredictorSpec" in asked
