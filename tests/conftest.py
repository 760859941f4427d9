"""Tiny CIFAR-10 look-alikes written in the official formats, and a scratch copy of the project."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from dvc.utils.hydra import compose_and_dump
from PIL import Image

from beluga.data import CLASSES
from beluga.distributed import threads_per_rank
from beluga.params import load_params
from beluga.runtime import Runtime

if "PYTEST_XDIST_WORKER_COUNT" in os.environ:  # pytest-xdist's workers share the cores as ranks do
    _threads = threads_per_rank(int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    os.environ["OMP_NUM_THREADS"] = str(_threads)
    torch.set_num_threads(_threads)

ROOT = Path(__file__).resolve().parents[1]
SHARED_JPEG = ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"
DEFAULTS = load_params(ROOT / "params.yaml")  # the project's params, as tests' starting point
CPU = Runtime(torch.device("cpu"), "fp32", channels_last=False)
PROJECT_FILES = (
    "dvc.yaml",
    "conf",
    "params.yaml",
    ".dvcignore",
    ".gitignore",
    "stages",
    "src",
    ".dvc",
)


def tiny_split(per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Images whose colour depends on the class, so a model can learn something."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(CLASSES)), per_class)
    rng.shuffle(labels)
    base = (np.arange(len(CLASSES))[:, None] * np.array([25, 60, 95])) % 256
    noise = rng.integers(-30, 30, (len(labels), 32, 32, 3))
    images = np.clip(base[labels][:, None, None, :] + noise, 0, 255).astype(np.uint8)
    return images, labels


def write_official_archive(path: Path, train_per_class: int = 5, test_per_class: int = 2) -> str:
    """A cifar-10-python.tar.gz of pickled batches; returns its md5."""
    train_x, train_y = tiny_split(train_per_class, 0)
    test_x, test_y = tiny_split(test_per_class, 1)
    batches = {}
    for i, (x, y) in enumerate(zip(np.array_split(train_x, 5), np.array_split(train_y, 5)), 1):
        batches[f"data_batch_{i}"] = (x, y)
    batches["test_batch"] = (test_x, test_y)
    with tarfile.open(path, "w:gz") as archive:
        for name, (x, y) in batches.items():
            blob = pickle.dumps(
                {"data": x.transpose(0, 3, 1, 2).reshape(len(x), -1), "labels": y.tolist()}
            )
            add_bytes(archive, f"cifar-10-batches-py/{name}", blob)
        add_bytes(
            archive, "cifar-10-batches-py/batches.meta", pickle.dumps({"label_names": CLASSES})
        )
    return hashlib.md5(path.read_bytes()).hexdigest()


def add_bytes(archive: tarfile.TarFile, name: str, blob: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(blob)
    archive.addfile(info, io.BytesIO(blob))


def write_class_folders(root: Path, train_per_class: int = 5, test_per_class: int = 2) -> None:
    """train/<class>/NNNN.png and test/<class>/NNNN.png, the same images as the archive."""
    for split, (x, y) in (
        ("train", tiny_split(train_per_class, 0)),
        ("test", tiny_split(test_per_class, 1)),
    ):
        counters = dict.fromkeys(range(len(CLASSES)), 0)
        for image, label in zip(x, y):
            folder = root / split / CLASSES[label]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(folder / f"{counters[label]:04d}.png")
            counters[label] += 1


def model_weights(path: Path) -> dict[str, torch.Tensor]:
    """The state dict of a model file the train stage wrote."""
    return torch.load(path, map_location="cpu", weights_only=False)["state_dict"]


def tool_env() -> dict[str, str]:
    """Environment in which `dvc` and `python` are this interpreter's."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env.update(
        DVC_NO_ANALYTICS="1",
        GIT_AUTHOR_NAME="beluga tests",
        GIT_AUTHOR_EMAIL="tests@beluga.invalid",
        GIT_COMMITTER_NAME="beluga tests",
        GIT_COMMITTER_EMAIL="tests@beluga.invalid",
        TQDM_DISABLE="1",
    )
    return env


def timing_terms(line: str) -> tuple[float, dict[str, float]]:
    """The total and the parts of a stage's `timing: T s = name A s + ...` line."""
    total, terms = line.removeprefix("timing: ").split(" s = ")
    parts = {}
    for term in terms.split(" + "):
        name, seconds, unit = term.rsplit(" ", 2)
        assert unit == "s", line
        parts[name] = float(seconds)
    return float(total), parts


def sh(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(args, cwd=cwd, env=tool_env(), capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


def commit_with_remote(project: Path, remote: Path, message: str) -> None:
    """Commit the workspace with a folder DVC remote as its default, and push the cache."""
    sh("dvc", "remote", "add", "-d", "shared", str(remote), cwd=project)
    sh("git", "add", "-A", cwd=project)
    sh("git", "commit", "-qm", message, cwd=project)
    sh("dvc", "push", cwd=project)


TINY_PARAMS = {
    "data": {"train_per_class": None, "test_per_class": None},
    "lr_find": {"num_iter": 20, "skip_start": 2, "skip_end": 2},
    "train": {"epochs": 1, "batch_size": 16, "pct_start": 0.5},  # a warm-up of 2 of 4 steps
    "evaluate": {"batch_size": 64, "misclassified": 6},
}


def compose_params(project: Path, *overrides: str) -> None:
    """params.yaml composed from conf/ as `dvc exp run` composes it (DVC's own function)."""
    compose_and_dump(project / "params.yaml", str((project / "conf").resolve()), None, "config", "",
                     list(overrides))  # fmt: skip


def set_params(project: Path, **sections: dict) -> None:
    """Change values in conf/config.yaml, the file they are written in, and recompose."""
    path = project / "conf/config.yaml"
    params = yaml.safe_load(path.read_text())
    for section, values in sections.items():
        params[section].update(values)
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    compose_params(project)


def make_project(root: Path, **params: dict) -> Path:
    """A git repository at root/project: the pipeline, on a tiny official archive."""
    repo = root / "project"
    repo.mkdir(parents=True)
    for name in PROJECT_FILES:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(
                source, repo / name, ignore=shutil.ignore_patterns("__pycache__", "tmp", "cache")
            )
        else:
            shutil.copy2(source, repo / name)
    archive = root / "cifar-10-python.tar.gz"
    md5 = write_official_archive(archive)
    data = {**TINY_PARAMS["data"], "source": str(archive), "md5": md5}
    set_params(repo, **{**TINY_PARAMS, "data": data})
    set_params(repo, **params)
    sh("git", "init", "-q", cwd=repo)
    sh("git", "add", "-A", cwd=repo)
    sh("git", "commit", "-qm", "pipeline", cwd=repo)
    return repo


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return make_project(tmp_path)


@pytest.fixture(scope="session")
def reproduced(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny project after a full `dvc repro`, made once; copy it before changing it."""
    repo = make_project(tmp_path_factory.mktemp("reproduced"))
    (repo.parent / "repro.stdout").write_text(sh("dvc", "repro", cwd=repo).stdout)
    return repo


@pytest.fixture
def reproduced_copy(reproduced: Path, tmp_path: Path) -> Path:
    """A private copy of `reproduced` (git history, DVC cache and outputs included)."""
    copy = tmp_path / "project"
    shutil.copytree(reproduced, copy, symlinks=True)
    return copy
