"""Reads the inputs the fuzz test mutates, under a memory limit, and says how each went.

    python tests/fuzz_worker.py MEMORY_LIMIT_BYTES

One JSON request per line on stdin, {"format": ..., "path": ...}; one JSON answer per
line on stdout, {"outcome": ..., "detail": ...}, where the outcome is `imported` (read,
and what was read is well-formed), `refused` (a BelugaError of one line), or a failure:
`malformed` (read, but wrong), `multi-line`, `memory` (the limit was reached) or
`traceback` (any other exception). The test adds `died` and `hung`.
"""

import contextlib
import io
import json
import resource
import sys
import traceback
from pathlib import Path

import numpy as np

from beluga import data
from beluga.errors import BelugaError


def _cifar(path: Path) -> str:
    cifar = data.read_source(path, md5=None)
    for split in (cifar.train, cifar.test):
        images, labels = split.images, split.labels
        assert images.dtype == np.uint8 and images.shape[1:] == (32, 32, 3), images.shape
        assert labels.dtype == np.int64 and labels.shape == (len(images),) and len(images)
        assert labels.min() >= 0 and labels.max() < len(data.CLASSES)
    return f"{len(cifar.train.labels)} + {len(cifar.test.labels)} images"


def _checkpoint(path: Path) -> str:
    from beluga import checkpoint

    state = checkpoint.load(path)  # None, with a line, for any unreadable file
    assert state is None or isinstance(state, dict)
    return "starts afresh" if state is None else f"keys {sorted(map(str, state))[:5]}"


def _model(path: Path) -> str:
    from beluga.model import load_model

    model, classes = load_model(path)
    assert len(classes) == model.head[-1].out_features
    return f"{len(classes)} classes"


def _onnx(path: Path) -> str:
    from beluga.predict import classify

    answers = classify(np.zeros((2, 32, 32, 3), np.uint8), path, 3, "none")
    assert len(answers) == 2 and all(len(answer) == 3 for answer in answers)
    return f"top class {answers[0][0][0]}"


def _params(path: Path) -> str:
    from beluga.params import load_params

    return f"seed {load_params(path).seed}"


READERS = {"cifar": _cifar, "checkpoint": _checkpoint, "model": _model, "onnx": _onnx,
           "params": _params}  # fmt: skip


def _outcome(reader, path: Path) -> tuple[str, str]:
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            detail = reader(path)
    except BelugaError as error:
        message = str(error)
        if "MemoryError" in message:
            return "memory", message
        return ("refused" if "\n" not in message else "multi-line"), message
    except AssertionError:
        return "malformed", traceback.format_exc()
    except MemoryError:
        return "memory", traceback.format_exc()
    except Exception:  # noqa: BLE001 - exactly what the fuzz test is looking for
        return "traceback", traceback.format_exc()
    return "imported", detail


def main() -> None:
    limit = int(sys.argv[1])
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    for line in sys.stdin:
        request = json.loads(line)
        outcome, detail = _outcome(READERS[request["format"]], Path(request["path"]))
        print(json.dumps({"outcome": outcome, "detail": detail}), flush=True)


if __name__ == "__main__":
    main()
