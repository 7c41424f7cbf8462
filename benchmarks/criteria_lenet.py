"""Exit criteria compared on B-LeNet: entropy, max-prob and margin, one frontier figure.

    OMP_NUM_THREADS=1 python -m benchmarks.criteria_lenet          # MNIST (see docs/selection.md)
    python -m benchmarks.criteria_lenet --quick                    # mnist-5k, a few minutes

Steps:
  1. ``experiments.run`` trains one B-LeNet with a validation split held out (or reuses the
     results folder), then, for each criterion in turn in that same folder (weights shared,
     per-criterion files), sweeps the criterion's grid on the test set, chooses T on
     validation (knee, and the budgets given here) and measures the chosen T on the test
     set at batch size 1. Its Table I rows are copied into the JSON.
  2. The figure: test accuracy against predicted runtime for each criterion. Thin line:
     every threshold (exit-1 fractions 0..100%; one threshold per distinct test score);
     markers: the criterion's grid frontier (inc points); large hollow marker: the T chosen
     on validation (knee), evaluated on the test set. Runtime is predicted from the exit
     fractions with one set of exit-path latencies (the entropy run's) for all three, so
     that timing noise between runs does not move the curves; each criterion's own
     measured latencies are in the JSON.
  3. Ranking quality, threshold-free: test accuracy when the k% samples with the lowest
     score (most confident by that criterion) exit at exit 1 and the rest at exit 2.

Prints one line per criterion and writes a JSON (default
benchmarks/results/criteria_lenet.json) and the figure (default docs/criteria_lenet.png).
"""
import argparse
import contextlib
import io
import os
import sys
import time

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import branchynet  # noqa: F401,E402  (compatibility fixes before chainer)
import numpy as np  # noqa: E402

from branchynet.frontier import inc_points  # noqa: E402
from branchynet.io import read_json, write_json  # noqa: E402
from branchynet.report import machine_info  # noqa: E402
from branchynet.routing import CRITERIA  # noqa: E402
from branchynet.sweep import ExitOutputs, default_grid, evaluate_grid, predict_runtime  # noqa: E402
from networks import get_network  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FULL = {"dataset": "mnist", "val_size": "5000", "epochs": 3, "batch_size": 64,
        "timing_samples": 1000, "out": os.path.join(REPO, "results", "criteria-lenet-mnist")}
QUICK = {"dataset": "mnist-5k", "val_size": "1000", "epochs": 5, "batch_size": 64,
         "timing_samples": 300, "out": os.path.join(REPO, "results", "criteria-lenet-mnist-5k")}
FRACTIONS = (0.5, 0.8, 0.9, 0.95, 0.99)
ZOOM_FRACTION = 0.85


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="mnist-5k settings (minutes)")
    p.add_argument("--results", help="experiments.run results folder to train into or reuse "
                   f"(default: {os.path.relpath(FULL['out'], REPO)}, or "
                   f"{os.path.relpath(QUICK['out'], REPO)} with --quick)")
    p.add_argument("--data-dir", help="dataset folder (default: $BRANCHYNET_DATA, then the cache)")
    p.add_argument("--train-limit", type=int, default=0, help="first N training images (0: all)")
    p.add_argument("--test-limit", type=int, default=0, help="first N test images (0: all)")
    p.add_argument("--epochs", type=int, help="baseline and joint training epochs each")
    p.add_argument("--batch-size", type=int, help="training batch size")
    p.add_argument("--val-size", help="validation samples carved from training")
    p.add_argument("--timing-samples", type=int, help="samples timed at batch size 1")
    p.add_argument("--latency-budget-fraction", type=float, default=0.75,
                   help="budget row: fraction of the baseline latency (default: %(default)s)")
    p.add_argument("--accuracy-drop", type=float, default=0.2,
                   help="budget row: percentage points below the baseline (default: %(default)s)")
    p.add_argument("--search", default="grid", help="search on validation (default: %(default)s)")
    p.add_argument("--figure", default=os.path.join(REPO, "docs", "criteria_lenet.png"),
                   help="figure path (default: docs/criteria_lenet.png)")
    p.add_argument("--out", default=os.path.join(REPO, "benchmarks", "results", "criteria_lenet.json"),
                   help="JSON path (default: benchmarks/results/criteria_lenet.json)")
    args = p.parse_args(argv)
    preset = QUICK if args.quick else FULL
    for key in ("epochs", "batch_size", "val_size", "timing_samples"):
        if getattr(args, key) is None:
            setattr(args, key, preset[key])
    args.dataset = preset["dataset"]
    args.results = args.results or preset["out"]
    return args


