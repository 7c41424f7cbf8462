"""Training throughput (images/s): the baseline (main branch only) and joint B-net training.

    python -m benchmarks.training_throughput --network lenet_mnist
    python -m benchmarks.training_throughput --network resnet110_cifar10 --batch-size 64

One training iteration is what ``branchynet.training.train`` runs per minibatch: the
``JointLoss`` forward (every exit for the B-net, the final exit for the baseline), backward,
and an Adam update (``optimizer.update``, as Chainer's StandardUpdater calls it), on real
training images already in memory. The baseline's and the joint iterations alternate
through ``branchynet.timing.interleave``: --warmup untimed iterations each, then
--iterations timed ones per round for --timing-rounds rounds (the device is synchronised
before each clock read). Images/s is the batch size over a round's mean seconds per
iteration: median over rounds with quartiles; the joint/baseline time is the per-round
ratio. The paper's batch sizes are 512 (LeNet, AlexNet) and 64 (ResNet); the quick
defaults use them except where noted.

The weights do not matter for throughput: both networks start from their initialisation.

--compare-stock times each network a second time in the same interleaved rounds, with
Chainer's own CPU convolution and max pooling (``baseline_stock``, ``joint_stock``) beside
``branchynet.cpu_kernels`` (``baseline``, ``joint``), and records the per-round
speed-up (stock time / fast time) with its [min, max] range. It also times batch-size-1
inference (``BranchyNet.predict``, end to end, every sample sent to the last exit so that
every layer runs; baseline and B-net) on --latency-samples test images with and without
the fast kernels, interleaved:

    python -m benchmarks.training_throughput --network alexnet_cifar10 --batch-size 128 \
        --compare-stock --blas-threads 1

--compare-previous does the same against the kernels that were the default before the
"fused" group (``cpu_kernels`` group "conv" alone: ``baseline_previous``,
``joint_previous``), and records the speed-up (previous time / new time per round). With
either comparison each variant's process CPU time is recorded as well (``cpu_s``: the mean
per round over every call after the warm-up, the untimed block-opening calls included),
a figure that other processes on a loaded machine disturb less than the clock:

    python -m benchmarks.training_throughput --network resnet110_cifar10 --batch-size 64 \
        --iterations 1 --compare-previous --blas-threads 1
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
from branchynet import cpu_kernels  # noqa: E402
from branchynet.net import JointLoss  # noqa: E402
from branchynet.timing import (EndToEnd, forced_exit_thresholds, interleave,  # noqa: E402
                               ratio_summary, spread, synchronize)

DEFAULTS = {
    "lenet_mnist": {"batch_size": 512, "iterations": 10, "warmup": 2, "block": 1},
    "alexnet_cifar10": {"batch_size": 512, "iterations": 3, "warmup": 1, "block": 1},
    "resnet110_cifar10": {"batch_size": 64, "iterations": 3, "warmup": 1, "block": 1},
}


def parse_args(argv=None):
    p = C.parser(__doc__, DEFAULTS)
    p.add_argument("--batch-size", type=int, help="training batch size (default: the paper's)")
    p.add_argument("--iterations", type=int, help="timed iterations per round")
    p.add_argument("--compare-stock", action="store_true",
                   help="also time both networks on Chainer's own CPU convolution and max "
                   "pooling, interleaved, and record the speed-up of branchynet.cpu_kernels")
    p.add_argument("--compare-previous", action="store_true",
                   help="also time both networks on the cpu_kernels 'conv' group alone (the "
                   "default before the 'fused' group), interleaved, and record the speed-up")
    p.add_argument("--latency-samples", type=int, default=50,
                   help="with --compare-stock: test images timed at batch size 1 "
                   "(default: %(default)s)")
    args = p.parse_args(argv)
    if args.compare_stock and args.compare_previous:
        p.error("--compare-stock and --compare-previous are separate runs: give one")
    return C.finish_args(args, "training_throughput")


class TrainingStep:
    """One ``JointLoss`` + Adam iteration on minibatch ``i`` (drawn once, seeded); returns
    its seconds, and keeps the process CPU seconds of every call in ``cpu``.
    ``fast_cpu``: a setting of ``cpu_kernels.enabled`` (None: as the process has it)."""

    def __init__(self, net, data, batch_size, device, seed=0, fast_cpu=None):
        self.fast_cpu = fast_cpu
        self.model = JointLoss(net)
        self.model.to_device(device)
        self.optimizer = optimizers.Adam(alpha=0.001)
        self.optimizer.setup(self.model)
        self.x, self.y, self.batch_size, self.device = data.train_x, data.train_y, batch_size, device
        self.rng = np.random.RandomState(seed)
        self.cpu = []

    def __call__(self, i):
        index = self.rng.choice(len(self.x), self.batch_size, replace=False)
        xb, yb = self.device.send(self.x[index]), self.device.send(self.y[index])
        synchronize(self.device)
        with cpu_kernels.enabled(cpu_kernels.is_enabled() if self.fast_cpu is None
                                 else self.fast_cpu):
            start, cpu = time.perf_counter(), time.process_time()
            self.optimizer.update(self.model, xb, yb)
            synchronize(self.device)
            seconds = time.perf_counter() - start
            self.cpu.append(time.process_time() - cpu)
            return seconds


def compare_latency(args, setup, report, tag):
    """Batch-size-1 inference with and without the fast kernels, every layer run."""
    x = setup.data.test_x[:args.latency_samples]
    variants = {}
    for key, net in (("baseline", setup.baseline), ("bnet", setup.branchy)):
        last = forced_exit_thresholds(net.n_exits - 1, net.n_exits)
        for suffix, flag in (("", True), ("_stock", False)):
            variants[key + suffix] = C.Within(EndToEnd(net, x, last, args.chainer_device),
                                              lambda flag=flag: cpu_kernels.enabled(flag))
    with report.figure("latency_batch1") as fig:
        t = interleave(variants, len(x), args.timing_rounds, 10, args.warmup)
        fig.update({"samples": len(x), "path": "every sample to the last exit",
                    "timing": t.to_json(), **{f"{k}_ms": t.stats(k) for k in variants}})
        for key in ("baseline", "bnet"):
            fig[f"{key}_stock_over_fast_time"] = t.ratio(f"{key}_stock", key)
    for key in ("baseline", "bnet"):
        C.log(f"{tag}: batch-size-1 {key} inference {fig[f'{key}_ms']['median_ms']:.3f} ms "
              f"with branchynet.cpu_kernels, {fig[f'{key}_stock_ms']['median_ms']:.3f} ms "
              f"without: {C.fmt_ratio(fig[f'{key}_stock_over_fast_time'])} "
              f"{C.timing_note(t)}")


def cpu_time(variants, args, report, tag, other):
    """Per-round process CPU seconds per iteration of each variant, and the CPU-time ratio
    of the other kernels over these per round."""
    n = len(variants["baseline"].cpu) - args.warmup
    if any(len(v.cpu) - args.warmup != n for v in variants.values()) or n % args.timing_rounds:
        raise RuntimeError("the variants made different numbers of calls")
    rounds = {k: np.asarray(v.cpu[args.warmup:]).reshape(args.timing_rounds, -1).mean(1)
              for k, v in variants.items()}
    with report.figure("cpu_time") as fig:
        fig["calls_per_round"] = n // args.timing_rounds
        fig["rounds_cpu_s"] = {k: r.tolist() for k, r in rounds.items()}
        for key in variants:
            fig[f"{key}_cpu_s"] = spread(rounds[key])
        for key in ("baseline", "joint"):
            fig[f"{key}_{other}_over_new_cpu_time"] = ratio_summary(
                rounds[f"{key}_{other}"] / rounds[key])
    for key in ("baseline", "joint"):
        C.log(f"{tag}: {key} training CPU time per iteration {rounds[key].mean():.3f} s, "
              f"{other} {rounds[f'{key}_{other}'].mean():.3f} s: "
              f"{C.fmt_ratio(fig[f'{key}_{other}_over_new_cpu_time'])} (per-round ratios)")


def main(argv=None):
    args = parse_args(argv)
    device = args.chainer_device
    setup = C.prepare(args, need_weights=False)
    report = C.Report("training_throughput", args, setup)
    data = setup.data
    if args.batch_size > len(data.train_x):
        raise SystemExit(f"error: --batch-size {args.batch_size} exceeds the training set")
    tag = f"[training_throughput] {setup.spec.name} {report.doc['device']}"
    variants = {"baseline": TrainingStep(setup.baseline, data, args.batch_size, device, args.seed),
                "joint": TrainingStep(setup.branchy, data, args.batch_size, device, args.seed)}
    other = "stock" if args.compare_stock else "previous" if args.compare_previous else None
    for key in (("baseline", "joint") if other else ()):
        net = setup.baseline if key == "baseline" else setup.branchy
        setting = False if other == "stock" else {"conv": True, "fused": False}
        variants[f"{key}_{other}"] = TrainingStep(net.copy(mode="copy"), data, args.batch_size,
                                                  device, args.seed, fast_cpu=setting)
        variants[key].fast_cpu = True
    with report.figure("timing") as fig:
        t = interleave(variants, args.iterations, args.timing_rounds, args.block, args.warmup)
        fig.update({"batch_size": args.batch_size, "iterations": args.iterations,
                    "warmup": args.warmup, "timing": t.to_json(),
                    "fast_cpu_kernels": {k: cpu_kernels.is_enabled() if v.fast_cpu is None
                                         else v.fast_cpu for k, v in variants.items()}})
    nets = {"baseline": setup.baseline, "joint": setup.branchy}
    for key in variants:
        net = nets[key.split("_")[0]]
        with report.figure(key) as fig:
            fig.update({"batch_size": args.batch_size,
                        "seconds_per_iteration": spread(t.rounds_ms[key] / 1e3),
                        "images_per_s": spread(args.batch_size * 1e3 / t.rounds_ms[key]),
                        "exits_trained": net.n_exits})
        rate = fig["images_per_s"]
        C.log(f"{tag}: {key} training {rate['median']:.1f} images/s [{rate['q1']:.1f}, "
              f"{rate['q3']:.1f}] (batch {args.batch_size}, "
              f"{fig['seconds_per_iteration']['median']:.3f} s per iteration, {net.n_exits} "
              f"exit(s)) {C.timing_note(t)}")
    with report.figure("ratio") as fig:
        fig["joint_over_baseline_time"] = t.ratio("joint", "baseline")
    C.log(f"{tag}: a joint iteration takes {C.fmt_ratio(fig['joint_over_baseline_time'])} a "
          f"baseline iteration (per-round ratios)")
    if other:
        cpu_time(variants, args, report, tag, other)
    if args.compare_previous:
        with report.figure("speedup") as fig:
            for key in ("baseline", "joint"):
                fig[f"{key}_previous_over_new_time"] = t.ratio(f"{key}_previous", key)
        for key in ("baseline", "joint"):
            C.log(f"{tag}: {key} training with every cpu_kernels group is "
                  f"{C.fmt_ratio(fig[f'{key}_previous_over_new_time'])} as fast as with the "
                  f"'conv' group alone (per-round ratios)")
    if args.compare_stock:
        with report.figure("speedup") as fig:
            for key in ("baseline", "joint"):
                fig[f"{key}_stock_over_fast_time"] = t.ratio(f"{key}_stock", key)
        for key in ("baseline", "joint"):
            C.log(f"{tag}: {key} training with branchynet.cpu_kernels is "
                  f"{C.fmt_ratio(fig[f'{key}_stock_over_fast_time'])} as fast as with "
                  f"Chainer's CPU kernels (per-round ratios)")
        compare_latency(args, setup, report, tag)
    return report.write()


if __name__ == "__main__":
    main()
    sys.exit(0)
