"""The command-line client against the real server: output, exit codes, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from conftest import restore, served_versions
from images import encode, photo_bytes
from scripts.client import cli
from scripts.client.heatmap_overlay import write_overlay
from scripts.client.rest_api import ApiError, RestClient, Tokens
from scripts.endpoints import Server
from scripts.paths import MODEL_NAME, archive_name


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("photos")
    paths = [folder / f"photo{i}.jpg" for i in range(3)]
    for i, path in enumerate(paths):
        path.write_bytes(photo_bytes((300 + 100 * i, 300)))
    return paths


@pytest.mark.parametrize("protocol", [[], ["--grpc"]])
def test_predict_many_files_as_json(
    server: Server, photos: list[Path], protocol: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli.main(
        [
            *protocol,
            "--run-dir",
            str(server.run_dir),
            "--json",
            "predict",
            *map(str, photos),
            "--version",
            "1.0",
            "--concurrency",
            "3",
        ]
    )
    results = json.loads(capsys.readouterr().out)
    assert code == 0
    assert [result["file"] for result in results] == list(map(str, photos))
    assert all(len(result["predictions"]) == 5 for result in results)


def test_predict_prints_a_table(server: Server, photos: list[Path], capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--run-dir", str(server.run_dir), "predict", str(photos[0])]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(str(photos[0])) and "%" in line


def test_explain_writes_an_overlay_png(
    server: Server, photos: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "heat.png"
    assert (
        cli.main(
            ["--run-dir", str(server.run_dir), "explain", str(photos[0]), "--out", str(out), "--classes", "1", "2"]
        )
        == 0
    )
    line = capsys.readouterr().out.strip()
    assert line.startswith(str(photos[0])) and line.endswith(f"-> {out}") and line.count("(p ") == 2
    with Image.open(out) as overlay:
        assert overlay.format == "PNG" and overlay.width > 1.5 * overlay.height  # a panel per class, side by side


def test_explain_over_grpc_says_to_use_rest(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit:
        cli.main(["--grpc", "explain", "photo.jpg"])
    assert exit.value.code == 2 and "no explanation call" in capsys.readouterr().err


@pytest.mark.parametrize("moved", ["cell right", "cell down", "crop_box right"])
def test_the_overlay_draws_each_heatmap_cell_where_it_lies_in_the_photo(tmp_path: Path, moved: str) -> None:
    """A grey photo and a heatmap hot in one cell: the overlay is reddest at that cell, and the
    spot moves right when the cell does or the crop's box does, and down when the cell does."""
    photo = encode(Image.new("RGB", (400, 300), (128, 128, 128)), "PNG")

    def reddest_point(cell: tuple[int, int], box: list[float]) -> tuple[int, int]:
        grid = np.zeros((7, 7))
        grid[cell] = 1.0
        write_overlay(
            photo,
            {
                "crop_box": box,
                "heatmaps": [{"index": 1, "label": "goldfish", "probability": 0.5, "heatmap": grid.tolist()}],
            },
            tmp_path / "overlay.png",
        )
        pixels = np.asarray(Image.open(tmp_path / "overlay.png").convert("RGB")).astype(int)
        y, x = np.unravel_index((pixels[..., 0] - pixels[..., 2]).argmax(), pixels.shape[:2])
        return int(x), int(y)

    x, y = reddest_point((1, 1), [0, 0, 300, 300])
    moved_x, moved_y = {
        "cell right": lambda: reddest_point((1, 5), [0, 0, 300, 300]),
        "cell down": lambda: reddest_point((5, 1), [0, 0, 300, 300]),
        "crop_box right": lambda: reddest_point((1, 1), [100, 0, 400, 300]),
    }[moved]()
    if moved == "cell down":
        assert moved_y - y > 50 and abs(moved_x - x) <= 2
    else:
        assert moved_x - x > 50 and abs(moved_y - y) <= 2


