"""Sweep cost: the cached exact sweep against the authors' brute force, on the same grid.

    python -m benchmarks.sweep_cost --network lenet_mnist         # quick (minutes, CPU)
    python -m benchmarks.sweep_cost --network alexnet_cifar10     # brute force sampled

Cached sweep (this project): every exit runs once over the test images, batched
(``collect_exit_outputs``), and every grid point is evaluated exactly from the cached
entropies and predictions (``evaluate_grid``). Runtime predictions for the grid then also
need each exit path's latency at batch size 1 (``EndToEnd`` with the exit forced, over
--path-samples images); that cost is reported separately.

Brute force (the authors' way): for every grid point, early-exit inference at batch size
1 over the same test images (``EndToEnd``), which gives that point's accuracy, exit counts
and per-sample latency. Its cost is the sum of those latencies over the images and points.
Where the grid is large (AlexNet 121 points, ResNet 289), only --brute-points grid points
drawn at random (seeded) are run, and the full brute-force time is extrapolated as (mean
time per point) x (grid points): the output says so.

Timing: --timing-rounds rounds; each round runs the cached sweep, then the exit-path
timing, then the brute force, the latter two through ``branchynet.timing.interleave`` (the
grid points alternate in blocks of --block images). Every time is the median over rounds
with its quartiles; the speedup is the per-round ratio (brute force / cached sweep of the
same round): median and [min, max] over the rounds.

For every brute-forced point the accuracy, the exit counts, and every sample's exit and
label are compared with the cached sweep; they must be identical.
"""
import os
import sys
import time

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import branchynet  # noqa: F401,E402  (compatibility fixes before chainer)
import numpy as np  # noqa: E402

from benchmarks import _common as C  # noqa: E402
from experiments.experiment import point_name  # noqa: E402
from branchynet.sweep import collect_exit_outputs, evaluate_grid, exit_indices, threshold_grid  # noqa: E402
from branchynet.timing import (EndToEnd, forced_exit_thresholds, interleave, path_name,  # noqa: E402
                               ratio_summary, spread)

DEFAULTS = {
    "lenet_mnist": {"samples": 1000, "brute_points": 0, "batch_size": 100, "warmup": 10,
                    "path_samples": 200},
    "alexnet_cifar10": {"samples": 500, "brute_points": 6, "batch_size": 100, "warmup": 5,
                        "path_samples": 100},
    "resnet110_cifar10": {"samples": 30, "brute_points": 2, "batch_size": 32, "warmup": 2,
                          "path_samples": 5, "block": 5},
}


def parse_args(argv=None):
    p = C.parser(__doc__, DEFAULTS)
    p.add_argument("--samples", type=int,
                   help="test images both methods run over (default: per network)")
    p.add_argument("--brute-points", type=int,
                   help="grid points run by brute force, drawn at random; 0 = all of them "
                   "(default: per network)")
    p.add_argument("--batch-size", type=int, help="batch size of the cached pass")
    p.add_argument("--path-samples", type=int, help="images timed per exit path for the "
                   "cached sweep's runtime predictions")
    return C.finish_args(p.parse_args(argv), "sweep_cost")


class Rounds:
    """The per-round parts of the measurement: cached sweep seconds, exit-path timings and
    brute-force timings, one round after the other."""

    def __init__(self):
        self.collect_s, self.evaluate_s, self.paths, self.brute = [], [], [], []

    def cached(self, net, x, y, grid, args):
        device = args.chainer_device
        start = time.perf_counter()
        outputs = collect_exit_outputs(net, x, y, args.batch_size, device)
        middle = time.perf_counter()
        sweep = evaluate_grid(outputs, grid)
        self.collect_s.append(middle - start)
        self.evaluate_s.append(time.perf_counter() - middle)
        return outputs, sweep

    def timed(self, variants, n_samples, args, first):
        return interleave(variants, n_samples, 1, args.block, args.warmup if first else 0)


