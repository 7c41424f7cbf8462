"""Pilot for a network's CPU recipe (--recipe fast): which peak learning rate?

    OPENBLAS_NUM_THREADS=1 BRANCHYNET_DATA=../shared/data \\
        .venv/bin/python scripts/recipe_pilot.py                  # B-AlexNet: 0.01, 0.02, 0.05
    .venv/bin/python scripts/recipe_pilot.py --rates 0.02 0.05 --epochs 1 --train 5000
    .venv/bin/python scripts/recipe_pilot.py --network resnet110_cifar10 --rates 0.05 0.1 0.2 \\
        --out resnet-pilot

Trains the network's baseline (main branch only; B-AlexNet by default) with the fast recipe (SGD, momentum 0.9,
weight decay 5e-4, crop + flip, batch 128, one warm-up epoch from a tenth of the rate) at
each rate for --epochs epochs on the first --train CIFAR-10 training images, and evaluates
it after every epoch on the LAST --held-out training images (never trained on here, and
not the test set: choosing the rate looks at no test data). After the warm-up the rate is
held constant (--schedule constant, the default) so that the pilot shows what the long
run's peak rate does: whether it is stable and how fast it learns; the long run then
decays it with the cosine schedule. Prints one line per rate and epoch and the rate to
use by the rule below, and writes everything to OUT/pilot.json (resumable: a rate's
training continues from its snapshots in OUT/lr_<rate>/).

Rule: the rate whose held-out accuracy after the last epoch is the highest; a rate whose
loss is not finite or whose held-out accuracy is at most 15% (chance: 10%) has diverged
or not started and is not chosen. Then set ``fast["lr"]`` in networks/alexnet_cifar10.py
(or pass --lr to the long run) for the network and say so in docs/replication.md.

Time: 2 epochs of 10,000 images at 3 rates is 60,000 training images plus 6 x 2,000
held-out evaluations; measure one rate's first epoch (the table's seconds) to extrapolate.
"""
import argparse
import dataclasses
import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import branchynet  # noqa: E402,F401  (compatibility fixes before chainer)
import chainer  # noqa: E402
import numpy as np  # noqa: E402

from branchynet.datasets import load_dataset  # noqa: E402
from branchynet.io import write_json  # noqa: E402
from branchynet.net import BranchyNet  # noqa: E402
from branchynet.training import FAST_RECIPE, SCHEDULES, train  # noqa: E402
from networks import get_network  # noqa: E402

