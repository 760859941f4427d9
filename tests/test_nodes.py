"""One training run on two nodes: two torchrun agents on this host (gloo, loopback, 2 x 1
ranks) joined by the static rendezvous, against two ranks on one node."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch
from conftest import model_weights, set_params, sh, tool_env

EPOCHS = 6


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("localhost", 0))
        return probe.getsockname()[1]


def _nodes(project: Path, tmp_path: Path) -> tuple[Path, Path]:
    """Node 0 (the reproduced project) and node 1 (a copy with the same data and range test),
    set for two nodes."""
    endpoint = f"localhost:{_free_port()}"
    set_params(project, train={"epochs": EPOCHS},
               nodes={"count": 2, "endpoint": endpoint, "timeout_s": 30})  # fmt: skip
    other = tmp_path / "node1"
    shutil.copytree(project, other, symlinks=True)
    (other / "models/model.pt").unlink()  # so a test sees whether node 1 writes one
    return project, other


def _join(node: Path) -> subprocess.Popen:
    """Node 1's command, in its own process group (so a test can kill the whole node)."""
    return subprocess.Popen(
        [sys.executable, "stages/train.py", "--node-rank", "1"], cwd=node,
        env={**tool_env(), "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip


def _repro(node: Path) -> subprocess.Popen:
    return subprocess.Popen(
        ["dvc", "repro", "train"], cwd=node, env={**tool_env(), "OMP_NUM_THREADS": "1"},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip


def _epochs_done(node: Path) -> int:
    try:
        return json.loads((node / "metrics/train.json").read_text())["epochs_done"]
    except (OSError, ValueError, KeyError):
        return 0


def test_two_nodes_train_like_two_ranks_on_one_and_resume_after_a_node_is_killed(
    reproduced_copy: Path, tmp_path: Path
):
    node0, node1 = _nodes(reproduced_copy, tmp_path)
    one_node = tmp_path / "one-node"
    shutil.copytree(node0, one_node, symlinks=True)
    set_params(one_node, nodes={"count": 1}, train={"nproc": 2})
    single = sh("dvc", "repro", "train", cwd=one_node)
    assert "Launching 2 ranks, 1 CPU threads each" in single.stdout

    joined, main = _join(node1), _repro(node0)
    deadline = time.monotonic() + 300
    while _epochs_done(node0) < 2 and time.monotonic() < deadline and main.poll() is None:
        time.sleep(0.05)
    os.killpg(joined.pid, signal.SIGKILL)  # node 1, its agent and its rank
    killed = time.monotonic()
    _, err = main.communicate(timeout=120)
    assert time.monotonic() - killed < 60 and main.returncode != 0
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in err, err[-3000:]
    assert errors[0].startswith("error: rank 0 lost the other ranks (")
    assert errors[0].endswith("start every node's command again to resume")
    done = _epochs_done(node0)
    assert 2 <= done < EPOCHS

    joined, main = _join(node1), _repro(node0)
    out, err = main.communicate(timeout=600)
    assert main.returncode == 0, err[-3000:]
    assert joined.wait(timeout=60) == 0, joined.stderr.read()[-3000:]
    assert "Launching 1 ranks as node 0 of 2" in out
    assert f"Resuming from checkpoints/train.pt after epoch {done}" in out
    assert "All 2 ranks hold the same weights" in out
    assert not (node1 / "models/model.pt").exists()  # rank 0, on node 0, alone writes
    metrics = [json.loads((p / "metrics/train.json").read_text()) for p in (node0, one_node)]
    assert metrics[0]["epochs_done"] == EPOCHS
    for key in ("train_loss", "train_accuracy", "test_loss", "test_accuracy", "lr"):
        assert metrics[0][key] == metrics[1][key], key
    two, one = (model_weights(p / "models/model.pt") for p in (node0, one_node))
    assert two.keys() == one.keys()
    assert all(torch.equal(two[k], one[k]) for k in two)


def test_a_node_that_never_joins_trains_another_run_or_is_outside_the_job_is_one_line(
    reproduced_copy: Path, tmp_path: Path
):
    node0, node1 = _nodes(reproduced_copy, tmp_path)
    set_params(node0, train={"max_lr": 0.1})  # no range test: node 0 sends its max_lr
    set_params(node1, train={"max_lr": 0.1, "epochs": EPOCHS - 1})
    joined, main = _join(node1), subprocess.run(
        [sys.executable, "stages/train.py"], cwd=node0, env=tool_env(), capture_output=True,
        text=True, timeout=120,
    )  # fmt: skip
    assert main.returncode != 0 and joined.wait(timeout=60) != 0
    for err in (main.stderr, joined.stderr.read()):
        errors = [line for line in err.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "Traceback" not in err, err[-3000:]
        assert "would train another run than rank" in errors[0]
        assert errors[0].endswith("give every node the same commit, params.yaml and data")
    assert f"(train.epochs: {EPOCHS - 1} -> {EPOCHS})" in main.stderr  # node 1's, node 0's

    result = subprocess.run([sys.executable, "stages/train.py", "--node-rank", "2"], cwd=node0,
                            env=tool_env(), capture_output=True, text=True)  # fmt: skip
    assert result.returncode != 0
    assert result.stderr.strip() == "error: --node-rank 2: must be from 0 to nodes.count - 1 = 1"

    set_params(node0, nodes={"timeout_s": 10})
    start = time.monotonic()
    result = subprocess.run([sys.executable, "stages/train.py"], cwd=node0, env=tool_env(),
                            capture_output=True, text=True)  # fmt: skip
    assert result.returncode != 0 and time.monotonic() - start < 60
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert errors[0].startswith("error: node 0 of 2: no training job at localhost:")
