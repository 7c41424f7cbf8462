"""Where a CPU training step spends its time, per Chainer function, with Chainer's own CPU
kernels ("stock") and with ``branchynet.cpu_kernels`` ("fast"); ``--before conv`` puts the
fast kernels beside their ``"conv"`` group alone (convolution and max pooling by im2col, the
default before the ``"fused"`` group) instead of stock Chainer.

    OPENBLAS_NUM_THREADS=1 python scripts/training_step_parts.py alexnet_cifar10 joint \\
        --batch-size 128 --repeats 5

One step is ``JointLoss`` forward, backward and an Adam update on a fixed random batch
(the weights and pixels do not change the work). The two variants alternate step by step
and each function's time is its minimum over the repeats (``chainer.function_hooks.
TimerHook``; a function's backward runs nested functions, e.g. a convolution's backward
the weight gradient and the deconvolution, and counts them again). ``--clock cpu`` times
with the process CPU clock instead of the wall clock: other processes on a loaded machine
then stretch the figures less.
"""
import argparse
import collections
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import branchynet  # noqa: E402,F401  (compatibility fixes before chainer)
import numpy as np  # noqa: E402
from chainer import optimizers  # noqa: E402
from chainer.function_hooks import TimerHook, timer  # noqa: E402

from branchynet import cpu_kernels  # noqa: E402
from branchynet.net import BranchyNet, JointLoss  # noqa: E402
from networks import get_network  # noqa: E402

INPUT = {"mnist": (1, 28, 28), "cifar10": (3, 32, 32)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("network")
    p.add_argument("mode", choices=["baseline", "joint"])
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--before", choices=["stock", "conv"], default="stock",
                   help="the variant beside all the fast kernels: Chainer's own (stock) or "
                   "the cpu_kernels 'conv' group alone (default: %(default)s)")
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                   help="wall clock or process CPU time (default: %(default)s)")
    args = p.parse_args(argv)
    clock = {"wall": time.perf_counter, "cpu": time.process_time}[args.clock]
    timer._get_time = clock  # what TimerHook reads
    before = {"stock": False, "conv": {"conv": True, "fused": False}}[args.before]
    settings = {False: before, True: True}
    spec = get_network(args.network)
    rng = np.random.RandomState(0)
    x = rng.standard_normal((args.batch_size,) + INPUT[spec.dataset]).astype(np.float32)
    t = rng.randint(0, 10, args.batch_size).astype(np.int32)
    steps = {}
    for fast in (False, True):
        np.random.seed(0)
        model = JointLoss(BranchyNet(spec.build(), main_only=args.mode == "baseline"))
        optimizer = optimizers.Adam()
        optimizer.setup(model)
        with cpu_kernels.enabled(settings[fast]):
            optimizer.update(model, x, t)  # untimed: allocations, first-call costs
        steps[fast] = model, optimizer
    best = {fast: collections.defaultdict(lambda: np.inf) for fast in steps}
    for _ in range(args.repeats):
        for fast, (model, optimizer) in steps.items():
            hook = TimerHook()
            with cpu_kernels.enabled(settings[fast]), hook:
                start = clock()
                optimizer.update(model, x, t)
                total = clock() - start
            per = collections.Counter()
            for name, seconds in hook.call_history:
                per[name] += seconds
            per["(whole step)"] = total
            for name, seconds in per.items():
                best[fast][name] = min(best[fast][name], seconds)
    print(f"{args.network} {args.mode}, batch {args.batch_size}: ms per step ({args.clock} "
          f"clock), minimum of {args.repeats} alternating steps (load "
          f"{os.getloadavg()[0]:.2f})")
    print(f"  {'function':34s} {args.before:>9s} {'fast':>9s}  gain")
    for name in sorted(best[False], key=lambda k: -best[False][k]):
        a, b = 1e3 * best[False][name], 1e3 * best[True].get(name, np.nan)
        print(f"  {name:34s} {a:9.1f} {b:9.1f}  {a / b:5.2f}x")


if __name__ == "__main__":
    main()