DIVERGED_BELOW = 0.15  # held-out accuracy at or below this: diverged or not started


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="scripts/recipe_pilot.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--network", default="alexnet_cifar10",
                   help="a CIFAR-10 network of the registry (default: %(default)s)")
    p.add_argument("--rates", type=float, nargs="+", default=[0.01, 0.02, 0.05],
                   help="peak learning rates to compare (default: %(default)s)")
    p.add_argument("--epochs", type=int, default=2, help="epochs per rate (default: 2)")
    p.add_argument("--train", type=int, default=10000,
                   help="the first N training images (default: %(default)s)")
    p.add_argument("--held-out", type=int, default=2000,
                   help="the last N training images, for evaluation (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=128, help="(default: %(default)s)")
    p.add_argument("--schedule", choices=SCHEDULES, default="constant",
                   help="the rate after the warm-up (default: %(default)s; see above)")
    p.add_argument("--data-dir", help="CIFAR-10 folder (default: $BRANCHYNET_DATA, then the cache)")
    p.add_argument("--out", default="recipe-pilot", help="folder (default: %(default)s)")
    args = p.parse_args(argv)
    try:
        spec = get_network(args.network)
    except ValueError as err:
        p.error(str(err))
    if spec.dataset != "cifar10":
        p.error(f"--network {args.network}: the pilot holds out CIFAR-10 training images; "
                f"{args.network} trains on {spec.dataset}")
    if args.epochs < 1 or args.train < args.batch_size or args.held_out < 1:
        p.error("--epochs must be >= 1, --train at least one batch, --held-out >= 1")
    if args.train + args.held_out > 50000:
        p.error(f"--train {args.train} + --held-out {args.held_out} is more than the 50,000 "
                f"CIFAR-10 training images: the held-out images must not be trained on")
    if any(not (math.isfinite(r) and r > 0) for r in args.rates):
        p.error("--rates must be positive numbers")
    return args


def pilot(args, log=print):
    """Train at every rate; returns the rows (one per rate and epoch) and the chosen rate."""
    spec = get_network(args.network)
    data = load_dataset("cifar10", args.data_dir, **spec.dataset_options)
    x, y = data.train_x[:args.train], data.train_y[:args.train]
    held_x, held_y = data.train_x[-args.held_out:], data.train_y[-args.held_out:]
    rows = []
    for rate in args.rates:
        recipe = dataclasses.replace(FAST_RECIPE, lr=rate, schedule=args.schedule)
        np.random.seed(0)
        net = BranchyNet(spec.build(), main_only=True)
        entries = train(net, x, y, args.epochs, args.batch_size,
                        os.path.join(args.out, f"lr_{rate:g}"), chainer.get_device("@numpy"),
                        seed=0, progress=False, recipe=recipe, test=(held_x, held_y))
        seconds = np.diff([0.0] + [e["elapsed_time"] - e.get("test/seconds", 0.0) for e in entries])
        for entry, epoch_seconds in zip(entries, seconds):
            name = next(k for k in entry if k.startswith("test/main/accuracy/"))
            rows.append({"lr": rate, "epoch": entry["epoch"], "train_loss": entry["main/loss"],
                         "train_accuracy": entry[name.replace("test/", "")],
                         "held_out_accuracy": entry[name],
                         "training_seconds": float(epoch_seconds)})
    return rows, choose(rows, args.epochs)


def choose(rows, epochs):
    """The rule: the rate with the best held-out accuracy after epoch ``epochs`` among
    those whose loss is finite and whose accuracy is above ``DIVERGED_BELOW``; else None."""
    usable = [r for r in rows if r["epoch"] == epochs and math.isfinite(r["train_loss"])
              and r["held_out_accuracy"] > DIVERGED_BELOW]
    return max(usable, key=lambda r: r["held_out_accuracy"])["lr"] if usable else None


def main(argv=None):
    args = parse_args(argv)
    start, load = time.time(), os.getloadavg()
    rows, chosen = pilot(args)
    print(f"{get_network(args.network).title} baseline, fast recipe (schedule {args.schedule} after 1 warm-up "
          f"epoch), batch {args.batch_size}, {args.train} training images, held-out = the "
          f"last {args.held_out} training images; load average {load[0]:.1f} at the start")
    print(f"{'lr':>8} {'epoch':>6} {'train loss':>11} {'train acc':>10} {'held-out acc':>13} "
          f"{'s/epoch':>8}")
    for r in rows:
        print(f"{r['lr']:>8g} {r['epoch']:>6} {r['train_loss']:>11.4f} "
              f"{100 * r['train_accuracy']:>9.2f}% {100 * r['held_out_accuracy']:>12.2f}% "
              f"{r['training_seconds']:>8.0f}")
    print(f"chosen rate: {chosen}" if chosen is not None else
          "no rate trained stably: try lower rates")
    write_json(os.path.join(args.out, "pilot.json"), {
        "settings": vars(args), "rows": rows, "chosen_lr": chosen,
        "rule": f"highest held-out accuracy after epoch {args.epochs}; finite loss and "
                f"held-out accuracy above {DIVERGED_BELOW:.0%}",
        "load_average_start": load, "load_average_end": os.getloadavg(),
        "wall_seconds": time.time() - start})
    return chosen


if __name__ == "__main__":
    main()
