"""What DVC, the README and the params promise holds on every path: up to date, resume, locks."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import (
    CPU,
    DEFAULTS,
    ROOT,
    make_project,
    set_params,
    sh,
    tool_env,
    write_class_folders,
)
from PIL import Image

from beluga import checkpoint
from beluga.atomic import write_text
from beluga.distributed import ONE_PROCESS
from beluga.errors import TrainingError
from beluga.loader import DeviceLoader
from beluga.model import ResNet9
from beluga.optim import one_cycle
from beluga.train import _restore, fit

STAGES = ("download", "lr_find", "train", "evaluate", "export", "report")


def _stale(project: Path) -> set[str]:
    status = json.loads(sh("dvc", "status", "--json", cwd=project).stdout)
    return set(status)


# --- DVC's "up to date" -------------------------------------------------------------------------


def test_a_changed_source_file_at_the_same_path_reruns_download(tmp_path: Path):
    write_class_folders(tmp_path / "folders")
    project = make_project(tmp_path, data={"source": str(tmp_path / "folders"), "md5": None})
    sh("dvc", "repro", "download", cwd=project)
    before = (project / "data/cifar10.npz").read_bytes()
    assert "download" not in _stale(project)

    image = tmp_path / "folders/train/cat/0000.png"
    Image.new("RGB", (32, 32), (255, 0, 0)).save(image)
    assert "download" in _stale(project)
    sh("dvc", "repro", "download", cwd=project)
    assert (project / "data/cifar10.npz").read_bytes() != before


@pytest.mark.parametrize(
    "library_file", ["figures.py", "distributed.py", "data/archive.py", "runtime.py"]
)
def test_editing_any_library_file_makes_every_stage_stale(reproduced_copy: Path, library_file: str):
    assert _stale(reproduced_copy) == set()
    with open(reproduced_copy / "src/beluga" / library_file, "a") as handle:
        handle.write("\n# edited\n")
    assert _stale(reproduced_copy) == set(STAGES)


# --- resume ---------------------------------------------------------------------------------


def _tiny_fit_inputs():
    rng = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (64, 32, 32, 3), generator=rng, dtype=torch.uint8).numpy()
    labels = torch.randint(0, 10, (64,), generator=rng).numpy()
    loader = DeviceLoader(images, labels, 16, CPU, augment=DEFAULTS.augment, shuffle=True)
    model = ResNet9()
    train = DEFAULTS.train.model_copy(update={"epochs": 2, "batch_size": 16})
    opt = one_cycle(model, optimizer=DEFAULTS.optimizer, train=train, max_lr=0.05,
                    steps_per_epoch=len(loader), runtime=CPU)  # fmt: skip
    return model, opt, loader


def test_checkpoint_is_loaded_to_the_cpu_whatever_wrote_it(tmp_path: Path, monkeypatch):
    model, opt, loader = _tiny_fit_inputs()
    path = tmp_path / "ckpt.pt"
    state = {
        "fingerprint": "f", "settings": {}, "model": model.state_dict(),
        "training": opt.state_dict(), "history": [{"epoch": 1}],
        "ranks": [{"loader": loader.state_dict(), "rng": {"torch": torch.get_rng_state()}}],
    }  # fmt: skip
    checkpoint.save(path, state)
    seen = {}
    real_load = torch.load

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    loaded = checkpoint.load(path)
    assert seen["map_location"] == "cpu"
    generators = loaded["ranks"][0]["loader"]
    tensors = [loaded["ranks"][0]["rng"]["torch"], generators["generator"],
               generators["augment_generator"]]  # fmt: skip
    assert all(t.device.type == "cpu" and t.dtype == torch.uint8 for t in tensors)
    history = _restore(path, "f", {}, model, opt, loader, CPU, ONE_PROCESS)
    assert history == [{"epoch": 1}]


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", None, "list"])
def test_an_unreadable_or_unfitting_checkpoint_is_one_line_then_a_fresh_start(
    tmp_path: Path, capsys, content: bytes | None
):
    model, opt, loader = _tiny_fit_inputs()
    path = tmp_path / "ckpt.pt"
    if content is None:  # a readable checkpoint of a network of another shape
        other = ResNet9(num_classes=7)
        checkpoint.save(path, {"fingerprint": "f", "settings": {}, "model": other.state_dict(),
                               "training": {}, "ranks": [], "history": [{}]})  # fmt: skip
    elif content == "list":  # torch can read it, but it is no checkpoint
        torch.save([1], path)
    else:
        path.write_bytes(content)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert _restore(path, "f", {}, model, opt, loader, CPU, ONE_PROCESS) is None
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"Ignoring {path}") and "afresh" in lines[0]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def _tiny_fit(path: Path) -> tuple[list[dict], dict]:
    """Two epochs of `fit` from seed 0 with its checkpoint at `path`: history, kept weights."""
    torch.manual_seed(0)
    model, _, loader = _tiny_fit_inputs()
    train = DEFAULTS.train.model_copy(update={"epochs": 2, "batch_size": 16})
    history, kept = fit(model, train_loader=loader, test_loader=loader, runtime=CPU,
                        train=train, optimizer=DEFAULTS.optimizer, max_lr=0.05,
                        checkpoint_path=path, fingerprint="f", settings={})  # fmt: skip
    for row in history:
        row.pop("seconds")
    return history, kept.state_dict()


def test_a_restore_that_fails_half_way_starts_wholly_afresh(tmp_path: Path, capsys):
    fresh_history, fresh_weights = _tiny_fit(tmp_path / "fresh.pt")
    state = checkpoint.load(tmp_path / "fresh.pt")  # after the last epoch: the scheduler is done
    state["ranks"][0]["loader"] = {"epoch": 1}  # model and optimizer load; then this fails
    checkpoint.save(tmp_path / "half.pt", state)
    history, weights = _tiny_fit(tmp_path / "half.pt")
    assert "it no longer fits the model" in capsys.readouterr().out
    assert history == fresh_history
    assert all(torch.equal(weights[k], v) for k, v in fresh_weights.items())


def test_a_lock_that_is_a_symbolic_link_is_refused_and_its_target_untouched(tmp_path: Path):
    (tmp_path / "params.yaml").write_text("seed: 0\n")
    lock = tmp_path / "checkpoints/train.pt.lock"
    lock.parent.mkdir()
    lock.symlink_to("../params.yaml")
    with pytest.raises(TrainingError) as error, checkpoint.exclusive(lock):
        pass
    assert str(error.value) == f"{lock}: cannot be the training lock (a symbolic link); remove it"
    assert (tmp_path / "params.yaml").read_text() == "seed: 0\n"


def test_a_checkpoint_of_other_params_names_the_keys_that_differ(tmp_path: Path, capsys):
    model, opt, loader = _tiny_fit_inputs()
    path = tmp_path / "ckpt.pt"
    old = {"train": {"epochs": 4, "label_smoothing": 0.2}, "seed": 0}
    new = {"train": {"epochs": 4, "label_smoothing": 0.1}, "seed": 0}
    checkpoint.save(path, {"fingerprint": "old", "settings": old})
    assert _restore(path, "new", new, model, opt, loader, CPU, ONE_PROCESS) is None
    assert "train.label_smoothing: 0.2 -> 0.1" in capsys.readouterr().out


def test_the_fingerprint_covers_code_and_data(tmp_path: Path):
    data = tmp_path / "d.npz"
    data.write_bytes(b"a")
    script = tmp_path / "stage.py"
    script.write_text("x = 1\n")
    first = checkpoint.fingerprint({"a": 1}, data, checkpoint.code_digest(script))
    script.write_text("x = 2\n")
    assert checkpoint.fingerprint({"a": 1}, data, checkpoint.code_digest(script)) != first
    script.write_text("x = 1\n")
    assert checkpoint.fingerprint({"a": 1}, data, checkpoint.code_digest(script)) == first
    data.write_bytes(b"b")
    assert checkpoint.fingerprint({"a": 1}, data, checkpoint.code_digest(script)) != first


def test_temporary_files_of_a_killed_write_are_removed_at_the_next(tmp_path: Path):
    target = tmp_path / "metrics.json"
    (tmp_path / ".metrics.json.abc123.json.tmp").write_text("half")
    write_text(target, "{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


def test_cleanup_of_one_output_leaves_another_outputs_temporary_files(tmp_path: Path):
    # "[a]b.json" read as a glob pattern would match "ab.json"'s temporary files
    other = tmp_path / ".ab.json.x1.json.tmp"
    other.write_text("another stage writing now")
    write_text(tmp_path / "[a]b.json", "{}")
    assert other.exists() and (tmp_path / "[a]b.json").read_text() == "{}"


def test_outputs_get_the_mode_the_umask_allows(tmp_path: Path):
    old = os.umask(0o077)
    try:
        write_text(tmp_path / "private.json", "{}")
    finally:
        os.umask(old)
    write_text(tmp_path / "shared.json", "{}")
    assert (tmp_path / "private.json").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "shared.json").stat().st_mode & 0o777 == 0o666 & ~old


# --- one training run per workspace, and ranks that die with their launcher -----------------

SLOW = {"train": {"epochs": 50, "batch_size": 8}}


def _wait_for(condition, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _train_processes(project: Path) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and Path(os.readlink(proc / "cwd")) == project:
                if b"stages/train.py" in (proc / "cmdline").read_bytes():
                    pids.append(int(proc.name))
        except OSError:
            continue
    return pids


def test_a_second_training_run_is_refused_naming_the_first(reproduced_copy: Path):
    project = reproduced_copy
    set_params(project, **SLOW)
    first = subprocess.Popen([sys.executable, "stages/train.py"], cwd=project, env=tool_env(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        _wait_for(lambda: (project / "checkpoints/train.pt").exists())
        second = sh(sys.executable, "stages/train.py", cwd=project, check=False)
        assert second.returncode == 1
        assert second.stderr.strip() == (
            f"error: another training run (pid {first.pid}) is using this workspace "
            "(checkpoints/train.pt.lock); wait for it to end or stop it"
        )
    finally:
        first.kill()
        first.wait()


def test_ranks_die_with_their_launcher_and_the_workspace_is_free_again(reproduced_copy: Path):
    project = reproduced_copy
    set_params(project, train={**SLOW["train"], "nproc": 2})
    run = subprocess.Popen(["dvc", "repro", "-s", "train"], cwd=project, env=tool_env(),
                           start_new_session=True, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)  # fmt: skip
    _wait_for(lambda: (project / "checkpoints/train.pt").exists())
    ranks = [pid for pid in _train_processes(project) if os.getsid(pid) != run.pid]
    assert len(ranks) == 2, ranks
    os.killpg(run.pid, signal.SIGKILL)  # what a job runner does: the group, not the ranks
    run.wait()
    _wait_for(lambda: not _train_processes(project), seconds=10)
    _wait_for(lambda: _lock_is_free(project / "checkpoints/train.pt.lock"), seconds=15)


def _lock_is_free(lock: Path) -> bool:
    try:
        with checkpoint.exclusive(lock):
            return True
    except TrainingError:
        return False


# --- ranks decide together ----------------------------------------------------------------------


def _probe(tmp_path: Path, mode: str) -> subprocess.Popen:
    env = {**tool_env(), "PYTHONPATH": str(ROOT / "tests")}
    return subprocess.Popen([sys.executable, str(ROOT / "tests/rank_probe.py"), str(tmp_path),
                             mode], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)  # fmt: skip


def test_non_finite_loss_on_one_rank_stops_both_with_one_line(tmp_path: Path):
    run = _probe(tmp_path, "nan")
    _, stderr = run.communicate(timeout=300)
    assert run.returncode == 1, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, stderr
    assert "at epoch 1, batch 2," in errors[0] and "not finite (on another rank)" in errors[0]


def test_a_rank_killed_by_a_signal_is_named_in_one_line(tmp_path: Path):
    run = _probe(tmp_path, "kill")
    _, stderr = run.communicate(timeout=300)
    assert run.returncode == 128 + signal.SIGKILL, stderr
    assert "Traceback" not in stderr
    assert [line for line in stderr.splitlines() if line.startswith("error:")] == [
        "error: rank 1 was killed by signal 9 (SIGKILL), the kernel's answer to running out "
        "of memory among others; the epochs before it are checkpointed, rerun to resume"
    ]


def test_a_bug_in_a_rank_keeps_its_traceback(tmp_path: Path):
    run = _probe(tmp_path, "bug")
    _, stderr = run.communicate(timeout=300)
    assert run.returncode == 1, stderr
    assert "[rank1]: Traceback" in stderr and "ZeroDivisionError: a bug in rank 1" in stderr


def test_sigterm_to_one_rank_stops_both_with_exit_code_130(tmp_path: Path):
    run = _probe(tmp_path, "sigterm")
    _wait_for(lambda: (tmp_path / "rank1.pid").exists() and (tmp_path / "rank0.pid").exists())
    time.sleep(1)
    os.kill(int((tmp_path / "rank1.pid").read_text()), signal.SIGTERM)
    _, stderr = run.communicate(timeout=300)
    assert run.returncode == 130, stderr
    lines = [line for line in stderr.splitlines() if line.startswith(("error:", "interrupted:"))]
    assert len(lines) == 1 and lines[0].startswith("interrupted: stopped by signal 15"), stderr


def test_a_failing_train_stage_is_one_line_before_any_rank_starts(reproduced_copy: Path):
    project = reproduced_copy
    set_params(project, train={"epochs": 0, "nproc": 2})
    result = sh("dvc", "repro", "train", cwd=project, check=False)
    assert result.returncode != 0
    assert (
        "error: params.yaml: train.epochs: Input should be greater than 0 (got 0)" in result.stderr
    )
    assert "Traceback" not in result.stderr and "ChildFailedError" not in result.stderr
    assert "Launching" not in result.stdout
