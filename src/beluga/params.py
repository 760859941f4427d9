"""Every setting of the pipeline, validated in one place before any work starts.

A stage calls `load_params()`; a typo, a wrong type or an out-of-range value
stops it with one line that names the key and what is allowed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class ParamsError(ValueError):
    """A bad value in params.yaml; its message is one line naming the key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataParams(_Section):
    source: str = Field(
        "official",
        description="'official' downloads CIFAR-10; else a path to a local copy",
        min_length=1,
    )
    md5: str | None = Field("c58f30108f718f92721af3b95e74349a", pattern=r"^[0-9a-f]{32}$")
    download_dir: str = Field("data/raw", min_length=1)
    train_per_class: int | None = Field(None, gt=0)
    test_per_class: int | None = Field(None, gt=0)


class ModelParams(_Section):
    logit_scale: float = Field(0.125, gt=0)


class OptimizerParams(_Section):
    name: Literal["sgd", "adam"] = "sgd"
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = True
    weight_decay: float = Field(5e-4, ge=0)


class LRFindParams(_Section):
    start_lr: float = Field(1e-4, gt=0)
    end_lr: float = Field(10.0, gt=0)
    num_iter: int = Field(200, ge=20)
    step_mode: Literal["exp", "linear"] = "exp"
    smooth_f: float = Field(0.05, ge=0, lt=1)
    diverge_th: float = Field(5.0, gt=1)
    skip_start: int = Field(10, ge=0)
    skip_end: int = Field(5, ge=0)
    suggestion: Literal["steepest", "valley", "minimum"] = "minimum"
    min_rise: float = Field(0.05, gt=0)

    @model_validator(mode="after")
    def _check_range(self) -> LRFindParams:
        if self.end_lr <= self.start_lr:
            raise ValueError("end_lr must be greater than start_lr")
        if self.skip_start + self.skip_end + 2 > self.num_iter:
            raise ValueError("num_iter must exceed skip_start + skip_end + 1")
        return self


class TrainParams(_Section):
    epochs: int = Field(24, gt=0)
    batch_size: int = Field(512, gt=0)
    max_lr: float | None = Field(None, gt=0)
    pct_start: float = Field(5 / 24, gt=0, lt=1)
    div_factor: float = Field(25.0, ge=1)
    final_div_factor: float = Field(1e4, ge=1)
    anneal_strategy: Literal["linear", "cos"] = "linear"
    label_smoothing: float = Field(0.2, ge=0, lt=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    channels_last: bool = True
    compile: bool = False
    nproc: int = Field(1, ge=1, description="processes for data-parallel training (torchrun)")
    sync_bn: bool = False

    @model_validator(mode="after")
    def _check_split(self) -> TrainParams:
        if self.batch_size % self.nproc:
            raise ValueError(
                f"batch_size {self.batch_size} must divide evenly among nproc {self.nproc} ranks"
            )
        return self


class AugmentParams(_Section):
    crop_padding: int = Field(4, ge=0, le=16)
    flip: bool = True
    cutout_size: int = Field(8, ge=0, le=32)


class EvaluateParams(_Section):
    batch_size: int = Field(1024, gt=0)
    tta: Literal["none", "flip", "flip_shift"] = "flip_shift"
    misclassified: int = Field(25, ge=1, le=100)


class Params(_Section):
    seed: int = Field(0, ge=0)
    data: DataParams = DataParams()
    model: ModelParams = ModelParams()
    optimizer: OptimizerParams = OptimizerParams()
    lr_find: LRFindParams = LRFindParams()
    train: TrainParams = TrainParams()
    augment: AugmentParams = AugmentParams()
    evaluate: EvaluateParams = EvaluateParams()


def _one_line(error: ValidationError, path: Path) -> str:
    first = error.errors()[0]
    key = ".".join(str(part) for part in first["loc"]) or "(top level)"
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        message = "unknown key (check its spelling against params.yaml's documented keys)"
    got = first.get("input")
    detail = (
        "" if first["type"] == "extra_forbidden" or isinstance(got, dict) else f" (got {got!r})"
    )
    return f"{path}: {key}: {message}{detail}"


def parse_params(raw: dict, path: Path = Path("params.yaml")) -> Params:
    """Validate a params mapping; raise ParamsError with one line naming the key."""
    try:
        return Params.model_validate(raw)
    except ValidationError as error:
        raise ParamsError(_one_line(error, path)) from None


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate params.yaml."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: not found; run from the project root")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ParamsError(f"{path}: not valid YAML: {str(error).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: must be a mapping of sections")
    return parse_params(raw, path)
