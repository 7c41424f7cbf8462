"""Run one BranchyNet experiment end to end: train, sweep, select, measure, report.

    python -m experiments.run --network lenet_mnist            # quick, on mnist-5k
    python -m experiments.run --network lenet_mnist --paper --data-dir ../shared/data

Steps, each resumable (outputs already in the results folder are reused):
  1. train the baseline (main branch only) for E1 epochs;
  2. initialise the B-net from it and train all exits jointly for E2 epochs;
  3. run every exit once over the test set and keep each sample's entropy and prediction;
  4. per device: time each exit path at batch size 1, evaluate the whole threshold grid
     exactly from the cached arrays, predict each point's runtime from its exit fractions,
     find the frontier (the authors' inc-points rule) and the knee (Kneedle rule);
  5. measure the frontier points for real with early-exit inference at batch size 1, and
     write Table I rows (stdout, CSV, JSON) and a Fig. 3-style plot (PNG, PDF).
"""
import argparse
import json
import os
import sys
import time

import branchynet  # noqa: F401  (compatibility fixes before chainer)
import chainer
import numpy as np

from branchynet.datasets import DatasetError, load_dataset
from branchynet.frontier import inc_points, knee
from branchynet.io import read_json, write_json, write_text
from branchynet.net import BranchyNet
from branchynet.report import (device_label, format_table, machine_info, plot_tradeoff,
                               write_csv)
from branchynet.routing import check_thresholds
from branchynet.sweep import (ExitOutputs, collect_exit_outputs, evaluate_grid,
                              predict_runtime, threshold_grid)
from branchynet.timing import exit_path_latency, time_early_exit, trunk_latency
from branchynet.training import load_weights, save_weights, train
from networks import REGISTRY, get_network

