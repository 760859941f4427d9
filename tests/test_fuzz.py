"""Mutated copies of every format beluga reads are imported correctly or refused in one line.

Hypothesis mutates a valid file of each format (bit flips, boundary values written over
it, insertions, deletions, truncation, repeated chunks, biased to the start and the end
of the file where the headers and indexes are), and a worker process reads each mutant
under a memory limit and a time limit. The suite runs a fixed share (EXAMPLES per
format, the same inputs every run); the long run is one command, for example

    BELUGA_FUZZ_EXAMPLES=200 .venv/bin/python -m pytest tests/test_fuzz.py -s
"""

import json
import os
import select
import shutil
import subprocess
import sys
import tarfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from conftest import CLASSES, ROOT, write_class_folders, write_official_archive
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from beluga import checkpoint
from beluga.export import export
from beluga.model import ResNet9, save_model

EXAMPLES = int(os.environ.get("BELUGA_FUZZ_EXAMPLES", "40"))
TIME_LIMIT_S = 10.0
# Address space, not resident memory: importing torch alone maps 3.4 GB of it.
MEMORY_LIMIT = {"cifar": 2 * 2**30, "params": 2 * 2**30, "onnx": 2 * 2**30,
                "checkpoint": 6 * 2**30, "model": 6 * 2**30}  # fmt: skip
BOUNDARY_VALUES = [b"\x00", b"\xff", b"\x7f", b"\x80", b"\xff\xff\xff\xff", b"\x7f\xff\xff\xff",
                   b"\x00\x00\x00\x00", b"\x80\x00\x00\x00", b"99999999999", b"-1"]  # fmt: skip
POSITIONS = st.one_of(st.integers(0, 600), st.integers(-600, -1), st.integers(0, 2**31 - 1))
EDITS = st.lists(
    st.tuples(
        st.sampled_from(["flip", "overwrite", "insert", "delete", "truncate", "repeat"]),
        POSITIONS,
        st.one_of(st.binary(min_size=1, max_size=16), st.sampled_from(BOUNDARY_VALUES)),
    ),
    min_size=1,
    max_size=4,
)


def mutate(blob: bytes, edits: list[tuple[str, int, bytes]]) -> bytes:
    """`blob` with `edits` applied in turn; a position counts from the end when negative."""
    out = bytearray(blob)
    for op, position, chunk in edits:
        at = position % len(out) if out else 0
        if op == "flip" and out:
            out[at] ^= chunk[0] | 1
        elif op == "overwrite":
            out[at : at + len(chunk)] = chunk
        elif op == "insert":
            out[at:at] = chunk
        elif op == "delete":
            del out[at : at + 8 * len(chunk)]
        elif op == "truncate":
            del out[at:]
        elif op == "repeat":
            out[at:at] = out[at : at + 64] * (chunk[0] % 32 + 1)
    return bytes(out)


class Worker:
    """tests/fuzz_worker.py under a memory limit, restarted whenever it dies or hangs."""

    def __init__(self, memory_limit: int) -> None:
        self.memory_limit = memory_limit
        self._start()

    def _start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(ROOT / "tests/fuzz_worker.py"), str(self.memory_limit)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )  # fmt: skip

    def read(self, reader: str, path: Path) -> dict:
        self.process.stdin.write(json.dumps({"format": reader, "path": str(path)}) + "\n")
        self.process.stdin.flush()
        ready, _, _ = select.select([self.process.stdout], [], [], TIME_LIMIT_S)
        line = self.process.stdout.readline() if ready else ""
        if line:
            return json.loads(line)
        self.process.kill()
        code = self.process.wait()
        self._start()
        if not ready:
            return {"outcome": "hung", "detail": f"no answer in {TIME_LIMIT_S} s"}
        return {"outcome": "died", "detail": f"exit code {code}"}

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=30)


@dataclass(frozen=True)
class Seed:
    reader: str  # which of fuzz_worker's readers
    blob: bytes  # the valid file that is mutated
    target: Path  # where each mutant is written
    path: Path  # what the reader is given: the target, or the folder it sits in


def _tar(source: Path, path: Path, compressed: bool) -> Path:
    with tarfile.open(path, "w:gz" if compressed else "w") as archive:
        archive.add(source, arcname=source.name)
    return path


def _whole_file(reader: str, path: Path, tmp: Path) -> Seed:
    """A file read on its own; mutants go beside the seeds, under a name of their own."""
    return Seed(reader, path.read_bytes(), tmp / f"mutant-{path.name}", tmp / f"mutant-{path.name}")


