"""The command-line client against the real server: output, exit codes, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from images import photo_bytes
from scripts import client
from scripts.server import Server


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("photos")
    paths = [folder / f"photo{i}.jpg" for i in range(3)]
    for i, path in enumerate(paths):
        path.write_bytes(photo_bytes((300 + 100 * i, 300)))
    return paths


@pytest.mark.parametrize("protocol", [[], ["--grpc"]])
def test_predict_many_files_as_json(server: Server, photos: list[Path], protocol: list[str],
                                    capsys: pytest.CaptureFixture[str]) -> None:
    code = client.main([*protocol, "--run-dir", str(server.run_dir), "--json", "predict",
                        *map(str, photos), "--version", "1.0", "--concurrency", "3"])
    results = json.loads(capsys.readouterr().out)
    assert code == 0
    assert [result["file"] for result in results] == list(map(str, photos))
    assert all(len(result["predictions"]) == 5 for result in results)


def test_predict_prints_a_table(server: Server, photos: list[Path], capsys: pytest.CaptureFixture[str]) -> None:
    assert client.main(["--run-dir", str(server.run_dir), "predict", str(photos[0])]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(str(photos[0])) and "%" in line


@pytest.mark.parametrize("protocol", [[], ["--grpc"]])
def test_a_bad_image_is_one_line_and_a_non_zero_exit(server: Server, tmp_path: Path, protocol: list[str],
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "notes.txt"
    bad.write_text("not an image")
    assert client.main([*protocol, "--run-dir", str(server.run_dir), "predict", str(bad)]) == 1
    output = capsys.readouterr().out.strip()
    assert output.count("\n") == 0 and "error: 400" in output and "InvalidImage" in output


@pytest.mark.parametrize("protocol", [[], ["--grpc"]])
def test_a_wrong_token_is_one_line_on_stderr(server: Server, tmp_path: Path, protocol: list[str],
                                             capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.properties").write_text(server.config_file.read_text())
    (run_dir / "key_file.json").write_text(json.dumps(
        {"inference": {"key": "wrong"}, "management": {"key": "wrong"}}))
    assert client.main([*protocol, "--run-dir", str(run_dir), "list"]) == 1
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and error.startswith("error:") and "Token Authorization failed" in error


@pytest.mark.parametrize("protocol", [[], ["--grpc"]])
def test_a_server_that_is_down_is_one_line_on_stderr(server: Server, tmp_path: Path, protocol: list[str],
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.properties").write_text(
        server.config_file.read_text() + "\ninference_address=http://127.0.0.1:9\nmanagement_address="
        "http://127.0.0.1:9\ngrpc_inference_port=9\ngrpc_management_port=9\n")
    (run_dir / "key_file.json").write_text((server.run_dir / "key_file.json").read_text())
    assert client.main([*protocol, "--run-dir", str(run_dir), "ping"]) == 1
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "cannot reach TorchServe" in error


def test_no_server_started_says_how_to_start_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert client.main(["--run-dir", str(tmp_path), "ping"]) == 1
    assert "make serve" in capsys.readouterr().err