# Settings that determine the trained weights: a results folder holds one such setting.
TRAINING_KEYS = ("network", "dataset", "dataset_options", "train_limit", "seed", "batch_size",
                 "baseline_epochs", "branchy_epochs", "lr", "loss_weights")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m experiments.run", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--network", default="lenet_mnist", choices=sorted(REGISTRY),
                        help="network to run (default: %(default)s)")
    parser.add_argument("--paper", action="store_true",
                        help="the authors' settings: the paper's dataset, batch size and epochs")
    parser.add_argument("--dataset", help="dataset name (default: the network's quick dataset, "
                        "or its paper dataset with --paper)")
    parser.add_argument("--data-dir", help="folder with the dataset files "
                        "(default: $BRANCHYNET_DATA, then the per-user cache)")
    parser.add_argument("--preprocess", help="dataset preprocessing, e.g. scale, standardize, "
                        "zca for CIFAR-10 (default: the network's)")
    parser.add_argument("--train-limit", type=int, default=0,
                        help="use only the first N training samples (0: all)")
    parser.add_argument("--test-limit", type=int, default=0,
                        help="use only the first N test samples (0: all)")
    parser.add_argument("--baseline-epochs", type=int, help="epochs of baseline training (E1)")
    parser.add_argument("--branchy-epochs", type=int, help="epochs of joint training (E2)")
    parser.add_argument("--batch-size", type=int, help="training batch size")
    parser.add_argument("--lr", type=float, default=0.001, help="Adam step size (default: %(default)s)")
    parser.add_argument("--loss-weights", type=float, nargs="+",
                        help="per-exit weights of the joint loss (default: 1 each)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    parser.add_argument("--device", action="append",
                        help="Chainer device specifier (@numpy, @cupy:0); repeat for several, "
                        "or 'all' for the CPU and every GPU (default: @numpy)")
    parser.add_argument("--grid", type=float, nargs="+",
                        help="threshold values; the grid is their product over the exits but "
                        "the last (default: the paper's grid for the network)")
    parser.add_argument("--inc-amt", type=float,
                        help="tolerance of the inc-points frontier rule (default: the network's)")
    parser.add_argument("--timing-samples", type=int, default=1000,
                        help="test samples timed at batch size 1 (0: all; default: %(default)s)")
    parser.add_argument("--out", help="results folder (default: results/<network>-<dataset>)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    spec = get_network(args.network)
    preset = spec.paper if args.paper else spec.quick
    args.dataset = args.dataset or (spec.dataset if args.paper else spec.quick_dataset)
    args.batch_size = args.batch_size if args.batch_size is not None else preset["batch_size"]
    args.baseline_epochs = args.baseline_epochs if args.baseline_epochs is not None else preset["baseline_epochs"]
    args.branchy_epochs = args.branchy_epochs if args.branchy_epochs is not None else preset["branchy_epochs"]
    args.grid = tuple(args.grid or spec.grid)
    args.inc_amt = spec.inc_amt if args.inc_amt is None else args.inc_amt
    args.out = args.out or os.path.join("results", f"{spec.name}-{args.dataset}" + ("-paper" if args.paper else ""))
    for name in ("batch_size", "baseline_epochs", "branchy_epochs"):
        if getattr(args, name) < (1 if name == "batch_size" else 0):
            parser.error(f"--{name.replace('_', '-')} must be positive")
    if any(np.isnan(v) or v < 0 for v in args.grid):
        parser.error("--grid values must be >= 0")
    try:
        args.devices = resolve_devices(args.device or ["@numpy"])
    except ValueError as err:
        parser.error(str(err))
    return args


def resolve_devices(specifiers):
    """Chainer devices for the --device values; 'all' is the CPU plus every CUDA GPU."""
    devices = []
    for spec in specifiers:
        if spec == "all":
            devices.append(chainer.get_device("@numpy"))
            devices.extend(chainer.get_device(f"@cupy:{i}") for i in range(_gpu_count()))
        else:
            try:
                devices.append(chainer.get_device(spec))
            except Exception as err:
                raise ValueError(f"--device {spec!r} is not a usable Chainer device ({err}); "
                                 f"use @numpy for the CPU or @cupy:N for GPU N") from None
    return list(dict.fromkeys(devices))


def _gpu_count():
    try:
        import cupy
        return cupy.cuda.runtime.getDeviceCount()
    except Exception:
        return 0


def dataset_options(args, spec):
    options = dict(spec.dataset_options)
    if args.preprocess:
        options["preprocess"] = args.preprocess
    return options


def check_config(out, config):
    """Refuse to mix settings: a results folder holds the run of one training setting."""
    path = os.path.join(out, "config.json")
    if os.path.exists(path):
        old = read_json(path)
        changed = [k for k in TRAINING_KEYS if old.get(k) != config.get(k)]
        if changed:
            raise SystemExit(
                f"error: {out} holds a run with other settings ({', '.join(changed)}: "
                f"{[old.get(k) for k in changed]} there, {[config.get(k) for k in changed]} now). "
                f"Use another --out, or delete {out} to start over.")
    write_json(path, config)


def train_stage(name, net, data, args, device, log):
    """Train ``net`` unless ``<out>/<name>.npz`` exists; resumable from snapshots."""
    weights = os.path.join(args.out, f"{name}.npz")
    if os.path.exists(weights):
        log(f"[{name}] reusing {weights}")
        return load_weights(weights, net)
    epochs = args.baseline_epochs if name == "baseline" else args.branchy_epochs
    log(f"[{name}] training {epochs} epoch(s), batch {args.batch_size}, on {device}")
    start = time.perf_counter()
    train(net, data.train_x, data.train_y, epochs, args.batch_size, os.path.join(args.out, name),
          device, seed=args.seed, weights=args.loss_weights if name == "branchynet" else None,
          lr=args.lr, progress=not args.no_progress)
    net.to_device("@numpy")
    save_weights(weights, net)
    log(f"[{name}] done in {time.perf_counter() - start:.1f} s")
    return net


def main(argv=None):
    args = parse_args(argv)
    spec = get_network(args.network)
    log = print
    options = dataset_options(args, spec)
    try:
        data = load_dataset(args.dataset, args.data_dir, seed=args.seed, **options)
    except DatasetError as err:
        raise SystemExit(f"error: {err}")
    if args.train_limit:
        data.train_x, data.train_y = data.train_x[:args.train_limit], data.train_y[:args.train_limit]
    if args.test_limit:
        data.test_x, data.test_y = data.test_x[:args.test_limit], data.test_y[:args.test_limit]
    log(data.summary())

    config = {"network": spec.name, "dataset": args.dataset, "dataset_options": options,
              "dataset_info": {k: v for k, v in data.info.items() if k != "files"},
              "train_limit": args.train_limit, "test_limit": args.test_limit, "seed": args.seed,
              "batch_size": args.batch_size, "baseline_epochs": args.baseline_epochs,
              "branchy_epochs": args.branchy_epochs, "lr": args.lr,
              "loss_weights": args.loss_weights, "paper_preset": args.paper,
              "grid": list(args.grid), "inc_amt": args.inc_amt,
              "timing_samples": args.timing_samples, "devices": [str(d) for d in args.devices]}
    os.makedirs(args.out, exist_ok=True)
    check_config(args.out, config)

    # Training runs on the first GPU requested, else on the CPU.
    train_device = next((d for d in args.devices if d.xp is not np), args.devices[0])
    np.random.seed(args.seed)  # Chainer's initialisers draw from NumPy's global generator
    baseline = BranchyNet(spec.build(), main_only=True)
    branchy = BranchyNet(spec.build())
    train_stage("baseline", baseline, data, args, train_device, log)
    if not os.path.exists(os.path.join(args.out, "branchynet.npz")):
        branchy.init_from_baseline(baseline)
    train_stage("branchynet", branchy, data, args, train_device, log)

    outputs_path = os.path.join(args.out, "exit_outputs.npz")
    if os.path.exists(outputs_path):
        outputs = ExitOutputs.load(outputs_path)
    else:
        branchy.to_device(train_device)
        outputs = collect_exit_outputs(branchy, data.test_x, data.test_y, device=train_device,
                                       progress=not args.no_progress)
        outputs.save(outputs_path)
    baseline.to_device(train_device)
    baseline_pred = collect_exit_outputs(baseline, data.test_x, data.test_y, device=train_device)
    baseline_accuracy = baseline_pred.exit_accuracies()[0]
    log(f"accuracy on {len(data.test_y)} test samples: baseline {100 * baseline_accuracy:.2f}%, "
        f"exits if taken alone {', '.join(f'{100 * a:.2f}%' for a in outputs.exit_accuracies())}")

    grid = threshold_grid(args.grid, branchy.n_exits)
    sweep = evaluate_grid(outputs, grid)
    summary = {"config": config, "baseline_accuracy": baseline_accuracy,
               "exit_accuracies": outputs.exit_accuracies(), "devices": {}}
    for device in args.devices:
        summary["devices"][device_label(device)] = measure_device(
            device, spec, args, data, baseline, branchy, outputs, sweep, baseline_accuracy, log)
    write_json(os.path.join(args.out, "summary.json"), summary)
    log(f"results in {args.out}/")
    return summary


def measure_device(device, spec, args, data, baseline, branchy, outputs, sweep,
                   baseline_accuracy, log):
    """Time, select and measure on one device; write its table, sweep CSV and plot."""
    label = device_label(device)
    show = not args.no_progress
    count = args.timing_samples or len(data.test_y)
    timed_x = data.test_x[:count]
    baseline.to_device(device)
    branchy.to_device(device)
    log(f"[{label}] timing {len(timed_x)} samples at batch size 1 on {device}")

    timing_path = os.path.join(args.out, f"timing_{label}.json")
    if os.path.exists(timing_path):
        timing = read_json(timing_path)
    else:
        timing = {"machine": machine_info(device), "samples": len(timed_x),
                  "path_ms": (1e3 * exit_path_latency(branchy, timed_x, device, progress=show)).tolist(),
                  "trunk_ms": (1e3 * trunk_latency(branchy, timed_x, device)).tolist(),
                  "baseline_ms": 1e3 * exit_path_latency(baseline, timed_x, device, progress=show)[0],
                  "baseline_trunk_ms": 1e3 * trunk_latency(baseline, timed_x, device)[0]}
        write_json(timing_path, timing)

    predicted = predict_runtime(sweep.exit_fractions, timing["path_ms"])
    predicted_trunk = predict_runtime(sweep.exit_fractions, timing["trunk_ms"])
    frontier = inc_points(sweep.accuracy, predicted, args.inc_amt)
    knee_index = knee(sweep.accuracy, predicted, frontier)

    # Measure every frontier point for real, and check it against the cached sweep.
    measured = {}
    timed_y = data.test_y[:count]
    for i in frontier:
        thresholds = check_thresholds(sweep.thresholds[i], branchy.n_exits)
        seconds, labels, exits = time_early_exit(branchy, timed_x, thresholds, device,
                                                 progress=show, desc=f"T={thresholds}")
        fractions = np.bincount(exits, minlength=branchy.n_exits) / len(exits)
        expected = evaluate_grid(ExitOutputs(outputs.scores[:count], outputs.predictions[:count],
                                             outputs.labels[:count]), [sweep.thresholds[i]])
        measured[int(i)] = {
            "ms": 1e3 * seconds.mean(), "accuracy": (labels == timed_y).mean(),
            "exit_fractions": fractions,
            "predicted_ms": float(predict_runtime(fractions, timing["path_ms"])),
            "predicted_trunk_ms": float(predict_runtime(fractions, timing["trunk_ms"])),
            "matches_sweep": bool(np.array_equal(expected.exit_counts[0],
                                                 np.bincount(exits, minlength=branchy.n_exits))),
        }

    rows = table_rows(spec, sweep, timing, measured, knee_index, baseline_accuracy)
    title = (f"Table I rows: {spec.title} on {args.dataset}, {label} "
             f"({timing['machine'].get('gpu') or timing['machine']['cpu']}); time = ms per "
             f"sample at batch size 1 over {timing['samples']} test samples")
    log(format_table(rows, title))
    if not all(m["matches_sweep"] for m in measured.values()):
        log(f"[{label}] warning: real early-exit inference and the cached sweep disagree on "
            f"exit counts for some frontier points (see sweep_{label}.csv)")
    write_csv(os.path.join(args.out, f"table_{label}.csv"), rows)
    write_json(os.path.join(args.out, f"table_{label}.json"),
               {"title": title, "rows": rows, "machine": timing["machine"], "timing": timing,
                "knee_rule": "Kneedle: max of scaled accuracy minus scaled runtime on the frontier",
                "frontier_rule": f"inc points, inc_amt={args.inc_amt}"})
    write_sweep_csv(os.path.join(args.out, f"sweep_{label}.csv"), sweep, predicted,
                    predicted_trunk, frontier, knee_index, measured)
    front = sorted(measured)
    plot_tradeoff(
        os.path.join(args.out, f"tradeoff_{label}"),
        f"{spec.title} ({args.dataset}), {label}: {timing['machine'].get('gpu') or timing['machine']['cpu']}",
        predicted, 100 * sweep.accuracy,
        [measured[i]["ms"] for i in frontier], [100 * sweep.accuracy[i] for i in frontier],
        (timing["baseline_ms"], 100 * baseline_accuracy),
        (measured[knee_index]["ms"], 100 * sweep.accuracy[knee_index]),
        labels=(f"B-{spec.title}", spec.title))
    return {"rows": rows, "frontier": [int(i) for i in front], "knee": knee_index,
            "timing": timing}


def table_rows(spec, sweep, timing, measured, knee_index, baseline_accuracy):
    """The baseline row and the B-net knee row of Table I, with our extra columns."""
    point = measured[knee_index]
    base_ms, base_trunk = timing["baseline_ms"], timing["baseline_trunk_ms"]
    return [
        {"network": spec.title, "accuracy": 100 * baseline_accuracy, "time_ms": base_ms,
         "gain": None, "thresholds": None, "exit_percent": None, "predicted_ms": None,
         "trunk_ms": base_trunk, "trunk_gain": None},
        {"network": f"B-{spec.title}", "accuracy": 100 * sweep.accuracy[knee_index],
         "time_ms": point["ms"], "gain": base_ms / point["ms"],
         "thresholds": [float(t) for t in sweep.thresholds[knee_index]],
         "exit_percent": [100 * f for f in sweep.exit_fractions[knee_index]],
         "predicted_ms": point["predicted_ms"], "trunk_ms": point["predicted_trunk_ms"],
         "trunk_gain": base_trunk / point["predicted_trunk_ms"]},
    ]


def write_sweep_csv(path, sweep, predicted, predicted_trunk, frontier, knee_index, measured):
    n_thresholds = sweep.thresholds.shape[1]
    columns = ([f"T{n + 1}" for n in range(n_thresholds)] + ["accuracy"]
               + [f"exit{n + 1}_fraction" for n in range(n_thresholds + 1)]
               + ["predicted_ms", "predicted_trunk_ms", "frontier", "knee", "measured_ms"])
    frontier = set(int(i) for i in frontier)
    rows = []
    for i in range(len(sweep.accuracy)):
        row = {f"T{n + 1}": sweep.thresholds[i, n] for n in range(n_thresholds)}
        row.update({f"exit{n + 1}_fraction": sweep.exit_fractions[i, n] for n in range(n_thresholds + 1)})
        row.update(accuracy=sweep.accuracy[i], predicted_ms=predicted[i],
                   predicted_trunk_ms=predicted_trunk[i], frontier=int(i in frontier),
                   knee=int(i == knee_index), measured_ms=measured.get(i, {}).get("ms", ""))
        rows.append(row)
    write_csv(path, rows, columns)


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