def run_criterion(args, criterion):
    """experiments.run for one criterion; returns (its table, its stdout, error or None)."""
    from experiments.run import main
    argv = ["--network", "lenet_mnist", "--dataset", args.dataset, "--val-size", str(args.val_size),
            "--baseline-epochs", str(args.epochs), "--branchy-epochs", str(args.epochs),
            "--batch-size", str(args.batch_size), "--timing-samples", str(args.timing_samples),
            "--train-limit", str(args.train_limit), "--test-limit", str(args.test_limit),
            "--criterion", criterion, "--search", args.search, "--out", args.results,
            "--latency-budget-fraction", str(args.latency_budget_fraction),
            "--accuracy-drop", str(args.accuracy_drop), "--no-progress"]
    if args.data_dir:
        argv += ["--data-dir", args.data_dir]
    printed, error = io.StringIO(), None
    with contextlib.redirect_stdout(printed):
        try:
            main(argv)
        except SystemExit as err:  # an infeasible budget: the rows are written all the same
            error = str(err)
    tag = "cpu" if criterion == "entropy" else f"cpu-{criterion}"
    return read_json(os.path.join(args.results, f"table_{tag}.json")), printed.getvalue(), error


def ranking_accuracy(outputs, fraction):
    """Test accuracy when the ``fraction`` lowest-score samples exit at exit 1."""
    k = int(round(fraction * len(outputs.labels)))
    order = np.argsort(outputs.scores[:, 0], kind="stable")
    exit_one = np.zeros(len(order), bool)
    exit_one[order[:k]] = True
    correct = outputs.predictions == outputs.labels[:, None]
    return float(np.where(exit_one, correct[:, 0], correct[:, 1]).mean())


def every_threshold(outputs):
    """Accuracy and exit fractions of every distinct threshold on these outputs (2 exits)."""
    values = np.unique(outputs.scores[:, 0].astype(np.float64))
    thresholds = np.concatenate([[0.0], np.nextafter(values, np.inf)])
    return evaluate_grid(outputs, thresholds[:, None])