def main(argv=None):
    args = parse_args(argv)
    device = args.chainer_device
    setup = C.prepare(args, test_samples=args.samples)
    report = C.Report("sweep_cost", args, setup)
    net, spec = setup.branchy, setup.spec
    net.to_device(device)
    criterion = setup.exp.s.criterion
    x, y = setup.data.test_x[:args.samples], setup.data.test_y[:args.samples]
    xp = x[:args.path_samples]
    grid = threshold_grid(spec.grid, net.n_exits)
    tag = f"[sweep_cost] {spec.name} {report.doc['device']}"
    if args.brute_points and args.brute_points < len(grid):
        points = np.sort(np.random.RandomState(args.seed).choice(len(grid), args.brute_points,
                                                                 replace=False))
    else:
        points = np.arange(len(grid))
    sampled = len(points) < len(grid)
    brute = {point_name(grid[i]): EndToEnd(net, x, grid[i], device, criterion) for i in points}
    paths = {path_name(n): EndToEnd(net, xp, forced_exit_thresholds(n, net.n_exits), device,
                                    criterion) for n in range(net.n_exits)}

    rounds = Rounds()
    collect_exit_outputs(net, x[:args.batch_size], y[:args.batch_size], args.batch_size,
                         device)  # warm-up: the first call allocates
    with report.figure("rounds") as fig:
        for r in range(args.timing_rounds):
            outputs, sweep = rounds.cached(net, x, y, grid, args)
            rounds.paths.append(rounds.timed(paths, len(xp), args, r == 0))
            rounds.brute.append(rounds.timed(brute, len(x), args, r == 0))
        fig["rounds"] = args.timing_rounds
    path_t, brute_t = C.concatenate_rounds(rounds.paths), C.concatenate_rounds(rounds.brute)
    cached_s = np.add(rounds.collect_s, rounds.evaluate_s)
    # Seconds per round: the per-sample latencies summed over the images (and points).
    paths_s = sum(path_t.rounds_ms[name] for name in paths) * len(xp) / 1e3
    brute_run_s = sum(brute_t.rounds_ms[name] for name in brute) * len(x) / 1e3
    brute_s = brute_run_s * len(grid) / len(points)

    with report.figure("cached_sweep") as fig:
        fig.update({"grid_points": len(grid), "samples": len(x), "batch_size": args.batch_size,
                    "collect_exit_outputs_s": spread(rounds.collect_s),
                    "evaluate_grid_s": spread(rounds.evaluate_s),
                    "cached_sweep_s": spread(cached_s),
                    "per_round": {"collect_exit_outputs_s": rounds.collect_s,
                                  "evaluate_grid_s": rounds.evaluate_s}})
    C.log(f"{tag}: cached sweep of {len(grid)} grid points over {len(x)} images: "
          f"{fig['cached_sweep_s']['median']:.2f} s [{fig['cached_sweep_s']['q1']:.2f}, "
          f"{fig['cached_sweep_s']['q3']:.2f}] (one batched pass "
          f"{fig['collect_exit_outputs_s']['median']:.2f} s + grid evaluation "
          f"{1e3 * fig['evaluate_grid_s']['median']:.1f} ms) {C.timing_note(brute_t)}")

    with report.figure("exit_path_timing") as fig:
        fig.update({"samples": len(xp), "exit_path_timing_s": spread(paths_s),
                    "path_ms": [path_t.median(name) for name in paths],
                    "stats": {name: path_t.stats(name) for name in paths},
                    "timing": path_t.to_json()})
    C.log(f"{tag}: exit-path timing for runtime predictions over {len(xp)} images: "
          f"{fig['exit_path_timing_s']['median']:.2f} s more; exit paths "
          f"{', '.join(C.fmt_stats(s) for s in fig['stats'].values())}")

    chosen = exit_indices(outputs, grid[points])
    correct_labels = outputs.predictions[np.arange(len(y))[None, :], chosen]
    with report.figure("brute_force") as fig:
        rows = []
        for row, i in enumerate(points):
            run = brute[point_name(grid[i])]
            counts = np.bincount(run.exits, minlength=net.n_exits)
            rows.append({
                "grid_index": int(i), "thresholds": grid[i].tolist(),
                "ms_per_sample": brute_t.stats(point_name(grid[i])),
                "accuracy": float((run.labels == y).mean()),
                "sweep_accuracy": float(sweep.accuracy[i]),
                "exit_counts": counts.tolist(), "sweep_exit_counts": sweep.exit_counts[i].tolist(),
                "identical": bool((run.labels == y).mean() == sweep.accuracy[i]
                                  and np.array_equal(counts, sweep.exit_counts[i])
                                  and np.array_equal(run.exits, chosen[row])
                                  and np.array_equal(run.labels, correct_labels[row]))})
        identical = all(r["identical"] for r in rows)
        fig.update({"points_run": len(rows), "grid_points": len(grid), "sampled": sampled,
                    "sample_seed": args.seed if sampled else None,
                    "measured_s": spread(brute_run_s),
                    "per_point_s": spread(brute_run_s / len(rows)),
                    "brute_force_s": spread(brute_s), "extrapolated": sampled,
                    "identical": identical, "points": rows, "timing": brute_t.to_json()})
    total = fig["brute_force_s"]["median"]
    how = (f"{len(rows)} of {len(grid)} points drawn at random (seed {args.seed}) took "
           f"{fig['measured_s']['median']:.1f} s, so the full grid would take about {total:.0f} s "
           f"({total / 3600:.2f} h; extrapolated)" if sampled else
           f"all {len(grid)} points took {total:.1f} s")
    C.log(f"{tag}: brute force at batch size 1 over {len(x)} images: {how} (median of "
          f"{args.timing_rounds} rounds, quartiles [{fig['brute_force_s']['q1']:.1f}, "
          f"{fig['brute_force_s']['q3']:.1f}] s){C.load_note(fig)}")
    C.log(f"{tag}: accuracies, exit counts and every sample's exit and label identical to the "
          f"cached sweep on all {len(rows)} brute-forced points: {identical}")

    with report.figure("speedup") as fig:
        fig.update({"speedup": ratio_summary(brute_s / cached_s),
                    "speedup_with_path_timing": ratio_summary(brute_s / (cached_s + paths_s)),
                    "extrapolated": sampled, "target_speedup": 100, "identical": identical})
    C.log(f"{tag}: cached sweep is {C.fmt_ratio(fig['speedup'])} faster than brute force "
          f"({C.fmt_ratio(fig['speedup_with_path_timing'])} counting the exit-path timing; "
          f"per-round ratios){' (brute force extrapolated)' if sampled else ''}; target >= 100x "
          f"on the AlexNet grid")
    return report.write()


if __name__ == "__main__":
    main()
    sys.exit(0)
