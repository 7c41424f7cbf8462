"""Sweep cost: the cached exact sweep against the authors' brute force, on the same grid.

    python -m benchmarks.sweep_cost --network lenet_mnist         # quick (minutes, CPU)
    python -m benchmarks.sweep_cost --network alexnet_cifar10     # brute force sampled

Cached sweep (this project): every exit runs once over the test images, batched
(``collect_exit_outputs``), and every grid point is evaluated exactly from the cached
entropies and predictions (``evaluate_grid``). Runtime predictions for the grid then also
need each exit path's latency at batch size 1; that timing is reported separately.

Brute force (the authors' way): for every grid point, run early-exit inference at batch
size 1 over the same test images (``time_early_exit``), which gives that point's accuracy,
exit counts and runtime. Where the grid is large (AlexNet 121 points, ResNet 289), only
--brute-points grid points drawn at random (seeded) are run, and the full brute-force time
is extrapolated as (mean time per point) x (grid points): the output says so.

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
from branchynet.sweep import collect_exit_outputs, evaluate_grid, exit_indices, threshold_grid  # noqa: E402
from branchynet.timing import exit_path_latency, time_early_exit  # noqa: E402

DEFAULTS = {
    "lenet_mnist": {"samples": 1000, "brute_points": 0, "batch_size": 100, "warmup": 10,
                    "path_samples": 200},
    "alexnet_cifar10": {"samples": 500, "brute_points": 6, "batch_size": 100, "warmup": 5,
                        "path_samples": 100},
    "resnet110_cifar10": {"samples": 30, "brute_points": 2, "batch_size": 32, "warmup": 2,
                          "path_samples": 5},
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
    p.add_argument("--warmup", type=int, help="untimed samples before each timing call "
                   "(counted in the brute-force wall time, as they are work it does)")
    return C.finish_args(p.parse_args(argv), "sweep_cost")


def main(argv=None):
    args = parse_args(argv)
    device = args.chainer_device
    setup = C.prepare(args)
    report = C.Report("sweep_cost", args, setup)
    net, spec = setup.branchy, setup.spec
    net.to_device(device)
    x, y = setup.data.test_x[:args.samples], setup.data.test_y[:args.samples]
    grid = threshold_grid(spec.grid, net.n_exits)
    tag = f"[sweep_cost] {spec.name} {report.doc['device']}"

    with report.figure("cached_sweep") as fig:
        collect_exit_outputs(net, x[:args.batch_size], y[:args.batch_size], args.batch_size,
                             device)  # warm-up: the first call allocates
        start = time.perf_counter()
        outputs = collect_exit_outputs(net, x, y, args.batch_size, device)
        t_collect = time.perf_counter() - start
        start = time.perf_counter()
        sweep = evaluate_grid(outputs, grid)
        t_eval = time.perf_counter() - start
        start = time.perf_counter()
        path_latency = exit_path_latency(net, x[:args.path_samples], device, args.warmup)
        t_paths = time.perf_counter() - start
        fig.update({"grid_points": len(grid), "samples": len(x), "batch_size": args.batch_size,
                    "collect_exit_outputs_s": t_collect, "evaluate_grid_s": t_eval,
                    "cached_sweep_s": t_collect + t_eval,
                    "exit_path_timing_s": t_paths,
                    "exit_path_timing_samples": len(x[:args.path_samples]),
                    "path_ms": (1e3 * path_latency).tolist()})
    C.log(f"{tag}: cached sweep of {len(grid)} grid points over {len(x)} images: "
          f"{fig['cached_sweep_s']:.2f} s (one batched pass {t_collect:.2f} s + grid "
          f"evaluation {1e3 * t_eval:.1f} ms); exit-path timing for runtime predictions "
          f"{t_paths:.2f} s more{C.load_note(fig)}")

    if args.brute_points and args.brute_points < len(grid):
        rng = np.random.RandomState(args.seed)
        points = np.sort(rng.choice(len(grid), args.brute_points, replace=False))
        sampled = True
    else:
        points = np.arange(len(grid))
        sampled = False
    chosen = exit_indices(outputs, grid[points])
    correct_labels = outputs.predictions[np.arange(len(y))[None, :], chosen]

    with report.figure("brute_force") as fig:
        rows = []
        for row, i in enumerate(points):
            start = time.perf_counter()
            seconds, labels, exits = time_early_exit(net, x, grid[i], device, args.warmup)
            wall = time.perf_counter() - start
            counts = np.bincount(exits, minlength=net.n_exits)
            rows.append({
                "grid_index": int(i), "thresholds": grid[i].tolist(), "wall_s": wall,
                "ms_per_sample": 1e3 * seconds.mean(),
                "accuracy": float((labels == y).mean()),
                "sweep_accuracy": float(sweep.accuracy[i]),
                "exit_counts": counts.tolist(), "sweep_exit_counts": sweep.exit_counts[i].tolist(),
                "identical": bool((labels == y).mean() == sweep.accuracy[i]
                                  and np.array_equal(counts, sweep.exit_counts[i])
                                  and np.array_equal(exits, chosen[row])
                                  and np.array_equal(labels, correct_labels[row])),
            })
        measured = sum(r["wall_s"] for r in rows)
        per_point = measured / len(rows)
        total = per_point * len(grid)
        identical = all(r["identical"] for r in rows)
        fig.update({"points_run": len(rows), "grid_points": len(grid), "sampled": sampled,
                    "sample_seed": args.seed if sampled else None,
                    "measured_s": measured, "per_point_s": per_point,
                    "brute_force_s": total, "extrapolated": sampled,
                    "identical": identical, "points": rows})
    how = (f"{len(rows)} of {len(grid)} points drawn at random (seed {args.seed}) took "
           f"{measured:.1f} s, so the full grid would take about {total:.0f} s "
           f"({total / 3600:.2f} h; extrapolated)" if sampled else
           f"all {len(grid)} points took {total:.1f} s")
    C.log(f"{tag}: brute force at batch size 1 over {len(x)} images: {how}{C.load_note(fig)}")
    C.log(f"{tag}: accuracies, exit counts and every sample's exit and label identical to the "
          f"cached sweep on all {len(rows)} brute-forced points: {identical}")

    cached = report.doc["figures"]["cached_sweep"]
    with report.figure("speedup") as fig:
        fig.update({"speedup": total / cached["cached_sweep_s"],
                    "speedup_with_path_timing": total / (cached["cached_sweep_s"]
                                                         + cached["exit_path_timing_s"]),
                    "extrapolated": sampled, "target_speedup": 100,
                    "identical": identical})
    C.log(f"{tag}: cached sweep is {fig['speedup']:.0f}x faster than brute force "
          f"({fig['speedup_with_path_timing']:.0f}x counting the exit-path timing)"
          f"{' (brute force extrapolated)' if sampled else ''}; target >= 100x on the AlexNet grid")
    return report.write()


if __name__ == "__main__":
    main()
    sys.exit(0)
