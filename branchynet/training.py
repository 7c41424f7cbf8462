"""Training with Chainer's Trainer: joint (B-net) or main-branch-only (baseline).

Snapshots are written after every epoch (Chainer writes them to a temporary file and moves
them into place) and loaded back automatically, so an interrupted run resumes at the last
finished epoch. ``save_weights``/``load_weights`` store the trained network as npz.
"""
import os
import time

import chainer
import numpy as np
from chainer import iterators, optimizers, serializers, training
from chainer.datasets import TupleDataset
from chainer.training import extensions

from branchynet.io import atomic_path
from branchynet.net import JointLoss


def train(net, x, y, epochs, batch_size, out, device, seed=0, weights=None, lr=0.001,
          progress=True, log_name="log", comm=None):
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
        comm: a ChainerMN communicator for data-parallel training (``branchynet.distributed``):
            rank 0's ``(x, y)`` is scattered (other ranks may pass None), ``batch_size`` is
            per rank, gradients are averaged over ranks, only rank 0 writes to ``out``.

    Returns the Chainer log (a list of per-epoch dicts; empty on ranks other than 0).
    """
    from branchynet import distributed
    root = distributed.is_root(comm)
    if root and len(x) < batch_size:
        raise ValueError(f"batch size {batch_size} is larger than the training set ({len(x)})")
    distributed.on_root(comm, lambda: distributed.check_resume(out, comm),
                        (distributed.DistributedError,))
    dataset = TupleDataset(x, y) if root else None
    if comm is not None:
        dataset = distributed.scatter(dataset, comm, seed)
        if len(dataset) < batch_size:
            raise ValueError(f"batch size {batch_size} per rank is larger than a rank's share "
                             f"of the training set ({len(dataset)} of {len(dataset) * comm.size})")
        net.predict_all_exits(dataset[0][0][None])  # sizes lazy layers before the broadcast
    model = JointLoss(net, weights)
    model.to_device(device)
    optimizer = optimizers.Adam(alpha=lr)
    if comm is not None:
        optimizer = distributed.multi_node_optimizer(optimizer, comm)
    optimizer.setup(model)
    order = chainer.iterators.ShuffleOrderSampler(np.random.RandomState(seed))
    iterator = iterators.SerialIterator(dataset, batch_size, order_sampler=order)
    updater = training.updaters.StandardUpdater(iterator, optimizer, device=device)
    trainer = training.Trainer(updater, (epochs, "epoch"), out=out)
    keys = ["epoch", "main/loss"] + [f"main/accuracy/{name}" for name in net._exit_names]
    if comm is not None:
        for extension in distributed.aggregators(comm, keys[1:] + [
                f"main/loss/{name}" for name in net._exit_names]):
            trainer.extend(extension)
    if root:
        trainer.extend(extensions.snapshot(filename="snapshot_epoch_{.updater.epoch}",
                                           n_retains=1, autoload=comm is None),
                       trigger=(1, "epoch"))
        trainer.extend(extensions.LogReport(log_name=log_name))
        trainer.extend(extensions.PrintReport(keys + ["elapsed_time"]))
        if progress:
            steps = len(dataset) // batch_size
            trainer.extend(extensions.ProgressBar(update_interval=max(1, steps // 20)))
    if comm is not None:
        distributed.load_latest_snapshot(trainer, out, comm)
        if root:
            distributed.write_record(out, comm, batch_size)
        optimizer.update()  # no step: broadcasts rank 0's parameters to every rank
    trainer.run()
    return trainer.get_extension("LogReport").log if root else []


def train_or_load(net, path, x, y, epochs, batch_size, device, log=print, comm=None,
                  **train_options):
    """Load ``net`` from the npz file ``path`` if it exists, else train and save it there.

    Training resumes from the snapshots in the folder ``path`` without ``.npz`` (e.g.
    ``results/baseline/`` for ``results/baseline.npz``); ``train_options`` go to ``train``
    (``seed``, ``weights``, ``lr``, ``progress``). Returns ``net``, on the CPU after training.
    With a communicator ``comm`` every rank trains (``batch_size`` per rank); rank 0 alone
    reads and writes ``path``, and the other ranks follow its decision.
    """
    from branchynet import distributed
    if distributed.agree(comm, os.path.exists(path)):
        log(f"[{_stem(path)}] reusing {path}")
        return load_weights(path, net) if distributed.is_root(comm) else net
    ranks = "" if comm is None else (f" per rank x {comm.size} ranks = global batch "
                                     f"{batch_size * comm.size}")
    log(f"[{_stem(path)}] training {epochs} epoch(s), batch {batch_size}{ranks}, on {device}")
    start = time.perf_counter()
    train(net, x, y, epochs, batch_size, os.path.splitext(path)[0], device, comm=comm,
          **train_options)
    net.to_device("@numpy")
    if distributed.is_root(comm):
        save_weights(path, net)
    log(f"[{_stem(path)}] done in {time.perf_counter() - start:.1f} s")
    return net


def _stem(path):
    return os.path.splitext(os.path.basename(path))[0]


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


def recalibrate_batchnorm(net, x, batch_size=256):
    """Set BatchNorm running statistics to those of one training batch ("precise BN").

    After a few training iterations the running averages (decay 0.9) are still far from
    the batch statistics, and in inference mode the activations of a deep ResNet then grow
    without bound, which distorts timing (huge values, slow float paths). Only the
    running statistics change; returns whether the network has BatchNorm at all.
    """
    layers = [link for link in net.links() if isinstance(link, chainer.links.BatchNormalization)]
    if not layers:
        return False
    decays = [link.decay for link in layers]
    for link in layers:
        link.decay = 0.0
    try:
        with chainer.using_config("train", True), chainer.no_backprop_mode():
            net(net.xp.asarray(x[:batch_size]))
    finally:
        for link, decay in zip(layers, decays):
            link.decay = decay
    return True
