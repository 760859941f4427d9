import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from beluga import data
from beluga.data import Cifar, Split
from beluga.params import ParamsError, RuntimeParams, load_params, parse_params
from beluga.runtime import resolve

ROOT = Path(__file__).resolve().parents[1]
PROJECT = yaml.safe_load((ROOT / "params.yaml").read_text())


def _changed(raw: dict) -> dict:
    """The project's params with the sections of `raw` merged in."""
    merged = {**PROJECT}
    for key, value in raw.items():
        merged[key] = {**PROJECT[key], **value} if isinstance(value, dict) else value
    return merged


def test_project_params_file_is_valid():
    params = load_params(ROOT / "params.yaml")
    assert params.train.epochs == 12 and params.train.batch_size == 512


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"train": {"epoch": 3}}, "train.epoch: unknown key"),
        ({"train": {"epochs": "many"}}, "train.epochs: Input should be a valid integer"),
        ({"train": {"epochs": 0}}, "train.epochs: Input should be greater than 0"),
        ({"train": {"batch_size": -1}}, "train.batch_size: Input should be greater than 0"),
        ({"train": {"max_lr": 0}}, "train.max_lr: Input should be greater than 0"),
        ({"train": {"pct_start": 1.0}}, "train.pct_start: Input should be less than 1"),
        ({"augment": {"cutout_size": 33}}, "augment.cutout_size: Input should be less than or"),
        ({"runtime": {"precision": "fp8"}}, "runtime.precision: Input should be 'auto', 'fp32'"),
        ({"runtime": {"channels_last": 1}}, "runtime.channels_last: should be true, false or auto"),
        ({"lr_find": {"start_lr": 1, "end_lr": 0.5}}, "lr_find: end_lr must be greater"),
        ({"data": {"md5": "xyz"}}, "data.md5: String should match pattern"),
        ({"colour": 1}, "colour: unknown key"),
        ({"train": {"max_lr": float("inf")}}, "train.max_lr: Input should be a finite number"),
        (
            {"train": {"label_smoothing": float("nan")}},
            "train.label_smoothing: Input should be a finite",
        ),
        ({"train": {"epochs": True}}, "train.epochs: Input should be a valid integer"),
        ({"optimizer": {"nesterov": "yes"}}, "optimizer.nesterov: Input should be a valid boolean"),
        ({"seed": 2**32}, "seed: Input should be less than 4294967296"),
        ({"seed": -1}, "seed: Input should be greater than or equal to 0"),
        ({"train": {"sync_bn": True}}, "train: sync_bn needs nproc > 1"),
        (
            {"train": {"base_momentum": 0.99, "cycle_momentum": True}},
            "base_momentum 0.99 must not exceed optimizer.momentum",
        ),
        ({"model": {"ghost_bn_splits": 0}}, "model.ghost_bn_splits: Input should be greater"),
        ({"train": {"lookahead_decay": 1}}, "train.lookahead_decay: Input should be less than 1"),
        ({"lr_find": {"divide_by": 0.5}}, "lr_find.divide_by: Input should be greater than or"),
        (
            {"train": {"sync_bn": True, "nproc": 2}},
            "train.sync_bn: SyncBatchNorm would replace the ghost batches",
        ),
        ({"optimizer": {"name": "adam"}}, "model.bn_bias_lr_factor: the factor holds under SGD"),
        (
            {"nodes": {"count": 3}, "train": {"nproc": 2}},
            "train.batch_size: 512 must divide evenly among the 6 ranks of nodes.count 3",
        ),
        ({"nodes": {"endpoint": "gpu-a"}}, "nodes.endpoint: String should match pattern"),
        ({"nodes": {"timeout_s": 1}}, "nodes.timeout_s: Input should be greater than or equal"),
    ],
)
def test_bad_values_name_the_key_in_one_line(raw, message):
    with pytest.raises(ParamsError) as error:
        parse_params(_changed(raw))
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def _run_stage(name: str, params: dict, cwd: Path) -> subprocess.CompletedProcess:
    (cwd / "params.yaml").write_text(yaml.safe_dump(params))
    return subprocess.run([sys.executable, str(ROOT / "stages" / f"{name}.py")], cwd=cwd,
                          capture_output=True, text=True)  # fmt: skip


def test_stage_refuses_bad_params_before_any_work(tmp_path: Path):
    result = _run_stage("download", _changed({"train": {"epoch": 3}}), tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "error: params.yaml: train.epoch: unknown key "
        "(check its spelling against the keys documented in conf/config.yaml)"
    )
    assert not (tmp_path / "data").exists()


def test_a_missing_section_is_named():
    raw = {key: value for key, value in PROJECT.items() if key != "runtime"}
    with pytest.raises(ParamsError, match=r"^params.yaml: runtime: Field required$"):
        parse_params(raw)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_cuda_without_a_gpu_is_one_line_from_any_stage(tmp_path: Path):
    result = _run_stage("lr_find", _changed({"runtime": {"device": "cuda"}}), tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "error: params.yaml: runtime.device: cuda, but no GPU is visible; use auto or cpu"
    )


def test_channels_last_auto_is_channels_last_on_a_cpu_and_nchw_on_a_gpu(monkeypatch):
    assert resolve(
        RuntimeParams(device="cpu", precision="fp32", channels_last="auto")
    ).channels_last
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    gpu = resolve(RuntimeParams(device="cuda", precision="fp32", channels_last="auto"))
    assert gpu.device.type == "cuda" and gpu.channels_last is False
    assert resolve(RuntimeParams(device="cuda", precision="fp32", channels_last=True)).channels_last


@pytest.mark.parametrize(
    ("train", "message"),
    [
        ({"epochs": 1, "batch_size": 5, "pct_start": 0.1},
         "train.pct_start: 0.1 of 10 steps (1 epochs x 10 batches) leaves the LR's warm-up or "
         "decay at most one step long"),
        ({"nproc": 512}, "train.nproc: 512 processes, but this machine has"),
    ],
    ids=["one-step warm-up", "more ranks than cores"],
)  # fmt: skip
def test_train_params_that_would_fail_later_are_refused_before_training(
    tmp_path: Path, train: dict, message: str
):
    rng = np.random.default_rng(0)
    split = Split(rng.integers(0, 256, (50, 32, 32, 3), np.uint8), np.arange(50) % 10)
    data.save(tmp_path / "data/cifar10.npz", Cifar(split, split))
    params = _changed({"train": {"max_lr": 0.1, **train}, "runtime": {"device": "cpu"}})
    result = _run_stage("train", params, tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip().startswith(f"error: params.yaml: {message}"), result.stderr
    assert not (tmp_path / "checkpoints/train.pt").exists()
