"""Training throughput (images/s): the baseline (main branch only) and joint B-net training.

    python -m benchmarks.training_throughput --network lenet_mnist
    python -m benchmarks.training_throughput --network resnet110_cifar10 --batch-size 64

One training iteration is what ``branchynet.training.train`` runs per minibatch: the
``JointLoss`` forward (every exit for the B-net, the final exit for the baseline), backward,
and an Adam update (``optimizer.update``, as Chainer's StandardUpdater calls it), on real
training images already in memory. --warmup iterations are run untimed, then --iterations
timed (the device is synchronised before each clock read). The paper's batch sizes are
512 (LeNet, AlexNet) and 64 (ResNet); the quick defaults use them except where noted.

The weights do not matter for throughput: both networks start from their initialisation.
"""
import os
import sys
import time

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import branchynet  # noqa: F401,E402  (compatibility fixes before chainer)
import numpy as np  # noqa: E402
from chainer import optimizers  # noqa: E402

from benchmarks import _common as C  # noqa: E402
from branchynet.net import JointLoss  # noqa: E402
from branchynet.timing import synchronize  # noqa: E402

DEFAULTS = {
    "lenet_mnist": {"batch_size": 512, "iterations": 10, "warmup": 2},
    "alexnet_cifar10": {"batch_size": 512, "iterations": 3, "warmup": 1},
    "resnet110_cifar10": {"batch_size": 64, "iterations": 3, "warmup": 1},
}


def parse_args(argv=None):
    p = C.parser(__doc__, DEFAULTS)
    p.add_argument("--batch-size", type=int, help="training batch size (default: the paper's)")
    p.add_argument("--iterations", type=int, help="timed iterations")
    p.add_argument("--warmup", type=int, help="untimed iterations first")
    return C.finish_args(p.parse_args(argv), "training_throughput")


def images_per_second(net, x, y, batch_size, iterations, warmup, device, seed=0):
    """Seconds per iteration and images/s of joint training (``JointLoss`` + Adam)."""
    model = JointLoss(net)
    model.to_device(device)
    optimizer = optimizers.Adam(alpha=0.001)
    optimizer.setup(model)
    rng = np.random.RandomState(seed)
    batches = [rng.choice(len(x), batch_size, replace=False) for _ in range(warmup + iterations)]
    seconds = []
    for i, index in enumerate(batches):
        xb, yb = device.send(x[index]), device.send(y[index])
        synchronize(device)
        start = time.perf_counter()
        optimizer.update(model, xb, yb)
        synchronize(device)
        if i >= warmup:
            seconds.append(time.perf_counter() - start)
    per_iteration = float(np.mean(seconds))
    return {"batch_size": batch_size, "iterations": iterations, "warmup": warmup,
            "seconds_per_iteration": per_iteration,
            "seconds_per_iteration_min": float(np.min(seconds)),
            "images_per_s": batch_size / per_iteration}


def main(argv=None):
    args = parse_args(argv)
    device = args.chainer_device
    setup = C.prepare(args, need_weights=False)
    report = C.Report("training_throughput", args, setup)
    data = setup.data
    if args.batch_size > len(data.train_x):
        raise SystemExit(f"error: --batch-size {args.batch_size} exceeds the training set")
    tag = f"[training_throughput] {setup.spec.name} {report.doc['device']}"
    for key, net in (("baseline", setup.baseline), ("joint", setup.branchy)):
        with report.figure(key) as fig:
            fig.update(images_per_second(net, data.train_x, data.train_y, args.batch_size,
                                         args.iterations, args.warmup, device, args.seed))
            fig["exits_trained"] = net.n_exits
        C.log(f"{tag}: {key} training {fig['images_per_s']:.1f} images/s (batch "
              f"{args.batch_size}, {fig['seconds_per_iteration']:.3f} s per iteration, "
              f"{net.n_exits} exit(s)){C.load_note(fig)}")
    figures = report.doc["figures"]
    with report.figure("ratio") as fig:
        fig["joint_over_baseline_time"] = (figures["joint"]["seconds_per_iteration"]
                                           / figures["baseline"]["seconds_per_iteration"])
    C.log(f"{tag}: a joint iteration takes {fig['joint_over_baseline_time']:.2f}x a baseline "
          f"iteration")
    return report.write()


if __name__ == "__main__":
    main()
    sys.exit(0)
