"""Stage `evaluate`: the trained model on the test set; metrics and one row per image."""

import time

import torch
import torch.nn.functional as F

from beluga import data
from beluga.atomic import write_json, write_with
from beluga.cli import stage
from beluga.confusion import predictions_table
from beluga.evaluate import score
from beluga.loader import DeviceLoader
from beluga.model import load_model
from beluga.params import load_params
from beluga.runtime import resolve


@stage
def main() -> None:
    start = time.perf_counter()
    params = load_params()
    paths = params.paths
    runtime = resolve(params.runtime)
    cifar = data.load(paths.data)
    model, classes = load_model(paths.model)
    loader = DeviceLoader(cifar.test.images, cifar.test.labels, params.evaluate.batch_size,
                          runtime)  # fmt: skip
    result = score(runtime.prepare(model), loader, runtime, tta=params.evaluate.tta)
    confidence, predicted = F.softmax(result.logits, dim=1).max(dim=1)
    table = predictions_table(result.labels.cpu().numpy(), predicted.cpu().numpy(),
                              confidence.cpu().numpy(), classes)  # fmt: skip
    write_with(paths.predictions, lambda tmp: table.to_csv(tmp, index_label="image"))
    write_json(
        paths.eval_metrics,
        {
            "accuracy": result.accuracy,
            "loss": round(result.loss, 6),
            "correct": result.correct,
            "total": result.total,
            "tta": params.evaluate.tta,
            "seconds": round(time.perf_counter() - start, 1),
        },
    )
    print(f"Test set: Accuracy: {result.correct}/{result.total} ({100 * result.accuracy:.2f}%)")


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