@pytest.mark.parametrize("protocol", [[], ["--grpc"]])
def test_a_bad_image_is_one_line_and_a_non_zero_exit(
    server: Server, tmp_path: Path, protocol: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "notes.txt"
    bad.write_text("not an image")
    assert cli.main([*protocol, "--run-dir", str(server.run_dir), "predict", str(bad)]) == 1
    output = capsys.readouterr().out.strip()
    assert output.count("\n") == 0 and "error: 400" in output and "InvalidImage" in output


@pytest.mark.parametrize("protocol", [[], ["--grpc"]])
def test_a_wrong_token_is_one_line_on_stderr(
    server: Server, tmp_path: Path, protocol: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.properties").write_text(server.config_file.read_text())
    (run_dir / "key_file.json").write_text(json.dumps({"inference": {"key": "wrong"}, "management": {"key": "wrong"}}))
    assert cli.main([*protocol, "--run-dir", str(run_dir), "list"]) == 1
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and error.startswith("error:") and "Token Authorization failed" in error


@pytest.mark.parametrize("protocol", [[], ["--grpc"]])
def test_a_server_that_is_down_is_one_line_on_stderr(
    server: Server, tmp_path: Path, protocol: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.properties").write_text(
        server.config_file.read_text() + "\ninference_address=http://127.0.0.1:9\nmanagement_address="
        "http://127.0.0.1:9\ngrpc_inference_port=9\ngrpc_management_port=9\n"
    )
    (run_dir / "key_file.json").write_text((server.run_dir / "key_file.json").read_text())
    assert cli.main([*protocol, "--run-dir", str(run_dir), "ping"]) == 1
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "cannot reach TorchServe" in error


@pytest.mark.parametrize("command", [["list"], ["set-default", "1.0"], ["--grpc", "describe"]])
def test_a_version_command_on_a_stopped_ray_engine_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: list[str], model_store: Path
) -> None:
    """A Ray Serve run folder whose engine is gone: its version commands (Serve config updates
    through Ray's dashboard) say so in one line, and how to start one."""
    (tmp_path / "config.properties").write_text(
        f"engine=ray\nmodel_store={model_store}\ninference_address=http://127.0.0.1:9\n"
        "management_address=http://127.0.0.1:9\nmetrics_address=http://127.0.0.1:9\n"
        "grpc_inference_port=9\ngrpc_management_port=9\ndashboard_address=http://127.0.0.1:9\n"
    )
    (tmp_path / "ray_auth_token").write_text("a-token")
    (tmp_path / "serve_config.json").write_text("{}")
    assert cli.main(["--run-dir", str(tmp_path), *command]) == 1
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "cannot reach Ray's dashboard at http://127.0.0.1:9" in error, error
    assert "make serve ENGINE=ray" in error


def test_no_server_started_says_how_to_start_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--run-dir", str(tmp_path), "ping"]) == 1
    assert "make serve" in capsys.readouterr().err


@pytest.mark.parametrize("protocol", [[], ["--grpc"]])
def test_the_version_commands_change_what_is_served(
    server: Server, canary_archive: str, protocol: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """The version walkthrough (docs/versions.md) with the client: register, describe, set-default,
    scale, unregister."""

    def run(*args: str) -> Any:
        code = cli.main([*protocol, "--run-dir", str(server.run_dir), *args])
        printed = capsys.readouterr()
        assert code == 0, printed.err
        return json.loads(printed.out)

    rest = RestClient.for_server(server)
    try:
        run("register", canary_archive, "--workers", "1")
        assert served_versions(server) == {"1.0", "2.0", "2.1"}
        [canary] = run("describe", "2.1")
        assert canary["modelVersion"] == "2.1" and [w["status"] for w in canary["workers"]] == ["READY"]
        run("set-default", "2.1")
        assert rest.describe(MODEL_NAME)[0]["modelVersion"] == "2.1"
        assert run("describe")[0]["modelVersion"] == "2.1"
        run("scale", "2.1", "--min", "2", "--max", "2")
        assert [w["status"] for w in rest.describe(MODEL_NAME, "2.1")[0]["workers"]] == ["READY", "READY"]
        run("set-default", "2.0")
        run("unregister", "2.1")
        assert served_versions(server) == {"1.0", "2.0"}
        assert {entry["modelVersion"] for entry in run("describe", "all")} == {"1.0", "2.0"}
    finally:
        restore(server)


@pytest.mark.parametrize("protocol", [[], ["--grpc"]])
def test_a_refused_version_command_is_one_line_and_changes_nothing(
    server: Server, protocol: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    for command, status in (
        (["register", archive_name("2.0")], "409"),
        (["unregister", "2.0"], "403"),
        (["set-default", "9.9"], "404"),
    ):
        assert cli.main([*protocol, "--run-dir", str(server.run_dir), *command]) == 1
        error = capsys.readouterr().err.strip()
        assert error.count("\n") == 0 and error.startswith(f"error: {status}")
    assert served_versions(server) == {"1.0", "2.0"}
    assert RestClient.for_server(server).describe(MODEL_NAME)[0]["modelVersion"] == "2.0"


def test_unregister_survives_torchserve_s_concurrent_modification_race(monkeypatch: pytest.MonkeyPatch) -> None:
    """TorchServe 0.12 now and then answers an unregister racing with requests in flight with 500
    ConcurrentModificationException (seen once in CI, in test_faults' version switch). The client
    asks again: a version gone by then counts as unregistered; a race that persists is raised."""
    race = ApiError(500, "{'code': 500, 'type': 'ConcurrentModificationException'}")
    rest = RestClient("http://127.0.0.1:1", "http://127.0.0.1:2", Tokens("i", "m"))
    answers = iter([race, ApiError(404, "Model version: 1.0 does not exist for model: resnet50")])

    def delete(*args: Any, **kwargs: Any) -> Any:
        raise next(answers)

    monkeypatch.setattr(rest, "_call", delete)
    monkeypatch.setattr("scripts.client.rest_api.time.sleep", lambda seconds: None)
    assert "unregistered" in rest.unregister(MODEL_NAME, "1.0")["status"]
    answers = iter([race, race, race])
    with pytest.raises(ApiError, match="ConcurrentModificationException"):
        rest.unregister(MODEL_NAME, "1.0")
    answers = iter([ApiError(404, "Model version: 9.9 does not exist for model: resnet50")])
    with pytest.raises(ApiError, match="does not exist"):  # a plain 404 is the caller's mistake, as before
        rest.unregister(MODEL_NAME, "9.9")
