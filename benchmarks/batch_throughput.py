"""Batched early-exit inference throughput (images/s) against batch size, B-net and baseline.

    python -m benchmarks.batch_throughput --network lenet_mnist
    python -m benchmarks.batch_throughput --network lenet_mnist --batch-sizes 1 2 4 8 16 32 64 128 256 512 1024

For each batch size, test images are run through ``BranchyNet.predict`` batch by batch:
the batch is sent to the device, the baseline classifies it (final exit) or the B-net
routes it with its knee thresholds (samples that exit leave, the rest run on), and the
labels come back to the host; the device is synchronised before each clock read.
Images/s = images / total time, over at least --min-images images (whole batches) after
one untimed batch; --repeats interleaved repetitions, median reported. The knee is chosen as the runner does (exact sweep, runtime predicted
from batch-size-1 exit-path latency, inc-points frontier, Kneedle), or given by
--thresholds.
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
from branchynet.timing import synchronize  # noqa: E402

POWERS = [2 ** k for k in range(11)]  # 1 .. 1024
DEFAULTS = {
    "lenet_mnist": {"batch_sizes": POWERS, "min_images": 1024, "eval_samples": 2000,
                    "path_samples": 200, "warmup": 10, "repeats": 3},
    "alexnet_cifar10": {"batch_sizes": [1, 4, 16, 64, 256, 1024], "min_images": 256,
                        "eval_samples": 1000, "path_samples": 100, "warmup": 5,
                        "repeats": 1},
    "resnet110_cifar10": {"batch_sizes": [1, 4, 16, 64], "min_images": 64,
                          "eval_samples": 200, "path_samples": 5, "warmup": 2,
                          "repeats": 1},
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
    p.add_argument("--warmup", type=int, help="untimed samples of the exit-path timing")
    p.add_argument("--repeats", type=int, help="interleaved repetitions per batch size; the "
                   "median is reported")
    return C.finish_args(p.parse_args(argv), "batch_throughput")


def throughput(net, x, thresholds, batch_size, min_images, device):
    """Images/s of ``net.predict`` over whole batches of ``x`` (cycled), and the exits."""
    cpu = backend.CpuDevice()
    batches = max(1, -(-min_images // batch_size))
    index = np.arange(batches * batch_size) % len(x)
    net.predict(device.send(x[index[:batch_size]]), thresholds)  # untimed first batch
    synchronize(device)
    exits = []
    start = time.perf_counter()
    for b in range(batches):
        labels, exit_ = net.predict(device.send(x[index[b * batch_size:(b + 1) * batch_size]]),
                                    thresholds)
        labels, exit_ = cpu.send(labels), cpu.send(exit_)
        exits.append(exit_)
    synchronize(device)
    seconds = time.perf_counter() - start
    return batches * batch_size / seconds, np.concatenate(exits)


def main(argv=None):
    args = parse_args(argv)
    device = args.chainer_device
    setup = C.prepare(args)
    report = C.Report("batch_throughput", args, setup)
    net, base, spec = setup.branchy, setup.baseline, setup.spec
    net.to_device(device)
    base.to_device(device)
    x = setup.data.test_x
    tag = f"[batch_throughput] {spec.name} {report.doc['device']}"

    with report.figure("thresholds") as fig:
        if args.thresholds:
            thresholds = list(check_thresholds(args.thresholds, net.n_exits))
            fig.update({"thresholds": thresholds, "source": "--thresholds"})
        else:
            point = C.knee_for(setup, device, args.eval_samples, x[:args.path_samples],
                               args.warmup)
            thresholds = point["thresholds"]
            fig.update({k: point[k] for k in ("thresholds", "accuracy", "exit_fractions",
                                              "path_ms", "path_ms_source", "eval_samples")})
            fig["source"] = "knee"
    C.log(f"{tag}: B-net thresholds T={', '.join(f'{t:g}' for t in thresholds)} "
          f"({fig['source']})")

    for bs in args.batch_sizes:
        with report.figure(f"batch_{bs}") as fig:
            base_rates, net_rates = [], []
            for _ in range(args.repeats):  # interleaved, so load changes hit both alike
                base_rates.append(throughput(base, x, [], bs, args.min_images, device)[0])
                rate, exits = throughput(net, x, thresholds, bs, args.min_images, device)
                net_rates.append(rate)
            base_rate, net_rate = float(np.median(base_rates)), float(np.median(net_rates))
            fractions = np.bincount(exits, minlength=net.n_exits) / len(exits)
            fig.update({"batch_size": bs, "images": len(exits),
                        "repeats": args.repeats, "baseline_images_per_s": base_rate,
                        "bnet_images_per_s": net_rate, "baseline_per_repeat": base_rates,
                        "bnet_per_repeat": net_rates,
                        "speedup": net_rate / base_rate, "exit_fractions": fractions.tolist()})
        C.log(f"{tag}: batch {bs:4d}: baseline {base_rate:9.1f} images/s, B-net "
              f"{net_rate:9.1f} images/s ({fig['speedup']:.2f}x; exits "
              f"{'/'.join(f'{100 * f:.0f}' for f in fractions)}%){C.load_note(fig)}")
    return report.write()


if __name__ == "__main__":
    main()
    sys.exit(0)
