"""The custom ResNet (ResNet-9) of the reference run: 6,573,130 parameters.

With frozen BN scales (the default) 2,240 of them are not trained; the whitening stem adds
729 frozen filter weights.

Recipe options change an activation, a normalisation or the stem, never the
layers and widths: `activation` (ReLU or CELU with `celu_alpha`), `stem` (the
3x3 convolution, or a frozen 3x3 patch-whitening convolution followed by a
learnt 1x1 one with the same number of weights), and the batch norms'
`freeze_bn_scale` (scales fixed at 1), `ghost_bn_splits` and
`bn_bias_lr_factor` (`beluga.batch_norm`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from .atomic import write_torch
from .batch_norm import BatchNorm
from .errors import ModelError
from .params import ModelParams
from .runtime import cpuinfo
from .whitening import patch_whitening

WHITENED_CHANNELS = 27  # one per eigenvector of a 3x3x3 patch


class _CeluFromExp(torch.autograd.Function):
    """CELU as clamp, exp and arithmetic; its gradient from the saved exp, unbiased as torch's.

    The gradient is exp(min(x, 0) / alpha), the intermediate kept for backward. aten's way,
    from the output as (y + alpha) / alpha, cancels in bf16 where y is near -alpha: below
    x = -1 it came out 5% too small on average, a bias torch's kernel does not have
    (scripts/celu_precision.py).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, alpha: float) -> torch.Tensor:
        e = x.clamp(max=0).mul_(1 / alpha).exp_()
        ctx.save_for_backward(e)
        return e.sub(1).mul_(alpha).add_(x.clamp(min=0))

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (e,) = ctx.saved_tensors
        return grad * e, None


def celu_from_exp(x: torch.Tensor, alpha: float) -> torch.Tensor:
    """CELU without torch's expm1 kernel: the same values to the dtype's rounding."""
    return _CeluFromExp.apply(x, alpha)


# Which CELU is the faster on the CPU depends on the processor and the dtype. torch's kernel
# is one fused pass around expm1; the exp form is five passes of cheaper ops. Forward over
# the stem's activations of one batch of 512 (64 x 32 x 32, bf16, channels_last): on an AMD
# EPYC (Zen 4) torch's 169 ms, the exp form 69 ms; on an Intel Xeon (Sapphire Rapids, AMX)
# torch's 42 ms, the exp form 144 ms. In fp32 on an AMD EPYC Zen 3 torch's kernel won too
# (docs/speed.md). So the exp form runs on AMD's CPUs in bf16 only.
AMD_CPU = cpuinfo("vendor_id") == "AuthenticAMD"


