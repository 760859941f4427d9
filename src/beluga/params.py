"""Types and bounds of every setting; the values themselves live in params.yaml alone.

A stage calls `load_params()`; a typo, a wrong type, a missing key or an
out-of-range value stops it with one line that names the key. params.yaml (which
`dvc exp run` composes from conf/) is the one source the stages read because it
is the file DVC tracks, diffs and changes with `dvc exp run -S`; a second set of
defaults here could only drift from it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import ParamsError


class _Section(BaseModel):
    # strict: `epochs: true` or `nesterov: "yes"` are errors, not silently coerced.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


class PathsParams(_Section):
    """Where each stage reads and writes; dvc.yaml names the same keys as ${paths.*}."""

    data: str
    download_dir: str
    download_metrics: str
    checkpoint: str
    model: str
    onnx_model: str
    export_metrics: str
    lr_find_metrics: str
    lr_find_curve: str
    lr_find_plot: str
    train_metrics: str
    history: str
    curves_plot: str
    eval_metrics: str
    predictions: str
    per_class_metrics: str
    per_class_plot: str
    confusion_plot: str
    misclassified_plot: str
    model_summary: str
    layers: str
    report: str


class DataParams(_Section):
    source: str = Field(
        min_length=1,
        description="an http(s) URL of the official archive, or a path to a local copy",
    )
    md5: str | None = Field(pattern=r"^[0-9a-f]{32}$")
    train_per_class: int | None = Field(gt=0)
    test_per_class: int | None = Field(gt=0)


class ModelParams(_Section):
    logit_scale: float = Field(gt=0)
    activation: Literal["relu", "celu"]
    celu_alpha: float = Field(gt=0)
    stem: Literal["conv", "whiten"]
    freeze_bn_scale: bool
    ghost_bn_splits: int = Field(ge=1, le=1024, description="sub-batches of ghost batch norm")
    bn_bias_lr_factor: float = Field(gt=0)


class OptimizerParams(_Section):
    name: Literal["sgd", "adam"]
    momentum: float = Field(ge=0, lt=1, description="SGD momentum or Adam's beta1 at step 0")
    nesterov: bool
    weight_decay: float = Field(ge=0)


class LRFindParams(_Section):
    start_lr: float = Field(gt=0)
    end_lr: float = Field(gt=0)
    num_iter: int = Field(ge=20)
    step_mode: Literal["exp", "linear"]
    smooth_f: float = Field(ge=0, lt=1)
    diverge_th: float = Field(gt=1)
    skip_start: int = Field(ge=0)
    skip_end: int = Field(ge=0)
    suggestion: Literal["steepest", "valley", "minimum", "plateau"]
    min_rise: float = Field(gt=0)
    plateau_tol: float = Field(gt=0, lt=1)
    divide_by: float = Field(ge=1, description="training's max_lr is the rule's LR over this")

    @model_validator(mode="after")
    def _check_range(self) -> LRFindParams:
        if self.end_lr <= self.start_lr:
            raise ValueError("end_lr must be greater than start_lr")
        if self.skip_start + self.skip_end + 2 > self.num_iter:
            raise ValueError("num_iter must exceed skip_start + skip_end + 1")
        return self


class TrainParams(_Section):
    epochs: int = Field(gt=0)
    batch_size: int = Field(gt=0)
    max_lr: float | None = Field(gt=0)
    pct_start: float = Field(gt=0, lt=1)
    div_factor: float = Field(ge=1)
    final_div_factor: float = Field(gt=0, description="<1 ends above the start LR (a tail)")
    anneal_strategy: Literal["linear", "cos"]
    cycle_momentum: bool
    base_momentum: float = Field(ge=0, lt=1)
    label_smoothing: float = Field(ge=0, lt=1)
    ema_decay: float | None = Field(gt=0, lt=1)
    ema_every: int = Field(ge=1, description="steps between weight-average updates")
    lookahead_decay: float | None = Field(gt=0, lt=1)
    lookahead_every: int = Field(ge=1, description="steps between lookahead updates")
    compile: bool
    nproc: int = Field(ge=1, description="processes for data-parallel training (torchrun)")
    sync_bn: bool

    @model_validator(mode="after")
    def _check_split(self) -> TrainParams:
        if self.batch_size % self.nproc:
            raise ValueError(
                f"batch_size {self.batch_size} must divide evenly among nproc {self.nproc} ranks"
            )
        if self.sync_bn and self.nproc == 1:
            raise ValueError("sync_bn needs nproc > 1 (it syncs batch norm across ranks)")
        return self


class NodesParams(_Section):
    """The machines one training run spans (torchrun's static rendezvous), train stage only.

    Only `count` shapes the result (with train.nproc, the number of ranks); where node 0
    listens and how long a collective may wait do not, so DVC tracks `count` alone.
    """

    count: int = Field(ge=1, le=1024, description="machines, each running train.nproc ranks")
    endpoint: str = Field(pattern=r"^[A-Za-z0-9.\-]+:[0-9]{1,5}$",
                          description="node 0's host:port, which every node can reach")  # fmt: skip
    timeout_s: int = Field(ge=10, le=86_400, description="longest wait for a node or a collective")


class RuntimeParams(_Section):
    """Where and how every stage that runs the model runs it."""

    device: Literal["auto", "cpu", "cuda"]
    precision: Literal["auto", "fp32", "bf16", "fp16"]
    channels_last: bool | Literal["auto"]

    @field_validator("channels_last", mode="before")
    @classmethod
    def _layout(cls, value: object) -> object:
        if value is True or value is False or value == "auto":
            return value
        raise ValueError("should be true, false or auto")


class AugmentParams(_Section):
    crop_padding: int = Field(ge=0, le=16)
    flip: Literal["none", "random", "alternate"]
    cutout_size: int = Field(ge=0, le=32)


class EvaluateParams(_Section):
    batch_size: int = Field(gt=0)
    tta: Literal["none", "flip", "flip_shift", "flip_shift_equal"]
    misclassified: int = Field(ge=1, le=100)


class Params(_Section):
    seed: int = Field(ge=0, lt=2**32)
    paths: PathsParams
    data: DataParams
    model: ModelParams
    optimizer: OptimizerParams
    lr_find: LRFindParams
    train: TrainParams
    nodes: NodesParams
    runtime: RuntimeParams
    augment: AugmentParams
    evaluate: EvaluateParams

    @model_validator(mode="after")
    def _check_momentum(self) -> Params:
        train, momentum = self.train, self.optimizer.momentum
        if train.cycle_momentum and train.base_momentum > momentum:
            raise ValueError(
                f"train.base_momentum {train.base_momentum} must not exceed "
                f"optimizer.momentum {momentum}, where the cycle starts and ends"
            )
        return self

    @model_validator(mode="after")
    def _check_nodes(self) -> Params:
        train, ranks = self.train, self.train.nproc * self.nodes.count
        if train.batch_size % ranks:
            raise ValueError(
                f"train.batch_size: {train.batch_size} must divide evenly among the "
                f"{ranks} ranks of nodes.count {self.nodes.count} x train.nproc {train.nproc}"
            )
        return self

    @model_validator(mode="after")
    def _check_batch_norm(self) -> Params:
        model = self.model
        if self.train.sync_bn and (model.ghost_bn_splits > 1 or model.bn_bias_lr_factor != 1):
            raise ValueError(
                "train.sync_bn: SyncBatchNorm would replace the ghost batches and the bias LR "
                "factor; set model.ghost_bn_splits=1 and model.bn_bias_lr_factor=1 with it"
            )
        if self.optimizer.name == "adam" and model.bn_bias_lr_factor != 1:
            raise ValueError(
                "model.bn_bias_lr_factor: the factor holds under SGD only (Adam rescales "
                "gradients); set it to 1 with optimizer.name=adam"
            )
        return self


def _one_line(error: ValidationError, path: Path) -> str:
    first = error.errors()[0]
    key = ".".join(str(part) for part in first["loc"]) or "(top level)"
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        message = "unknown key (check its spelling against the keys documented in conf/config.yaml)"
    got = first.get("input")
    quiet = first["type"] in ("extra_forbidden", "missing") or isinstance(got, dict)
    return f"{path}: {key}: {message}{'' if quiet else f' (got {got!r})'}"


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
        raw = yaml.safe_load(path.read_bytes().decode("utf-8")) or {}
    except UnicodeDecodeError as error:
        raise ParamsError(f"{path}: not UTF-8 text ({error})") from None
    except (yaml.YAMLError, RecursionError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ParamsError(f"{path}: not valid YAML: {reason}") from None
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: must be a mapping of sections")
    return parse_params(raw, path)


def flat_keys(tree: dict, prefix: str = "") -> dict:
    """Nested dicts as one level of dotted keys, as `dvc params diff` and `-S` name them."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out |= flat_keys(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


def check_warm_up(train: TrainParams, steps_per_epoch: int) -> None:
    """Both phases of the LR cycle must last more than one step: OneCycleLR divides by their
    lengths, and fails at the first step (ZeroDivisionError) when one is a single step."""
    steps = train.epochs * steps_per_epoch
    if min(train.pct_start, 1 - train.pct_start) * steps <= 1:
        raise ParamsError(
            f"params.yaml: train.pct_start: {train.pct_start} of {steps} steps ({train.epochs} "
            f"epochs x {steps_per_epoch} batches) leaves the LR's warm-up or decay at most one "
            "step long; change train.pct_start, or train more steps"
        )


def check_batch_size(key: str, batch_size: int, n_images: int) -> None:
    """A batch larger than the data set would give zero steps; say so before any work."""
    if batch_size > n_images:
        raise ParamsError(
            f"params.yaml: {key}: {batch_size} is larger than the {n_images} training images"
        )
