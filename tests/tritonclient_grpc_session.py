"""An unmodified tritonclient.grpc session on a server's gRPC port, run as a process of its own.

tritonclient and the kserve package each register the Open Inference Protocol's messages (package
`inference`) in protobuf's one default pool, so no process can import both, and the suite imports
kserve (its KServe tests). This prints what the client saw, as JSON:

    python tests/tritonclient_grpc_session.py HOST:PORT TOKEN MODEL VERSION[,VERSION...] IMAGE_FILE...
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import tritonclient.grpc as triton_grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException, serialize_byte_tensor


def refusal(call: Callable[[], Any]) -> dict[str, str]:
    """The status and message of the error `call` raises ({} if it raises none)."""
    try:
        call()
    except InferenceServerException as error:
        return {"status": str(error.status()), "message": str(error.message())}
    return {}


def image_tensor(images: list[bytes]) -> triton_grpc.InferInput:
    tensor = triton_grpc.InferInput("image", [len(images)], "BYTES")
    tensor.set_data_from_numpy(np.array(images, dtype=np.object_))
    return tensor


def raw_and_contents(target: str, token: str, model: str, image: bytes) -> dict[str, str]:
    """A call tritonclient never makes: the image both in raw_input_contents and in contents."""
    tensor = service_pb2.ModelInferRequest.InferInputTensor(
        name="image", datatype="BYTES", shape=[1], contents=service_pb2.InferTensorContents(bytes_contents=[image])
    )
    raw = serialize_byte_tensor(np.array([image], dtype=np.object_)).item()
    call = service_pb2.ModelInferRequest(model_name=model, inputs=[tensor], raw_input_contents=[raw])
    with grpc.insecure_channel(target) as channel:
        try:
            service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(
                call, metadata=[("authorization", f"Bearer {token}")], timeout=120
            )
        except grpc.RpcError as error:
            return {"status": str(error.code()), "message": str(error.details())}
    return {}


def session(target: str, token: str, model: str, versions: list[str], images: list[bytes]) -> dict[str, Any]:
    auth = {"authorization": f"Bearer {token}"}
    client = triton_grpc.InferenceServerClient(target)
    metadata = client.get_model_metadata(model, headers=auth)
    answers = {}
    for version in versions:
        answer = client.infer(model, [image_tensor(images)], model_version=version, request_id="9", headers=auth)
        response = answer.get_response()
        answers[version] = {
            "model_version": response.model_version,
            "id": response.id,
            "probabilities": answer.as_numpy("probabilities").tolist(),
        }
    top3 = client.infer(
        model,
        [image_tensor(images)],
        outputs=[triton_grpc.InferRequestedOutput("probabilities", class_count=3)],
        headers=auth,
    )
    return {
        "live": client.is_server_live(headers=auth),
        "ready": client.is_server_ready(headers=auth),
        "versions_ready": {version: client.is_model_ready(model, version, headers=auth) for version in ["", *versions]},
        "unknown_version": refusal(lambda: client.is_model_ready(model, "9.9", headers=auth)),
        "without_token": refusal(client.is_server_live),
        "metadata": {
            "name": metadata.name,
            "versions": list(metadata.versions),
            "inputs": [[t.name, t.datatype, list(t.shape)] for t in metadata.inputs],
            "outputs": [[t.name, t.datatype, list(t.shape)] for t in metadata.outputs],
        },
        "extensions": list(client.get_server_metadata(headers=auth).extensions),
        "answers": answers,
        "top3": [[element.decode() for element in row] for row in top3.as_numpy("probabilities").tolist()],
        "not_an_image": refusal(lambda: client.infer(model, [image_tensor([b"not an image"])], headers=auth)),
        "raw_and_contents": raw_and_contents(target, token, model, images[0]),
    }


if __name__ == "__main__":
    target, token, model, versions, *image_files = sys.argv[1:]
    images = [Path(file).read_bytes() for file in image_files]
    print(json.dumps(session(target, token, model, versions.split(","), images)))
