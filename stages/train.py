"""Stage `train`: OneCycleLR training from the LR range test's suggestion (or train.max_lr).

Run as `python stages/train.py`: it checks the params, takes the workspace's
training lock, and trains, in this process or (train.nproc > 1, or nodes.count > 1)
in ranks it launches that run this same file. With nodes.count > 1, `dvc repro` runs
it on node 0 and every other node runs `python stages/train.py --node-rank N` in a
clone with the same commit and data.
"""

import argparse
import json
from functools import partial
from pathlib import Path

import pandas as pd

from beluga import checkpoint, data, distributed, figures, progress
from beluga.cli import stage
from beluga.errors import ParamsError, TrainingError
from beluga.loader import DeviceLoader, steps_per_epoch
from beluga.model import build_model, save_model
from beluga.params import Params, check_batch_size, check_warm_up, load_params
from beluga.runtime import Runtime, resolve, seed_everything
from beluga.train import fit

FINGERPRINTED = ("seed", "model", "optimizer", "train", "augment")


def _node_rank(nodes: int) -> int:
    parser = argparse.ArgumentParser(description="The train stage; nodes 1 and up join node 0's.")
    parser.add_argument(
        "--node-rank", type=int, default=0, help="this machine's place, 0 to nodes.count - 1"
    )
    rank = parser.parse_args().node_rank
    if not 0 <= rank < nodes:
        raise ParamsError(f"--node-rank {rank}: must be from 0 to nodes.count - 1 = {nodes - 1}")
    return rank


@stage
def main() -> None:
    params = load_params()
    nproc, nodes = params.train.nproc, params.nodes
    node_rank = 0 if distributed.is_worker() else _node_rank(nodes.count)
    runtime = resolve(params.runtime, nproc, params.train.sync_bn, distributed.local_rank())
    cifar = data.load(params.paths.data)
    n_images = len(cifar.train.labels)
    check_batch_size("train.batch_size", params.train.batch_size, n_images)
    check_warm_up(params.train, steps_per_epoch(n_images, params.train.batch_size,
                                                nproc * nodes.count))  # fmt: skip
    if distributed.is_worker():
        distributed.die_with_launcher()
        _train(params, cifar, runtime)
        return
    lock = Path(f"{params.paths.checkpoint}.lock")
    with checkpoint.exclusive(lock):
        if nproc == 1 and nodes.count == 1:
            _train(params, cifar, runtime)
            return
        where = (
            f" as node {node_rank} of {nodes.count} ({nodes.endpoint})" if nodes.count > 1 else ""
        )
        print(f"Launching {nproc} ranks{where}, {distributed.threads_per_rank(nproc)} CPU "
              "threads each")  # fmt: skip
        code = distributed.launch(nproc, Path(__file__), nodes=nodes.count, node_rank=node_rank,
                                  endpoint=nodes.endpoint, timeout_s=nodes.timeout_s)  # fmt: skip
    if code:
        raise SystemExit(code)


def _train(params: Params, cifar: data.Cifar, runtime: Runtime) -> None:
    """One rank's training (the only one's, without data parallelism); rank 0 writes."""
    paths, train_params = params.paths, params.train
    ranks = distributed.init_from_env(runtime.device.type, params.nodes.timeout_s)
    try:
        # Node 0's pick: another node's clone need not have run the range test.
        max_lr = distributed.from_rank0(
            train_params.max_lr
            or (json.loads(Path(paths.lr_find_metrics).read_text())["suggested_lr"]
                if ranks.is_main else None),
            ranks,
        )  # fmt: skip
        seed_everything(params.seed)
        train_loader = DeviceLoader(cifar.train.images, cifar.train.labels, train_params.batch_size,
                                    runtime, augment=params.augment, shuffle=True,
                                    seed=params.seed, ranks=ranks)  # fmt: skip
        test_loader = DeviceLoader(cifar.test.images, cifar.test.labels,
                                   params.evaluate.batch_size, runtime)  # fmt: skip
        model = runtime.prepare(build_model(params.model, len(cifar.classes), cifar.train.images))
        if ranks.is_main:
            print(f"Training on {ranks.world_size} x {runtime.device} in {runtime.precision}, "
                  f"max_lr {max_lr:.4g}")  # fmt: skip
        settings = {
            **params.model_dump(include=set(FINGERPRINTED)),
            "nodes": params.nodes.count,
            "max_lr": max_lr, "precision": runtime.precision, "device": runtime.device.type,
            "eval_batch": params.evaluate.batch_size,
        }  # fmt: skip
        about = {"max_lr": max_lr, "precision": runtime.precision,
                 "device": runtime.device.type, "machine": runtime.machine()}  # fmt: skip
        write_progress = partial(progress.write, paths.train_metrics, paths.history,
                                 planned=train_params.epochs, about=about)  # fmt: skip
        history, kept = fit(
            model, train_loader=train_loader, test_loader=test_loader, runtime=runtime,
            train=train_params, optimizer=params.optimizer, max_lr=max_lr,
            checkpoint_path=Path(paths.checkpoint),
            fingerprint=checkpoint.fingerprint(
                settings, Path(paths.data), checkpoint.code_digest(Path(__file__))
            ),
            settings=settings, ranks=ranks, on_epoch=write_progress,
        )  # fmt: skip
    except RuntimeError as error:
        lost = distributed.lost_rank(error, ranks)
        if lost is None:
            raise
        raise TrainingError(
            f"rank {ranks.rank} lost the other ranks ({lost}): a rank or a node is gone; "
            "the epochs up to node 0's last checkpoint are kept, start every node's command "
            "again to resume"
        ) from None
    finally:
        distributed.close(ranks)
    if ranks.is_main:
        save_model(paths.model, kept, cifar.classes)
        figures.training_curves(pd.DataFrame(history), paths.curves_plot)
        write_progress(history, finished=True)
        Path(paths.checkpoint).unlink()


if __name__ == "__main__":
    main()
