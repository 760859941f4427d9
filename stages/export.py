"""Stage `export`: the trained model as ONNX (paths.onnx_model), checked on the test set,
and described layer by layer (paths.model_summary, paths.layers).

ONNX Runtime's logits for every test image are compared with PyTorch's in fp32: the
share of equal top-1 predictions, the largest logit difference and both accuracies go
to paths.export_metrics, and an export that agrees on fewer than 99.9% fails. The
layer table is written here, where PyTorch is loaded anyway, so that the report stage
runs without it.
"""

import time

import numpy as np
import torch
import torchinfo

from beluga import data
from beluga.atomic import write_json, write_text, write_with
from beluga.cli import stage
from beluga.errors import ModelError
from beluga.evaluate import predict
from beluga.export import OPSET, export
from beluga.loader import DeviceLoader
from beluga.model import load_model
from beluga.onnx_model import OnnxClassifier
from beluga.params import load_params
from beluga.receptive_field import layer_table
from beluga.runtime import resolve

MIN_AGREEMENT = 0.999


@stage
def main() -> None:
    start = time.perf_counter()
    params = load_params()
    paths = params.paths
    runtime = resolve(params.runtime.model_copy(update={"precision": "fp32"}))
    cifar = data.load(paths.data)
    model, classes = load_model(paths.model)
    summary = torchinfo.summary(
        model, input_size=(1, 3, 32, 32), depth=4, verbose=0,
        col_names=("output_size", "num_params"),
    )  # fmt: skip
    write_text(paths.model_summary, f"{summary}\n")
    layers = layer_table(model, summary)
    write_with(paths.layers, lambda tmp: layers.to_csv(tmp, index=False))
    export(model, classes, paths.onnx_model)
    images, labels = cifar.test.images, cifar.test.labels
    onnx = OnnxClassifier(paths.onnx_model)
    if onnx.classes != tuple(classes):
        raise ModelError(f"{paths.onnx_model}: its class names {onnx.classes} are not the "
                         f"model's {tuple(classes)}")  # fmt: skip
    exported = onnx.logits(images)
    loader = DeviceLoader(images, labels, params.evaluate.batch_size, runtime)
    reference = predict(runtime.prepare(model), loader, runtime).cpu().numpy()
    agreement = float((exported.argmax(1) == reference.argmax(1)).mean())
    if agreement < MIN_AGREEMENT:
        raise ModelError(
            f"{paths.onnx_model}: ONNX Runtime's predictions agree with PyTorch's on only "
            f"{100 * agreement:.2f}% of the test images (at least {100 * MIN_AGREEMENT}%)"
        )
    write_json(
        paths.export_metrics,
        {
            "agreement": agreement,
            "max_logit_difference": float(np.abs(exported - reference).max()),
            "onnx_accuracy": float((exported.argmax(1) == labels).mean()),
            "torch_fp32_accuracy": float((reference.argmax(1) == labels).mean()),
            "images": len(labels),
            "opset": OPSET,
            "seconds": round(time.perf_counter() - start, 1),
        },
    )
    print(f"{paths.onnx_model}: agrees with PyTorch on {100 * agreement:.2f}% of "
          f"{len(labels)} test images")  # fmt: skip


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
