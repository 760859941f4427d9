"""Bad input gets one clear line and loses nothing; a killed run resumes to the same result."""

import json
import os
import pickle
import resource
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import (
    CPU,
    DEFAULTS,
    ROOT,
    add_bytes,
    make_project,
    model_weights,
    set_params,
    sh,
    tool_env,
    write_class_folders,
    write_official_archive,
)
from PIL import Image

from beluga.errors import TrainingError
from beluga.loader import DeviceLoader
from beluga.model import ResNet9
from beluga.train import fit

# --- bad data: each case makes a source, and the download stage must refuse it ---------------


def _truncated_archive(tmp: Path) -> Path:
    write_official_archive(tmp / "c.tar.gz")
    blob = (tmp / "c.tar.gz").read_bytes()
    (tmp / "c.tar.gz").write_bytes(blob[: len(blob) // 2])
    return tmp / "c.tar.gz"


def _garbage_archive(tmp: Path) -> Path:
    (tmp / "c.tar.gz").write_bytes(b"this is not a tar.gz archive at all" * 100)
    return tmp / "c.tar.gz"


def _folders(tmp: Path) -> Path:
    write_class_folders(tmp / "f")
    return tmp / "f"


def _empty_class_folder(tmp: Path) -> Path:
    root = _folders(tmp)
    for image in (root / "train" / "dog").iterdir():
        image.unlink()
    return root


def _extra_class_folder(tmp: Path) -> Path:
    root = _folders(tmp)
    (root / "train" / "unicorn").mkdir()
    Image.new("RGB", (32, 32)).save(root / "train" / "unicorn" / "0000.png")
    return root


def _text_file_among_images(tmp: Path) -> Path:
    root = _folders(tmp)
    (root / "test" / "ship" / "notes.txt").write_text("not an image")
    return root


def _undecodable_image(tmp: Path) -> Path:
    root = _folders(tmp)
    good = (root / "train" / "frog" / "0000.png").read_bytes()
    (root / "train" / "frog" / "0000.png").write_bytes(good[:60])
    return root


def _wrong_size_image(tmp: Path) -> Path:
    root = _folders(tmp)
    Image.new("RGB", (64, 48)).save(root / "train" / "horse" / "0001.png")
    return root


def _label_out_of_range(tmp: Path) -> Path:
    with tarfile.open(tmp / "c.tar.gz", "w:gz") as archive:
        for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            labels = [3, 12] if name == "data_batch_3" else [0, 1]
            batch = {"data": np.zeros((2, 3072), np.uint8), "labels": labels}
            add_bytes(archive, f"cifar-10-batches-py/{name}", pickle.dumps(batch))
    return tmp / "c.tar.gz"


def _missing_path(tmp: Path) -> Path:
    return tmp / "nowhere" / "cifar.tar.gz"


BAD_SOURCES = {
    "truncated archive": (_truncated_archive, "not a readable .tar.gz archive"),
    "not an archive": (_garbage_archive, "not a readable .tar.gz archive"),
    "empty class folder": (_empty_class_folder, "class folder train/dog is missing or empty"),
    "unknown class folder": (_extra_class_folder, "train/unicorn is not a CIFAR-10 class"),
    "text file among images": (_text_file_among_images, "notes.txt: not a readable image"),
    "undecodable image": (_undecodable_image, "0000.png: not a readable image"),
    "image not 32x32": (_wrong_size_image, "0001.png: image is 64x48, not 32x32"),
    "label out of range": (_label_out_of_range, "data_batch_3: label 12 out of range 0..9"),
    "missing source": (_missing_path, "does not exist"),
}


def _stage(name: str, cwd: Path, max_file_bytes: int | None = None) -> subprocess.CompletedProcess:
    """Run a stage; with `max_file_bytes`, writing a larger file fails as on a full disk."""

    def limit_file_size() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG from write(), not a kill
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_file_bytes, max_file_bytes))

    return subprocess.run(
        [sys.executable, str(ROOT / "stages" / f"{name}.py")],
        cwd=cwd, env=tool_env(), capture_output=True, text=True,
        preexec_fn=limit_file_size if max_file_bytes else None,
    )  # fmt: skip


def _workdir(tmp: Path, **sections: dict) -> Path:
    work = tmp / "work"
    work.mkdir()
    shutil.copytree(ROOT / "conf", work / "conf")
    set_params(work, **sections)
    return work


