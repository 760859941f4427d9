"""After training: the model fetched by name (a DVC artifact), and used on your own images."""

import io
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import torch
from conftest import commit_with_remote, sh, tiny_split, tool_env
from PIL import Image

from beluga.evaluate import predict
from beluga.loader import DeviceLoader
from beluga.model import load_model
from beluga.runtime import Runtime

CPU_FP32 = Runtime(torch.device("cpu"), "fp32", True)


def _predict(
    *args: str, cwd: Path, stdin: bytes | None = None, python: tuple[str, ...] = ()
) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, *python, "-m", "beluga.predict", *args], cwd=cwd,
                            env=tool_env(), capture_output=True, input=stdin)  # fmt: skip
    result.stdout, result.stderr = result.stdout.decode(), result.stderr.decode()
    return result


def test_predictions_on_image_files_agree_with_the_evaluate_stage(reproduced: Path, tmp_path):
    images, _ = tiny_split(2, 1)  # the tiny archive's test batch, in order
    for i, image in enumerate(images):
        Image.fromarray(image).save(tmp_path / f"{i:03d}.png")
    result = _predict(str(tmp_path), "--top", "1", "--tta", "flip_shift", cwd=reproduced)
    assert result.returncode == 0, result.stderr
    table = pd.read_csv(reproduced / "plots/confusion.csv", index_col="image")
    answers = [line.split(": ")[1].split() for line in result.stdout.splitlines()]
    assert [name for name, _ in answers] == table["predicted"].tolist()
    confidences = [float(p.rstrip("%")) / 100 for _, p in answers]
    assert all(abs(a - b) < 1e-3 for a, b in zip(confidences, table["confidence"]))


def test_bad_images_are_one_line_each_and_the_others_are_answered(reproduced: Path, tmp_path):
    photo = tmp_path / "photo.jpg"
    Image.new("RGB", (640, 480), (200, 120, 40)).save(photo)  # cropped and resized to 32x32
    (tmp_path / "notes.txt").write_text("not an image")
    png = io.BytesIO()
    Image.new("RGB", (32, 32), (1, 2, 3)).save(png, "PNG")
    (tmp_path / "half.png").write_bytes(png.getvalue()[:60])
    names = [str(photo), str(tmp_path / "notes.txt"), str(tmp_path / "half.png"),
             str(tmp_path / "missing.png"), "-"]  # fmt: skip
    result = _predict(*names, "--top", "2", cwd=reproduced, stdin=png.getvalue())
    assert result.returncode == 1
    errors = result.stderr.strip().splitlines()
    assert [line.split(":")[0:2] for line in errors] == [
        ["error", f" {tmp_path}/notes.txt"], ["error", f" {tmp_path}/half.png"],
        ["error", f" {tmp_path}/missing.png"],
    ]  # fmt: skip
    assert "not a readable image" in errors[0] and "No such file" in errors[2]
    answered = [line.split(": ")[0] for line in result.stdout.splitlines()]
    assert answered == [str(photo), "-"]
    assert all(len(line.split(", ")) == 2 for line in result.stdout.splitlines())


def test_a_model_file_that_is_not_one_is_one_line(reproduced: Path, tmp_path):
    (tmp_path / "model.pt").write_bytes(b"not a model")
    Image.new("RGB", (32, 32)).save(tmp_path / "a.png")
    result = _predict(str(tmp_path / "a.png"), "--model", str(tmp_path / "model.pt"),
                      cwd=reproduced)  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.startswith(f"error: {tmp_path}/model.pt: not a model of this network (")
    assert len(result.stderr.strip().splitlines()) == 1 and not result.stdout


def test_the_model_is_fetched_by_name_from_the_repo_and_its_remote(
    reproduced_copy: Path, tmp_path: Path
):
    project = reproduced_copy
    commit_with_remote(project, tmp_path / "remote", "trained")
    sh("git", "tag", "-a", "cifar10-resnet9@v1.0.0", "-m", "a first model", cwd=project)
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    sh("dvc", "artifacts", "get", str(project), "cifar10-resnet9", cwd=fresh)
    assert (fresh / "model.pt").read_bytes() == (project / "models/model.pt").read_bytes()
    Image.new("RGB", (32, 32), (25, 60, 95)).save(fresh / "a.png")
    result = _predict("a.png", "--model", "model.pt", cwd=fresh)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("a.png: ") and len(result.stdout.split(", ")) == 3


def test_the_export_stage_checks_the_onnx_file_against_pytorch(reproduced: Path):
    metrics = json.loads((reproduced / "metrics/export.json").read_text())
    assert metrics["images"] == 20 and metrics["agreement"] >= 0.999
    assert metrics["max_logit_difference"] < 1e-3
    assert metrics["onnx_accuracy"] == metrics["torch_fp32_accuracy"]
    onnx_file = (reproduced / "models/model.onnx").read_bytes()
    assert len(onnx_file) > 20_000_000
    assert b"beluga/model.py" not in onnx_file  # no source paths: the same bytes in every clone


def test_predict_runs_the_onnx_file_without_importing_torch(reproduced: Path, tmp_path: Path):
    images, labels = tiny_split(2, 1)
    for i, image in enumerate(images):
        Image.fromarray(image).save(tmp_path / f"{i:03d}.png")
    result = _predict(str(tmp_path), "--top", "1", "--model", "models/model.onnx",
                      cwd=reproduced, python=("-X", "importtime"))  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert not [line for line in result.stderr.splitlines() if line.endswith(" torch")]
    model, classes = load_model(reproduced / "models/model.pt")  # PyTorch in fp32, as exported
    logits = predict(model, DeviceLoader(images, labels, 20, CPU_FP32), CPU_FP32)
    expected = [classes[i] for i in logits.argmax(1).tolist()]
    assert [line.split(": ")[1].split()[0] for line in result.stdout.splitlines()] == expected
