"""Classify your own images with a trained model.

    python -m beluga.predict IMAGE_OR_FOLDER... [--model models/model.pt] [--top 3]
                             [--tta none|flip|flip_shift|flip_shift_equal]

PNG and JPEG files of any size; `-` reads one image from standard input, and a folder
gives its PNG and JPEG files. An image that is not 32x32 is centre-cropped to a square
and resized to 32x32 (Pillow's `ImageOps.fit`, Lanczos), as CIFAR-10's own pictures were
made small. The network runs as the evaluate stage runs it (the model file's own options
and classes, the same precision; `--tta flip_shift` for the stage's test-time
augmentation, which costs six forward passes an image), in batches. Each image gets
a line of its top classes; one that cannot be read gets one line on stderr naming it, the
others are still answered, and the exit code is 1.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from .cli import command
from .data.images import decode
from .errors import DataError, ModelError

# beluga.evaluate.TTA, named without importing torch
TTA_NAMES = ("none", "flip", "flip_shift", "flip_shift_equal")

SUFFIXES = {".png", ".jpg", ".jpeg"}
SIDE = 32
BATCH = 256  # images a forward pass: as fast as larger batches on a CPU, in far less memory


def read_image(name: str, blob: bytes) -> np.ndarray:
    """`blob` as a 32 x 32 x 3 uint8 image, upright, centre-cropped and resized if it is
    another size; one DataError line naming `name` if it is not a readable PNG or JPEG."""
    pixels, _ = decode(name, blob, side=None, upright=True)
    if pixels.shape[:2] != (SIDE, SIDE):
        fitted = ImageOps.fit(Image.fromarray(pixels), (SIDE, SIDE), Image.Resampling.LANCZOS)
        pixels = np.asarray(fitted, dtype=np.uint8)
    return pixels


def expand(sources: list[str]) -> list[str]:
    """Each source as given, and a folder as its PNG and JPEG files, in sorted order."""
    names = []
    for source in sources:
        path = Path(source)
        if source != "-" and path.is_dir():
            names += sorted(str(p) for p in path.rglob("*") if p.suffix.lower() in SUFFIXES)
        else:
            names.append(source)
    return names


def _load(name: str) -> np.ndarray:
    try:
        blob = sys.stdin.buffer.read() if name == "-" else Path(name).read_bytes()
    except OSError as error:
        raise DataError(f"{name}: cannot read ({error.strerror})") from None
    return read_image("standard input" if name == "-" else name, blob)


def _torch_logits(images: np.ndarray, model_path: Path, tta: str) -> tuple[np.ndarray, tuple]:
    """Logits as the evaluate stage computes them, from the PyTorch model file."""
    from .evaluate import predict
    from .loader import DeviceLoader
    from .model import load_model
    from .params import RuntimeParams
    from .runtime import resolve

    model, classes = load_model(model_path)
    runtime = resolve(RuntimeParams(device="auto", precision="auto", channels_last=True))
    loader = DeviceLoader(images, np.zeros(len(images), dtype=np.int64), BATCH, runtime)
    return predict(runtime.prepare(model), loader, runtime, tta).cpu().numpy(), classes


def _onnx_logits(images: np.ndarray, model_path: Path, tta: str) -> tuple[np.ndarray, tuple]:
    """Logits from the ONNX file with ONNX Runtime alone: PyTorch is never imported."""
    from .onnx_model import OnnxClassifier

    if tta != "none":
        raise ModelError(f"{model_path}: --tta {tta} needs the PyTorch model file (model.pt)")
    try:
        model = OnnxClassifier(model_path)
        return model.logits(images, BATCH), model.classes
    except Exception as error:  # noqa: BLE001 - whatever is wrong with the file, it is unusable
        reason = " ".join(f"{type(error).__name__}: {error}".split())[:200]
        raise ModelError(f"{model_path}: not an ONNX model of this network ({reason})") from None


def classify(
    images: np.ndarray, model_path: Path, top: int, tta: str
) -> list[list[tuple[str, float]]]:
    """The `top` (class, probability) pairs of each image; a .onnx file runs on ONNX Runtime."""
    run = _onnx_logits if model_path.suffix == ".onnx" else _torch_logits
    logits, classes = run(images, model_path, tta)
    shifted = np.exp(logits - logits.max(1, keepdims=True))
    probabilities = shifted / shifted.sum(1, keepdims=True)
    best = np.argsort(-probabilities, axis=1, kind="stable")[:, :top]
    return [[(classes[i], float(row[i])) for i in order] for row, order in zip(probabilities, best)]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m beluga.predict",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("images", nargs="+", help="PNG or JPEG files, folders, or - (stdin)")
    parser.add_argument("--model", type=Path, default=Path("models/model.pt"),
                        help="model.pt, or the export stage's model.onnx (ONNX Runtime, "
                             "no PyTorch)")  # fmt: skip
    parser.add_argument("--top", type=int, default=3, help="classes shown per image")
    parser.add_argument("--tta", choices=TTA_NAMES, default="none",
                        help="test-time augmentation; flip_shift is the evaluate stage's (6 "
                             "forward passes an image)")  # fmt: skip
    return parser


@command
def main() -> None:
    args = _parser().parse_args()
    names, images, failed = [], [], False
    found = expand(args.images)
    if not found:
        raise DataError(f"{' '.join(args.images)}: no PNG or JPEG files there")
    for name in found:
        try:
            images.append(_load(name))
            names.append(name)
        except DataError as error:
            print(f"error: {error}", file=sys.stderr)
            failed = True
    if images:
        answers = classify(np.stack(images), args.model, max(args.top, 1), args.tta)
        for name, answer in zip(names, answers):
            print(f"{name}: " + ", ".join(f"{cls} {100 * p:.1f}%" for cls, p in answer))
    if failed or not images:
        sys.exit(1)


if __name__ == "__main__":
    main()
