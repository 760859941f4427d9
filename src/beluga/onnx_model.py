"""The export stage's ONNX file, run with ONNX Runtime alone: no PyTorch on this path."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime


def onnx_logits(path: str | Path, images: np.ndarray, batch: int = 500) -> np.ndarray:
    """Logits of uint8 `images` (N x 32 x 32 x 3) from the ONNX file, with ONNX Runtime."""
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.concatenate([
        session.run(["logits"], {"images": images[i : i + batch]})[0]
        for i in range(0, len(images), batch)
    ])  # fmt: skip


def onnx_classes(path: str | Path) -> tuple[str, ...]:
    """The class names `beluga.export` wrote into the file's metadata."""
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return tuple(json.loads(session.get_modelmeta().custom_metadata_map["classes"]))
