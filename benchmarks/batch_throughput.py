"""Batched early-exit inference throughput (images/s) against batch size, B-net and baseline.

    python -m benchmarks.batch_throughput --network lenet_mnist
    python -m benchmarks.batch_throughput --network lenet_mnist --batch-sizes 1 2 4 8 16 32 64 128 256 512 1024

For each batch size, test images are run through ``BranchyNet.predict`` batch by batch:
the batch is sent to the device, the baseline classifies it (final exit) or the B-net
routes it with its knee thresholds (samples that exit leave, the rest run on), and the
labels come back to the host; the device is synchronised before each clock read.

Each batch is one call of a timing variant, and the baseline and the B-net alternate
through ``branchynet.timing.interleave`` over the batches (at least --min-images images,
whole batches, test images cycled) for --timing-rounds rounds. Images/s is the batch size
over a round's mean seconds per batch: the median over rounds with its quartiles; the
speedup is the per-round ratio of the baseline's to the B-net's time: median and [min,
max]. The knee is chosen as the runner does (``Experiment.select`` on an exit-path profile
at batch size 1, or the results folder's timing record), or given by --thresholds.
"""
import os
import sys
import time

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import branchynet  # noqa: F401,E402  (compatibility fixes before chainer)
import numpy as np  # noqa: E402
from chainer import backend  # noqa: E402

from benchmarks import _common as C  # noqa: E402
from branchynet.routing import check_thresholds  # noqa: E402
from branchynet.timing import interleave, spread, synchronize  # noqa: E402

POWERS = [2 ** k for k in range(11)]  # 1 .. 1024
DEFAULTS = {
    "lenet_mnist": {"batch_sizes": POWERS, "min_images": 1024, "eval_samples": 2000,
                    "path_samples": 200, "warmup": 2},
    "alexnet_cifar10": {"batch_sizes": [1, 4, 16, 64, 256, 1024], "min_images": 256,
                        "eval_samples": 1000, "path_samples": 100, "warmup": 1},
    "resnet110_cifar10": {"batch_sizes": [1, 4, 16, 64], "min_images": 64,
                          "eval_samples": 200, "path_samples": 5, "warmup": 1, "block": 5},
}


def parse_args(argv=None):
    p = C.parser(__doc__, DEFAULTS)
    p.add_argument("--batch-sizes", type=int, nargs="+", help="batch sizes (default: per network)")
    p.add_argument("--min-images", type=int,
                   help="images timed per batch size, at least one batch (default: per network)")
    p.add_argument("--thresholds", type=float, nargs="+",
                   help="B-net thresholds (default: the knee, found as the runner does)")
    p.add_argument("--eval-samples", type=int, help="test images whose exit outputs select the knee")
    p.add_argument("--path-samples", type=int,
                   help="images timed per exit path at batch size 1 to find the knee")
    return C.finish_args(p.parse_args(argv), "batch_throughput")


class BatchPredict:
    """Batch ``i`` of ``batch_size`` images (test images cycled) through ``net.predict``;
    returns its seconds, input to the device ... labels on the host. The exits of the
    last round are kept in ``exits``."""

    def __init__(self, net, x, thresholds, batch_size, batches):
        self.net, self.x, self.thresholds, self.batch_size = net, x, thresholds, batch_size
        self.device, self.cpu = net.device, backend.CpuDevice()
        self.index = np.arange(batches * batch_size) % len(x)
        self.exits = np.full(len(self.index), -1, np.int32)

    def __call__(self, i):
        rows = slice(i * self.batch_size, (i + 1) * self.batch_size)
        synchronize(self.device)
        start = time.perf_counter()
        labels, exits = self.net.predict(self.device.send(self.x[self.index[rows]]),
                                         self.thresholds)
        labels, exits = self.cpu.send(labels), self.cpu.send(exits)
        synchronize(self.device)
        seconds = time.perf_counter() - start
        self.exits[rows] = exits
        return seconds


def throughput(setup, thresholds, batch_size, args):
    """Images/s of the baseline and the B-net at ``batch_size``, interleaved batch by batch."""
    batches = max(1, -(-args.min_images // batch_size))
    x = setup.data.test_x
    variants = {"baseline": BatchPredict(setup.baseline, x, [], batch_size, batches),
                "bnet": BatchPredict(setup.branchy, x, thresholds, batch_size, batches)}
    t = interleave(variants, batches, args.timing_rounds, args.block, args.warmup)
    rates = {name: batch_size * 1e3 / t.rounds_ms[name] for name in variants}
    exits = variants["bnet"].exits
    counts = np.bincount(exits, minlength=setup.branchy.n_exits)
    return {"batch_size": batch_size, "batches": batches, "images": len(exits),
            "baseline_images_per_s": spread(rates["baseline"]),
            "bnet_images_per_s": spread(rates["bnet"]),
            "speedup": t.ratio("baseline", "bnet"), "exit_counts": counts.tolist(),
            "exit_fractions": (counts / len(exits)).tolist(), "timing": t.to_json()}


def main(argv=None):
    args = parse_args(argv)
    device = args.chainer_device
    setup = C.prepare(args, test_samples=max(args.eval_samples, args.path_samples))
    report = C.Report("batch_throughput", args, setup)
    net, spec = setup.branchy, setup.spec
    net.to_device(device)
    setup.baseline.to_device(device)
    tag = f"[batch_throughput] {spec.name} {report.doc['device']}"

    with report.figure("thresholds") as fig:
        if args.thresholds:
            thresholds = [float(t) for t in check_thresholds(args.thresholds, net.n_exits)]
            fig.update({"thresholds": thresholds, "source": "--thresholds"})
        else:
            point = C.knee_point(setup, device, setup.data.test_x[:args.path_samples], args)
            thresholds = point["thresholds"]
            fig.update(point)
            fig["source"] = "knee"
    C.log(f"{tag}: B-net thresholds T={', '.join(f'{t:g}' for t in thresholds)} "
          f"({fig['source']})")

    for bs in args.batch_sizes:
        with report.figure(f"batch_{bs}") as fig:
            fig.update(throughput(setup, thresholds, bs, args))
        base, bnet = fig["baseline_images_per_s"], fig["bnet_images_per_s"]
        C.log(f"{tag}: batch {bs:4d}: baseline {base['median']:9.1f} images/s "
              f"[{base['q1']:.1f}, {base['q3']:.1f}], B-net {bnet['median']:9.1f} images/s "
              f"[{bnet['q1']:.1f}, {bnet['q3']:.1f}] ({C.fmt_ratio(fig['speedup'])}; exits "
              f"{'/'.join(f'{100 * f:.0f}' for f in fig['exit_fractions'])}%; median of "
              f"{args.timing_rounds} rounds){C.load_note(fig)}")
    return report.write()


if __name__ == "__main__":
    main()
    sys.exit(0)
