"""Training with Chainer's Trainer: joint (B-net) or main-branch-only (baseline).

Snapshots are written after every epoch (Chainer writes them to a temporary file and moves
them into place) and loaded back automatically, so an interrupted run resumes at the last
finished epoch. ``save_weights``/``load_weights`` store the trained network as npz.
"""
import os

import chainer
import numpy as np
from chainer import iterators, optimizers, serializers, training
from chainer.datasets import TupleDataset
from chainer.training import extensions

from branchynet.io import atomic_path
from branchynet.net import JointLoss


def train(net, x, y, epochs, batch_size, out, device, seed=0, weights=None, lr=0.001,
          progress=True, log_name="log"):
    """Train ``net`` on ``(x, y)`` with Adam for ``epochs`` epochs; resume from ``out``.

    Args:
        net: a ``BranchyNet`` (a ``main_only`` one trains the baseline).
        x, y: float32 inputs and int32 labels (host arrays).
        epochs, batch_size: as in the paper's scripts (e.g. 50 epochs of batch 512).
        out: folder for snapshots and the log; a finished or interrupted run there is
            picked up where it stopped.
        device: a Chainer device (``chainer.get_device('@numpy')``).
        seed: seeds the order of the minibatches.
        weights: per-exit loss weights (default 1 for every exit).
        lr: Adam step size (``alpha``); Chainer's other Adam defaults, as the authors' code.

    Returns the Chainer log (a list of per-epoch dicts).
    """
    if len(x) < batch_size:
        raise ValueError(f"batch size {batch_size} is larger than the training set ({len(x)})")
    model = JointLoss(net, weights)
    model.to_device(device)
    optimizer = optimizers.Adam(alpha=lr)
    optimizer.setup(model)
    order = chainer.iterators.ShuffleOrderSampler(np.random.RandomState(seed))
    iterator = iterators.SerialIterator(TupleDataset(x, y), batch_size, order_sampler=order)
    updater = training.updaters.StandardUpdater(iterator, optimizer, device=device)
    trainer = training.Trainer(updater, (epochs, "epoch"), out=out)
    trainer.extend(extensions.snapshot(filename="snapshot_epoch_{.updater.epoch}",
                                       n_retains=1, autoload=True), trigger=(1, "epoch"))
    trainer.extend(extensions.LogReport(log_name=log_name))
    keys = ["epoch", "main/loss"] + [f"main/accuracy/{name}" for name in net._exit_names]
    trainer.extend(extensions.PrintReport(keys + ["elapsed_time"]))
    if progress:
        trainer.extend(extensions.ProgressBar(update_interval=max(1, len(x) // batch_size // 20)))
    trainer.run()
    return trainer.get_extension("LogReport").log


def save_weights(path, net):
    """Save ``net``'s parameters (and BatchNorm statistics) as npz, atomically."""
    with atomic_path(path) as tmp:
        serializers.save_npz(tmp, net)


def load_weights(path, net):
    """Load npz weights into ``net``; a file for another network gets a clear error."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no weights file at {path}")
    try:
        serializers.load_npz(path, net)
    except (KeyError, ValueError) as err:
        with np.load(path) as data:
            stored = sorted(data.files)
        expected = sorted(name.lstrip("/") for name, _ in net.namedparams())
        missing = [k for k in expected if k not in stored]
        raise ValueError(
            f"{path} does not match this network: {err}. Parameters missing from the file: "
            f"{missing[:5]}{' ...' if len(missing) > 5 else ''}. Was it saved from another "
            f"network, or from the baseline instead of the B-net (or vice versa)?") from None
    return net
