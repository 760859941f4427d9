"""Classify your own images with a trained model.

    python -m beluga.predict IMAGE_OR_FOLDER... [--model models/model.pt] [--top 3]
                             [--tta none|flip|flip_shift]

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
import io
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from .cli import stage
from .data.images import IMAGE_FORMATS, rgb_pixels
from .errors import DataError
from .evaluate import TTA
from .evaluate import predict as predict_logits
from .loader import DeviceLoader
from .model import load_model
from .params import RuntimeParams
from .runtime import resolve

SUFFIXES = {".png", ".jpg", ".jpeg"}
SIDE = 32
BATCH = 256  # images a forward pass: as fast as larger batches on a CPU, in far less memory


def read_image(name: str, blob: bytes) -> np.ndarray:
    """`blob` as a 32 x 32 x 3 uint8 image; one DataError line naming `name` if it is not
    a readable PNG or JPEG."""
    try:
        with Image.open(io.BytesIO(blob), formats=IMAGE_FORMATS) as image:
            pixels = rgb_pixels(ImageOps.exif_transpose(image))  # upright, as a viewer shows it
    except Exception as error:  # noqa: BLE001 - any decoding failure means an unreadable image
        reason = " ".join(f"{type(error).__name__}: {error}".split())[:200]
        raise DataError(f"{name}: not a readable PNG or JPEG image ({reason})") from None
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


def classify(
    images: np.ndarray, model_path: Path, top: int, tta: str
) -> list[list[tuple[str, float]]]:
    """The `top` (class, probability) pairs of each image, as the evaluate stage scores it."""
    model, classes = load_model(model_path)
    runtime = resolve(RuntimeParams(device="auto", precision="auto", channels_last=True))
    labels = np.zeros(len(images), dtype=np.int64)
    loader = DeviceLoader(images, labels, BATCH, runtime)
    logits = predict_logits(runtime.prepare(model), loader, runtime, tta)
    probabilities, indices = torch.softmax(logits, 1).topk(min(top, len(classes)), dim=1)
    return [
        [(classes[i], p) for i, p in zip(row_i.tolist(), row_p.tolist())]
        for row_i, row_p in zip(indices, probabilities)
    ]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m beluga.predict",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("images", nargs="+", help="PNG or JPEG files, folders, or - (stdin)")
    parser.add_argument("--model", type=Path, default=Path("models/model.pt"))
    parser.add_argument("--top", type=int, default=3, help="classes shown per image")
    parser.add_argument("--tta", choices=sorted(TTA), default="none",
                        help="test-time augmentation; flip_shift is the evaluate stage's (6 "
                             "forward passes an image)")  # fmt: skip
    return parser


@stage
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
