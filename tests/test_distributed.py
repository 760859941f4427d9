"""Data-parallel training with the real torchrun launcher: 2 processes, gloo, CPU."""

import json
import subprocess
from pathlib import Path

import pandas as pd
from conftest import ROOT, sh, tool_env

TORCHRUN = ["torchrun", "--standalone", "--nproc-per-node", "2"]


def test_ranks_see_disjoint_images_and_keep_identical_parameters(tmp_path: Path):
    result = subprocess.run(
        [*TORCHRUN, str(ROOT / "tests" / "ddp_probe.py"), str(tmp_path)],
        env={**tool_env(), "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    rank0, rank1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert rank0["batches"] == rank1["batches"] == 4  # 64 images, global batch 16
    assert len(rank0["seen"]) == len(rank1["seen"]) == 32
    assert set(rank0["seen"]).isdisjoint(rank1["seen"])
    assert sorted(rank0["seen"] + rank1["seen"]) == list(range(64))
    for step in range(3):
        assert rank0["checksums"][step] == rank1["checksums"][step], f"step {step + 1}"
    assert rank0["checksums"][0] != rank0["checksums"][2]
    assert rank0["rows"] == rank1["rows"]  # losses and accuracies reduced over both ranks


def test_train_stage_under_torchrun_with_two_processes(reproduced_copy: Path):
    project = reproduced_copy
    result = sh("dvc", "exp", "run", "-S", "train.nproc=2", "-S", "train.epochs=2", "train",
                cwd=project)  # fmt: skip
    assert "Launching 2 ranks, 1 CPU threads each" in result.stdout
    assert result.stdout.count("Training on 2 x cpu") == 1  # rank 0 alone prints
    assert result.stdout.count("Test set: Average loss") == 2
    metrics = json.loads((project / "metrics/train.json").read_text())
    assert metrics["epochs_done"] == 2 and 0 <= metrics["final_test_accuracy"] <= 1
    history = pd.read_csv(project / "plots/history.csv")
    assert history.epoch.tolist() == [1, 2] and history.train_loss.notna().all()
    assert (project / "models/model.pt").stat().st_size > 20_000_000
    assert not (project / "checkpoints/train.pt").exists()