class CELU(nn.CELU):
    """nn.CELU, computed by `celu_from_exp` where that is the faster (AMD's CPUs, bf16)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if AMD_CPU and x.device.type == "cpu" and x.dtype == torch.bfloat16:
            return celu_from_exp(x, self.alpha)
        return super().forward(x)


class Parts:
    """The batch norm and activation every conv block gets, as the model options set them."""

    def __init__(self, activation: str, celu_alpha: float, **norm_options) -> None:
        self.activation, self.celu_alpha, self.norm_options = activation, celu_alpha, norm_options

    def norm(self, channels: int) -> BatchNorm:
        return BatchNorm(channels, **self.norm_options)

    def act(self) -> nn.Module:
        return CELU(self.celu_alpha) if self.activation == "celu" else nn.ReLU(inplace=True)


def conv_bn(
    c_in: int, c_out: int, parts: Parts, pool: bool = False, size: int = 3
) -> nn.Sequential:
    """Convolution (no bias), optional 2x2 max-pool, BatchNorm, activation."""
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, size, padding=size // 2, bias=False)]
    if pool:
        layers.append(nn.MaxPool2d(2))
    layers += [parts.norm(c_out), parts.act()]
    return nn.Sequential(*layers)


class Residual(nn.Module):
    """x + (conv-bn-activation twice)(x), at constant width."""

    def __init__(self, channels: int, parts: Parts) -> None:
        super().__init__()
        self.body = nn.Sequential(
            conv_bn(channels, channels, parts), conv_bn(channels, channels, parts)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class Whitening(nn.Conv2d):
    """A frozen 3x3 convolution whose filters decorrelate the pixels of 3x3 patches.

    Its weights are set from the training images (`beluga.whitening`) and saved
    with the model, but never trained.
    """

    def __init__(self) -> None:
        super().__init__(3, WHITENED_CHANNELS, 3, padding=1, bias=False)
        self.weight.requires_grad_(False)


class ResNet9(nn.Module):
    """The layer table of the reference run.

    `logit_scale` multiplies the logits by a fixed number (0.125 in the published
    24-epoch recipe, 1 in the reference run); it is not trained.
    """

    def __init__(
        self,
        num_classes: int = 10,
        logit_scale: float = 1.0,
        activation: str = "relu",
        celu_alpha: float = 0.075,
        stem: str = "conv",
        freeze_bn_scale: bool = False,
        ghost_bn_splits: int = 1,
        bn_bias_lr_factor: float = 1.0,
    ) -> None:
        super().__init__()
        self.config = {"num_classes": num_classes, "logit_scale": logit_scale,
                       "activation": activation, "celu_alpha": celu_alpha, "stem": stem,
                       "freeze_bn_scale": freeze_bn_scale, "ghost_bn_splits": ghost_bn_splits,
                       "bn_bias_lr_factor": bn_bias_lr_factor}  # fmt: skip
        parts = Parts(activation, celu_alpha, ghost_splits=ghost_bn_splits,
                      bias_lr_factor=bn_bias_lr_factor, freeze_scale=freeze_bn_scale)  # fmt: skip
        if stem == "whiten":
            self.prep = nn.Sequential(Whitening(), *conv_bn(WHITENED_CHANNELS, 64, parts, size=1))
        else:
            self.prep = conv_bn(3, 64, parts)
        self.layer1 = nn.Sequential(conv_bn(64, 128, parts, pool=True), Residual(128, parts))
        self.layer2 = conv_bn(128, 256, parts, pool=True)
        self.layer3 = nn.Sequential(conv_bn(256, 512, parts, pool=True), Residual(512, parts))
        self.head = nn.Sequential(nn.MaxPool2d(4), nn.Flatten(), nn.Linear(512, num_classes))
        self.logit_scale = logit_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.prep(x))))
        return self.head(x) * self.logit_scale


def build_model(params: ModelParams, num_classes: int, train_images: np.ndarray) -> ResNet9:
    """The network params.model describes; the `whiten` stem's filters come from `train_images`."""
    model = ResNet9(num_classes, **params.model_dump())
    if params.stem == "whiten":
        with torch.no_grad():
            model.prep[0].weight.copy_(patch_whitening(train_images))
    return model


def save_model(path: str | Path, model: ResNet9, classes: tuple[str, ...]) -> None:
    """Weights plus what is needed to rebuild the network, written atomically."""
    state = {"state_dict": model.state_dict(), "config": model.config, "classes": list(classes)}
    write_torch(path, state)


def load_model(path: str | Path) -> tuple[ResNet9, tuple[str, ...]]:
    """The network `save_model` wrote, on the CPU, rebuilt from what the file records.

    The file is checked before the network is built (its options as params.yaml's, its
    classes as many as its head's weights), so a corrupt or crafted one is one line.
    """
    if not Path(path).is_file():
        raise ModelError(f"{path}: not found; run the train stage first (`dvc repro train`)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        config, weights = dict(state["config"]), state["state_dict"]
        ModelParams.model_validate({k: v for k, v in config.items() if k != "num_classes"})
        classes = state["classes"]
        head = weights["head.2.weight"]
        if not all(isinstance(c, str) for c in classes) or config["num_classes"] != len(classes):
            raise ValueError(f"{config['num_classes']} classes, but names {classes!r:.100}")
        if head.shape[0] != len(classes):
            raise ValueError(f"{len(classes)} classes, but a head of {head.shape[0]}")
        model = ResNet9(**config)
        model.load_state_dict(weights)
    except Exception as error:  # noqa: BLE001 - whatever is wrong with the file, it is unusable
        reason = " ".join(f"{type(error).__name__}: {error}".split())[:200]
        raise ModelError(
            f"{path}: not a model of this network ({reason}); rerun the train stage"
        ) from None
    return model, tuple(classes)