def main(argv=None):
    args = parse_args(argv)
    start = time.perf_counter()
    doc = {"benchmark": "criteria_lenet", "settings": {k: v for k, v in vars(args).items()},
           "machine": machine_info("@numpy"), "load_at_start": os.getloadavg(), "criteria": {}}
    tables = {}
    for criterion in CRITERIA:
        table, printed, error = run_criterion(args, criterion)
        tables[criterion] = table
        doc["criteria"][criterion] = {"rows": table["rows"], "path_ms": table["timing"]["path_ms"],
                                      "baseline_ms": table["timing"]["baseline_ms"],
                                      "error": error, "runner_output": printed.splitlines()[-20:]}
    shared_ms = tables["entropy"]["timing"]["path_ms"]
    config = read_json(os.path.join(args.results, "config.json"))
    doc["config"] = config
    doc["shared_path_ms"] = shared_ms

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (ax, zoom) = plt.subplots(1, 2, figsize=(10, 5))
    baseline = tables["entropy"]["rows"][0]
    lows = []
    for k, criterion in enumerate(CRITERIA):
        suffix = "" if criterion == "entropy" else f"_{criterion}"
        test = ExitOutputs.load(os.path.join(args.results, f"exit_outputs{suffix}.npz"))
        every = every_threshold(test)
        rt = predict_runtime(every.exit_fractions, shared_ms)
        color = f"C{k}"
        for a in (ax, zoom):
            a.plot(rt, 100 * every.accuracy, "-", lw=1, color=color, alpha=0.8,
                   label=f"{criterion}: every threshold")
        grid = np.array(default_grid(criterion, get_network("lenet_mnist").grid))
        sweep = evaluate_grid(test, grid[:, None])
        grid_rt = predict_runtime(sweep.exit_fractions, shared_ms)
        front = inc_points(sweep.accuracy, grid_rt, -0.0001)
        for a in (ax, zoom):
            a.plot(grid_rt[front], 100 * sweep.accuracy[front], "o", ms=4, color=color,
                   label=f"{criterion}: grid frontier")
        knee_row = next(r for r in tables[criterion]["rows"] if (r.get("selection") or "").startswith("val knee"))
        knee = evaluate_grid(test, [knee_row["thresholds"]])
        knee_rt = float(predict_runtime(knee.exit_fractions[0], shared_ms))
        for a in (ax, zoom):
            a.plot(knee_rt, 100 * knee.accuracy[0], "*", ms=14, mfc="none", mew=1.5, color=color,
                   label=f"{criterion}: T chosen on validation (knee)")
        lows.append(100 * sweep.accuracy[front].min())
        entry = doc["criteria"][criterion]
        entry.update(
            exit_accuracies=test.exit_accuracies().tolist(),
            ranking_accuracy={f"{int(100 * f)}%": ranking_accuracy(test, f) for f in FRACTIONS},
            grid_frontier=[{"T": float(grid[i]), "accuracy": float(sweep.accuracy[i]),
                            "exit1_fraction": float(sweep.exit_fractions[i, 0]),
                            "predicted_ms_shared": float(grid_rt[i])} for i in front],
            val_knee={"T": knee_row["thresholds"], "test_accuracy": float(knee.accuracy[0]),
                      "test_exit1_fraction": float(knee.exit_fractions[0, 0]),
                      "predicted_ms_shared": knee_rt, "measured_ms": knee_row["time_ms"]})
        ranks = ", ".join(f"{k} {100 * v:.2f}%" for k, v in entry["ranking_accuracy"].items())
        print(f"{criterion:9s} val knee T={knee_row['thresholds'][0]:g}: test {100 * knee.accuracy[0]:.2f}% "
              f"with {100 * knee.exit_fractions[0, 0]:.1f}% at exit 1, measured {knee_row['time_ms']:.3f} ms "
              f"(baseline {baseline['accuracy']:.2f}%, {baseline['time_ms']:.3f} ms) | "
              f"accuracy with the k% most confident at exit 1: {ranks}")
    ax.plot(tables["entropy"]["timing"]["baseline_ms"], baseline["accuracy"], "D", ms=7,
            color="C3", label="LeNet baseline")
    top = max([100 * doc["criteria"][c]["exit_accuracies"][1] for c in CRITERIA]
              + [baseline["accuracy"]])
    ax.set_ylim(max(min(lows) - 0.3, 0), top + 0.3)
    # Zoom: exit-1 fractions from 100% down to ZOOM_FRACTION (runtime is affine in it).
    zoom_ms = predict_runtime([[1, 0], [ZOOM_FRACTION, 1 - ZOOM_FRACTION]], shared_ms)
    zoom.set_xlim(*zoom_ms)
    zoom.set_ylim(max(min(lows) - 0.1, 0), top + 0.1)
    ax.axvspan(*zoom_ms, color="0.9", zorder=0)
    for a, title in ((ax, "all thresholds"),
                     (zoom, f"zoom: {100 * ZOOM_FRACTION:.0f}-100% of samples at exit 1")):
        a.set_xlabel("Predicted runtime (ms/sample, batch 1; shared exit-path latencies)",
                     fontsize=8)
        a.set_ylabel("Test accuracy (%)")
        a.set_title(title, fontsize=9)
        a.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=7.5)
    fig.suptitle(f"B-LeNet on {args.dataset}: exit criteria entropy, max-prob, margin "
                 f"({doc['machine']['cpu']}, {doc['machine']['cpu_count']} cores)", fontsize=10)
    fig.tight_layout(rect=(0, 0.13, 1, 1))
    os.makedirs(os.path.dirname(os.path.abspath(args.figure)), exist_ok=True)
    fig.savefig(args.figure, dpi=150)
    plt.close(fig)
    doc["seconds"] = time.perf_counter() - start
    doc["load_at_end"] = os.getloadavg()
    write_json(args.out, doc)
    print(f"figure {args.figure}, JSON {args.out}")
    return doc


if __name__ == "__main__":
    main()
