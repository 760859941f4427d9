"""The export stage's ONNX file, run with ONNX Runtime alone: no PyTorch on this path."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime

from .timing import timed


class OnnxClassifier:
    """One ONNX Runtime session of the file: its logits and the class names in its metadata."""

    def __init__(self, path: str | Path) -> None:
        self.session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        meta = self.session.get_modelmeta().custom_metadata_map
        self.classes: tuple[str, ...] = tuple(json.loads(meta["classes"]))

    @timed("onnx runtime")
    def logits(self, images: np.ndarray, batch: int = 500) -> np.ndarray:
        """Logits of uint8 `images` (N x 32 x 32 x 3), `batch` images a run."""
        return np.concatenate([
            self.session.run(["logits"], {"images": images[i : i + batch]})[0]
            for i in range(0, len(images), batch)
        ])  # fmt: skip
