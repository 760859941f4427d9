"""The trained network as an ONNX file that serves without PyTorch, checked against PyTorch.

The exported graph takes what an image file holds, uint8 pixels N x 32 x 32 x 3 (any N),
and returns the logits: the normalisation is inside it, and training-time details are
folded into standard operators (each batch norm an inference BatchNormalization with the
bias gain multiplied in, ghost batches gone, CELU the standard one). The class names are
in the file's metadata (`classes`, a JSON list).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from torch import nn

from .atomic import write_with
from .batch_norm import BatchNorm
from .loader import MEAN, STD
from .model import CELU, ResNet9
from .timing import timed

OPSET = 18


class Inference(nn.Module):
    """uint8 images N x 32 x 32 x 3 -> logits, with the loader's normalisation inside."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network
        self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1) * 255)
        self.register_buffer("std", torch.tensor(STD).view(1, 3, 1, 1) * 255)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.permute(0, 3, 1, 2).float()
        return self.network((x - self.mean) / self.std)


def plain_network(model: ResNet9) -> nn.Module:
    """A copy of `model` for inference in standard modules only."""
    network = copy.deepcopy(model).float().eval()
    for module in list(network.modules()):
        for name, child in module.named_children():
            if isinstance(child, BatchNorm):
                plain = nn.BatchNorm2d(child.num_features, eps=child.eps).eval()
                with torch.no_grad():
                    plain.weight.copy_(child.weight)
                    plain.bias.copy_(child.bias * child.bias_gain)
                    plain.running_mean.copy_(child.running_mean)
                    plain.running_var.copy_(child.running_var)
                setattr(module, name, plain)
            elif isinstance(child, CELU):
                setattr(module, name, nn.CELU(child.alpha))
    return network


def _drop_stack_traces(proto) -> None:
    """Remove the exporter's per-node stack traces: they name this checkout's absolute paths
    and line numbers, so the same weights would give a different file (and DVC hash) in
    every clone and after every edit to the model's code."""
    for node in proto.graph.node:
        kept = [p for p in node.metadata_props if p.key != "pkg.torch.onnx.stack_trace"]
        del node.metadata_props[:]
        node.metadata_props.extend(kept)


@timed("onnx export")
def export(model: ResNet9, classes: tuple[str, ...], path: str | Path) -> None:
    """Write `model` as ONNX (dynamic batch size), its class names in the metadata."""
    import onnx

    example = torch.zeros(2, 32, 32, 3, dtype=torch.uint8)
    program = torch.onnx.export(
        Inference(plain_network(model)).eval(), (example,), input_names=["images"],
        output_names=["logits"], dynamic_shapes=({0: torch.export.Dim("batch")},),
        opset_version=OPSET, dynamo=True, verbose=False,
    )  # fmt: skip
    proto = program.model_proto
    _drop_stack_traces(proto)
    proto.metadata_props.add(key="classes", value=json.dumps(list(classes)))
    write_with(path, lambda tmp: onnx.save(proto, tmp))
