"""Run by tests/test_distributed.py under ``mpiexec -n N`` (not a test module itself).

    mpiexec -n 2 python tests/mpi_worker.py OUT SAMPLES BATCH EPOCHS [BUDGET]

Trains B-LeNet data-parallel (communicator ``naive``) on the first SAMPLES mnist-5k
training images, BATCH per rank, through ``branchynet.training.train``, and saves every
rank's final parameters to OUT/rank<r>.npz (a test file; the run's own snapshots and log
go to OUT/train/, written by rank 0 only).

With BUDGET, a time budget of BUDGET ticks of a fake clock: rank 0's clock ticks once per
read (the budget ends before iteration BUDGET - 1), every other rank's jumps past any
budget at its second read, so a rank deciding alone would stop at once. A rank stopped by
the budget writes OUT/rank<r>.json (epoch_detail, snapshot) and exits with status 3.
"""
import itertools
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout
import branchynet  # noqa: F401  (compatibility fixes before chainer)
import chainer
import numpy as np
from chainer import serializers

from branchynet import distributed
from branchynet.datasets import load_dataset
from branchynet.net import BranchyNet
from branchynet.training import TimeBudgetExhausted, train
from networks import get_network

SEED = 0


def main(out, samples, batch, epochs, budget=None):
    comm = distributed.create("naive")
    x = y = None
    if comm.rank == 0:  # only rank 0 reads the data; scatter_dataset sends it on
        data = load_dataset("mnist-5k", seed=SEED)
        x, y = data.train_x[:samples], data.train_y[:samples]
    np.random.seed(SEED)
    net = BranchyNet(get_network("lenet_mnist").build())
    ticks = itertools.count(0, 1 if comm.rank == 0 else 10 ** 9)
    try:
        train(net, x, y, epochs, batch, os.path.join(out, "train"),
              chainer.get_device("@numpy"), seed=SEED, progress=False, comm=comm,
              time_budget_s=budget, clock=lambda: next(ticks))
    except TimeBudgetExhausted as stop:
        serializers.save_npz(os.path.join(out, f"rank{comm.rank}.npz"), net)
        with open(os.path.join(out, f"rank{comm.rank}.json"), "w") as f:
            json.dump({"epoch_detail": stop.epoch_detail, "snapshot": stop.snapshot}, f)
        sys.exit(3)
    serializers.save_npz(os.path.join(out, f"rank{comm.rank}.npz"), net)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]),
         float(sys.argv[5]) if len(sys.argv) > 5 else None)