def _in_copy(folder: Path, copy: Path, member: str) -> Seed:
    shutil.copytree(folder, copy)
    return Seed("cifar", (copy / member).read_bytes(), copy / member, copy)


@pytest.fixture(scope="module")
def seeds(tmp_path_factory) -> dict[str, Seed]:
    tmp = tmp_path_factory.mktemp("fuzz")
    write_official_archive(tmp / "official.tar.gz")
    with tarfile.open(tmp / "official.tar.gz") as archive:
        archive.extractall(tmp / "official", filter="data")
    official = tmp / "official" / "cifar-10-batches-py"
    folders = tmp / "cifar"
    write_class_folders(folders)
    jpeg = tmp / "jpeg"
    shutil.copytree(folders, jpeg)
    Image.open(jpeg / "train/cat/0000.png").save(jpeg / "train/cat/0000.jpg", quality=90)
    (jpeg / "train/cat/0000.png").unlink()
    model = ResNet9(stem="whiten", activation="celu", ghost_bn_splits=16)
    save_model(tmp / "model.pt", model, CLASSES)
    export(model, CLASSES, tmp / "model.onnx")
    checkpoint.save(tmp / "ckpt.pt", {
        "fingerprint": "f", "settings": {"seed": 0}, "model": {"w": torch.randn(4, 4)},
        "training": {"step": 3}, "ranks": [{"rng": {"torch": torch.get_rng_state()}}],
        "history": [{"epoch": 1, "test_accuracy": 0.5}],
    })  # fmt: skip
    archives = {
        "tar.gz of batches": _tar(official, tmp / "batches.tar.gz", compressed=True),
        "tar of batches": _tar(official, tmp / "batches.tar", compressed=False),
        "tar of class folders": _tar(folders, tmp / "folders.tar", compressed=False),
    }
    found = {name: _whole_file("cifar", path, tmp) for name, path in archives.items()}
    found["data_batch_1"] = _in_copy(official, tmp / "b", "data_batch_1")
    found["test_batch"] = _in_copy(official, tmp / "t", "test_batch")
    found["batches.meta"] = _in_copy(official, tmp / "m", "batches.meta")
    found["PNG"] = _in_copy(folders, tmp / "p", "train/cat/0000.png")
    found["JPEG"] = _in_copy(jpeg, tmp / "j", "train/cat/0000.jpg")
    for name, path, reader in [("checkpoint", tmp / "ckpt.pt", "checkpoint"),
                               ("model file", tmp / "model.pt", "model"),
                               ("ONNX model", tmp / "model.onnx", "onnx"),
                               ("params.yaml", ROOT / "params.yaml", "params")]:  # fmt: skip
        found[name] = _whole_file(reader, path, tmp)
    return found


@pytest.fixture(scope="module")
def workers():
    pool: dict[int, Worker] = {}
    yield lambda reader: pool.setdefault(MEMORY_LIMIT[reader], Worker(MEMORY_LIMIT[reader]))
    for worker in pool.values():
        worker.close()


FORMATS = ["data_batch_1", "test_batch", "batches.meta", "tar.gz of batches", "tar of batches",
           "tar of class folders", "PNG", "JPEG", "checkpoint", "model file", "ONNX model",
           "params.yaml"]  # fmt: skip


def test_every_seed_file_is_read_as_it_is(seeds, workers):
    for name in FORMATS:
        seed = seeds[name]
        seed.target.write_bytes(seed.blob)
        assert workers(seed.reader).read(seed.reader, seed.path)["outcome"] == "imported", name


@pytest.mark.parametrize("name", FORMATS)
def test_mutated_files_are_imported_or_refused_in_one_line(name: str, seeds, workers):
    seed, worker, outcomes = seeds[name], workers(seeds[name].reader), Counter()
    details = Counter()

    @settings(max_examples=EXAMPLES, derandomize=True, database=None, deadline=None,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(EDITS)
    def read_mutant(edits):
        seed.target.write_bytes(mutate(seed.blob, edits))
        answer = worker.read(seed.reader, seed.path)
        outcomes[answer["outcome"]] += 1
        details[answer["detail"][:90]] += 1
        assert answer["outcome"] in ("imported", "refused"), answer["detail"]

    try:
        read_mutant()
    finally:
        seed.target.write_bytes(seed.blob)
        print(f"\nfuzz {name}: {dict(outcomes)} {details.most_common(6)}")