@pytest.mark.parametrize("case", BAD_SOURCES)
def test_bad_source_is_one_line_and_keeps_the_previous_data(tmp_path: Path, case: str):
    make, expected = BAD_SOURCES[case]
    source = make(tmp_path)
    work = _workdir(tmp_path, data={"source": str(source), "md5": None})
    (work / "data").mkdir()
    (work / "data" / "cifar10.npz").write_bytes(b"previous good data")

    result = _stage("download", work)

    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], lines
    assert (work / "data" / "cifar10.npz").read_bytes() == b"previous good data"
    assert sorted(p.name for p in (work / "data").iterdir()) == ["cifar10.npz"]


def test_greyscale_and_rgba_images_are_converted_and_reported(tmp_path: Path):
    root = _folders(tmp_path)
    Image.new("L", (32, 32), 200).save(root / "train" / "cat" / "0001.png")
    Image.new("RGBA", (32, 32), (10, 20, 30, 128)).save(root / "test" / "cat" / "0000.png")
    work = _workdir(tmp_path, data={"source": str(root)})
    result = _stage("download", work)
    assert result.returncode == 0, result.stderr
    assert "converted 2 non-RGB images" in result.stdout
    with np.load(work / "data" / "cifar10.npz") as arrays:
        cats = arrays["train_images"][arrays["train_labels"] == 3]
        assert cats.shape[1:] == (32, 32, 3)
        assert any((image == 200).all() for image in cats)


def test_batch_larger_than_the_training_set_stops_before_work(tmp_path: Path):
    write_official_archive(tmp_path / "c.tar.gz")
    work = _workdir(tmp_path, data={"source": str(tmp_path / "c.tar.gz"), "md5": None},
                    train={"batch_size": 51})  # fmt: skip
    assert _stage("download", work).returncode == 0
    result = _stage("lr_find", work)
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "error: params.yaml: train.batch_size: 51 is larger than the 50 training images"
    )
    assert not (work / "metrics/lr_find.json").exists()


def test_a_failed_write_is_one_line_naming_the_file_and_keeps_the_old_one(tmp_path: Path):
    train = {"max_lr": 0.05, "epochs": 1, "batch_size": 16, "pct_start": 0.5}
    work = _workdir(tmp_path, data={"source": str(_folders(tmp_path)), "md5": None}, train=train)
    (work / "data").mkdir()
    (work / "data/cifar10.npz").write_bytes(b"previous good data")
    result = _stage("download", work, max_file_bytes=100_000)  # the data take 216 KB
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "error: data/cifar10.npz: cannot write (File too large); the previous file, if any, "
        "is unchanged"
    ]
    assert (work / "data/cifar10.npz").read_bytes() == b"previous good data"
    assert sorted(p.name for p in (work / "data").iterdir()) == ["cifar10.npz"]

    (work / "data/cifar10.npz").unlink()
    assert _stage("download", work).returncode == 0
    (work / "checkpoints").mkdir()
    (work / "checkpoints/train.pt").write_bytes(b"an older checkpoint")
    result = _stage("train", work, max_file_bytes=2**20)  # the checkpoint takes 80 MB
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1] == (
        "error: checkpoints/train.pt: cannot write (File too large); the previous file, if any, "
        "is unchanged"
    )
    assert "Traceback" not in result.stderr
    assert (work / "checkpoints/train.pt").read_bytes() == b"an older checkpoint"
    assert sorted(p.name for p in (work / "checkpoints").iterdir()) == ["train.pt", "train.pt.lock"]


# --- training that goes wrong ---------------------------------------------------------------


def _tiny_loaders(runtime):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (64, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, 64)
    train = DeviceLoader(images, labels, 16, runtime, shuffle=True)
    test = DeviceLoader(images, labels, 64, runtime)
    return train, test


def test_non_finite_training_loss_stops_naming_epoch_batch_and_lr(tmp_path: Path):
    train, test = _tiny_loaders(CPU)
    torch.manual_seed(0)
    model = ResNet9(logit_scale=1.0)
    params = DEFAULTS.train.model_copy(update={"epochs": 2, "batch_size": 16,
                                               "label_smoothing": 0.0})  # fmt: skip
    with pytest.raises(
        TrainingError, match=r"training loss is (nan|inf) at epoch 1, batch \d+, lr "
    ):
        fit(model, train_loader=train, test_loader=test, runtime=CPU, train=params,
            optimizer=DEFAULTS.optimizer, max_lr=1e30, checkpoint_path=tmp_path / "ckpt.pt",
            fingerprint="key", settings={})  # fmt: skip


