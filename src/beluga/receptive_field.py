"""Each layer's output shape and receptive field, computed from the layers themselves.

torchinfo runs the model once and lists its leaf layers in the order they
run. Walking that list, a layer with kernel k, stride s and dilation d widens
the receptive field r by (k - 1) * d * j, where j is the distance in input
pixels between neighbouring outputs, and multiplies j by s; an adaptive
(global) pooling layer is a kernel as wide as its input. Layers run in
sequence along the longest path, so for a residual block (x + body(x)) the
figure is that of its body, which is the block's receptive field.
"""

from __future__ import annotations

import pandas as pd
from torch import nn
from torchinfo.model_statistics import ModelStatistics

WINDOWED = (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)  # kernel, stride, (dilation)


def _pair(value: int | tuple[int, ...]) -> int:
    """The height component of a kernel size, stride or dilation (square windows)."""
    return value if isinstance(value, int) else value[0]


def layer_table(model: nn.Module, stats: ModelStatistics) -> pd.DataFrame:
    """One row per leaf layer: name, type, output shape, parameters (all, and those
    trained), receptive field, jump.

    `stats` is `torchinfo.summary` of `model` on one image (the export stage writes it too).
    """
    names = {id(module): name for name, module in model.named_modules()}
    field, jump, rows = 1, 1, []
    for layer in stats.summary_list:
        module = layer.module
        if not layer.is_leaf_layer:
            continue
        if isinstance(module, WINDOWED):
            kernel = _pair(module.kernel_size)
            stride = _pair(module.stride)
            dilation = _pair(getattr(module, "dilation", 1))
            field += (kernel - 1) * dilation * jump
            jump *= stride
        elif isinstance(module, nn.AdaptiveMaxPool2d | nn.AdaptiveAvgPool2d):
            width = layer.input_size[-1]
            field += (width - 1) * jump
            jump *= width
        rows.append(
            {
                "layer": names[id(module)],
                "type": layer.class_name,
                "output_shape": "x".join(str(n) for n in layer.output_size[1:]),
                "parameters": layer.num_params,
                "trained_parameters": layer.trainable_params,
                "receptive_field": field,
                "jump": jump,
            }
        )
    return pd.DataFrame(rows)
