"""Stage `evaluate`: the trained model on the test set; metrics and one row per image."""

import pandas as pd
import torch
import torch.nn.functional as F

from beluga import data
from beluga.atomic import write_json, write_with
from beluga.cli import stage
from beluga.evaluate import predict
from beluga.loader import DeviceLoader
from beluga.model import load_model
from beluga.params import load_params
from beluga.runtime import resolve

DATA = "data/cifar10.npz"
MODEL = "models/model.pt"
METRICS = "metrics/eval.json"
PREDICTIONS = "plots/confusion.csv"


@stage
def main() -> None:
    params = load_params()
    runtime = resolve(params.train.device, params.train.precision, params.train.channels_last)
    cifar = data.load(DATA)
    model, classes = load_model(MODEL, runtime.device)
    model = runtime.prepare(model)
    loader = DeviceLoader(
        cifar.test.images, cifar.test.labels, params.evaluate.batch_size, runtime.device,
        channels_last=runtime.channels_last,
    )  # fmt: skip
    logits = predict(model, loader, runtime, tta=params.evaluate.tta)
    labels = loader.labels
    confidence, predicted = F.softmax(logits, dim=1).max(dim=1)
    correct = int((predicted == labels).sum())
    total = len(labels)
    names = pd.Series(classes)
    table = pd.DataFrame(
        {
            "actual": names[labels.cpu().numpy()].to_numpy(),
            "predicted": names[predicted.cpu().numpy()].to_numpy(),
            "confidence": confidence.cpu().numpy().round(4),
        }
    )
    write_with(PREDICTIONS, lambda tmp: table.to_csv(tmp, index_label="image"))
    write_json(
        METRICS,
        {
            "accuracy": correct / total,
            "loss": round(F.cross_entropy(logits, labels).item(), 6),
            "correct": correct,
            "total": total,
            "tta": params.evaluate.tta,
        },
    )
    print(f"Test set: Accuracy: {correct}/{total} ({100 * correct / total:.2f}%)")


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