# --- interruption and repeatability ---------------------------------------------------------

SLOW = {"train": {"epochs": 4, "batch_size": 8}}


def _results(project: Path) -> dict:
    """The training run's metrics without their timings, its history table and its weights."""
    metrics = json.loads((project / "metrics/train.json").read_text())
    for timing in ("seconds", "seconds_per_epoch"):
        metrics.pop(timing, None)
    weights = model_weights(project / "models/model.pt")
    return {
        "train": metrics,
        "history": (project / "plots/history.csv").read_bytes(),
        "weights": {name: t.numpy().tobytes() for name, t in weights.items()},
    }


def _kill_everything_in(folder: Path) -> None:
    """SIGKILL every process working in `folder`, as a crash or an out-of-memory kill would."""
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and Path(os.readlink(proc / "cwd")) == folder:
                os.kill(int(proc.name), signal.SIGKILL)
        except (OSError, ProcessLookupError):
            continue


def test_killed_run_resumes_to_the_same_metrics_as_an_uninterrupted_one(tmp_path: Path):
    """Two copies of one project after its range test, one trained whole and one killed and
    resumed: the training metrics but the timings, the history and every weight must come
    out identical (so this is also the test that training is repeatable; evaluation is a
    function of the weights)."""
    baseline = make_project(tmp_path / "a", **SLOW)
    sh("dvc", "repro", "lr_find", cwd=baseline)
    project = tmp_path / "b" / "project"
    shutil.copytree(baseline, project, symlinks=True)
    sh("dvc", "repro", "train", cwd=baseline)

    checkpoint = project / "checkpoints" / "train.pt"
    run = subprocess.Popen(["dvc", "repro", "train"], cwd=project, env=tool_env(),
                           start_new_session=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 300
    while not checkpoint.exists() and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.3)  # into the next epoch
    assert run.poll() is None, "the run finished before it could be killed"
    _kill_everything_in(project)  # dvc, torchrun and its worker, which has a session of its own
    run.wait()
    epochs_done = len(torch.load(checkpoint, weights_only=False)["history"])
    assert 1 <= epochs_done < 4
    partial = json.loads((project / "metrics/train.json").read_text())
    # written just after each checkpoint, so at most one epoch behind it
    assert partial["epochs_planned"] == 4 and partial["epochs_done"] in (
        epochs_done - 1,
        epochs_done,
    )
    assert "final_test_accuracy" not in partial and "best_test_accuracy" not in partial

    resumed = sh("dvc", "repro", "train", cwd=project)
    assert f"Resuming from checkpoints/train.pt after epoch {epochs_done}" in resumed.stdout, (
        resumed.stdout[:3000]
    )
    assert _results(project) == _results(baseline)
    assert not checkpoint.exists()


def test_sigterm_finishes_cleanly_and_changed_params_start_afresh(tmp_path: Path):
    project = make_project(tmp_path, train={**SLOW["train"], "max_lr": 0.05})  # no range test
    sh("dvc", "repro", "download", cwd=project)
    checkpoint = project / "checkpoints" / "train.pt"
    run = subprocess.Popen([sys.executable, "stages/train.py"], cwd=project, env=tool_env(),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    while not checkpoint.exists() and run.poll() is None:
        time.sleep(0.02)
    run.send_signal(signal.SIGTERM)
    _, stderr = run.communicate(timeout=120)
    assert run.returncode == 130
    assert stderr.strip().splitlines()[-1].startswith("interrupted: stopped by signal 15")
    state = torch.load(checkpoint, weights_only=False)
    assert 1 <= len(state["history"]) < 4

    set_params(project, train={"label_smoothing": 0.1})
    fresh = sh(sys.executable, "stages/train.py", cwd=project)
    assert "starting afresh" in fresh.stdout and "Resuming" not in fresh.stdout
    history = pd.read_csv(project / "plots/history.csv")
    assert history.epoch.tolist() == [1, 2, 3, 4]


def test_interrupted_write_leaves_the_old_file(tmp_path: Path):
    from beluga.atomic import write_with

    target = tmp_path / "out.json"
    target.write_text("old")

    def broken(tmp: Path) -> None:
        tmp.write_text("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_with(target, broken)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]
