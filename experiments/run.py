"""Run one BranchyNet experiment end to end: train, sweep, select, measure, report.

    python -m experiments.run --network lenet_mnist            # quick, on mnist-5k
    python -m experiments.run --network lenet_mnist --paper --data-dir ../shared/data
    python -m experiments.run --network lenet_mnist --val-size 500 --latency-budget-fraction 0.8 \
        --out results/lenet-val

Steps, each resumable (outputs already in the results folder are reused):
  1. train the baseline (main branch only) for E1 epochs;
  2. initialise the B-net from it and train all exits jointly for E2 epochs;
  3. run every exit once over the test set and keep each sample's entropy and prediction;
  4. per device: time each exit path at batch size 1, evaluate the whole threshold grid
     exactly from the cached arrays, predict each point's runtime from its exit fractions,
     find the frontier (the authors' inc-points rule) and the knee (Kneedle rule);
  5. measure the frontier points for real with early-exit inference at batch size 1, and
     write Table I rows (stdout, CSV, JSON) and a Fig. 3-style plot (PNG, PDF).

Choosing T without the test set (--val-size N): N training samples (seeded by --seed; their
positions are saved in val_index.npy) are held out as a validation split and the networks
train on the rest. Every exit also runs once over the validation split, exit paths are
timed on validation inputs, and thresholds are chosen there (--search: the whole grid,
coordinate descent, or MSDNet-style quantiles): the validation knee always, plus one row
per budget given (--latency-budget-ms/-fraction: the most accurate T whose predicted
runtime fits; --accuracy-floor/--accuracy-drop: the fastest T that keeps the accuracy).
Chosen thresholds are then reported on the test set with measured latency, beside the
paper's test-set knee (Selection "test knee (as paper)"), which is kept for comparison.
A budget that no T meets is a row marked INFEASIBLE with the reason (the budget, and the
fastest runtime or best accuracy achievable); all results are still written, and the
run then exits with status 1.

--criterion picks the exit score (lower = more confident; a sample exits when score < T):
entropy (the paper's, default), max-prob (1 - top softmax probability: exits when the
top probability > 1 - T) or margin (1 - (top - second probability): exits when the top
two differ by more than 1 - T). The latter two default to the grid
branchynet.sweep.CRITERION_GRIDS; their outputs and per-device files carry a
-<criterion> suffix, so the three can share one results folder.
"""
import argparse
import dataclasses
import hashlib
import os
import sys
import time

import branchynet  # noqa: F401  (compatibility fixes before chainer)
import chainer
import numpy as np

from branchynet._compat import cuda_status
from branchynet.datasets import DatasetError, load_dataset, split_validation
from branchynet.devices import available_devices
from branchynet.flops import expected_macs, exit_path_costs
from branchynet.frontier import inc_points, knee
from branchynet.io import atomic_path, read_json, write_json
from branchynet.net import BranchyNet
from branchynet.report import (device_label, format_table, machine_info, plot_tradeoff,
                               write_csv)
from branchynet.routing import CRITERIA, check_thresholds
from branchynet.selection import (SEARCHES, AccuracyFloor, InfeasibleBudget, LatencyBudget,
                                  choose)
from branchynet.sweep import (ExitOutputs, collect_exit_outputs, default_grid, evaluate_grid,
                              exit_indices, predict_runtime, threshold_grid)
from branchynet.timing import latency_profile, time_early_exit
from branchynet.training import (AUGMENTATIONS, OPTIMIZERS, RECIPES, SCHEDULES,
                                 TimeBudgetExhausted, train_or_load)
from networks import REGISTRY, get_network

# Settings that determine the trained weights: a results folder holds one such setting.
# ("recipe": optimizer, momentum, weight decay, schedule, warm-up, augmentation, joint-stage
# rate factor: everything of branchynet.training.Recipe but lr, which is its own key.)
TRAINING_KEYS = ("network", "dataset", "dataset_options", "train_limit", "val_size", "seed",
                 "batch_size", "baseline_epochs", "branchy_epochs", "lr", "loss_weights",
                 "recipe")
# Values of training keys that folders written before the key existed implicitly had.
TRAINING_DEFAULTS = {"val_size": 0,
                     "recipe": {k: v for k, v in RECIPES["paper"].to_dict().items() if k != "lr"}}
# Exit status when --time-budget stopped training before it finished (run again to continue).
EXIT_TIME_BUDGET = 3
# The clock of --time-budget (a module attribute, so tests can stand in for it).
_clock = time.monotonic


def _val_size(text):
    """--val-size: a count (>= 1), a fraction in (0, 1), or 0 for no validation split."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value == 0:
        return 0
    if 0 < value < 1:
        return value
    if value >= 1 and value.is_integer():
        return int(value)
    raise argparse.ArgumentTypeError(
        f"{text!r} is neither a sample count (1, 2, ...) nor a fraction in (0, 1)")


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
    parser.add_argument("--train-limit", type=int,
                        help="use only the first N training samples (0: all; default: the "
                        "network's quick preset, e.g. 5000 for AlexNet; all with --paper)")
    parser.add_argument("--test-limit", type=int,
                        help="use only the first N test samples (0: all; default as "
                        "--train-limit)")
    parser.add_argument("--baseline-epochs", type=int, help="epochs of baseline training (E1)")
    parser.add_argument("--branchy-epochs", type=int, help="epochs of joint training (E2)")
    parser.add_argument("--batch-size", type=int, help="training batch size")
    parser.add_argument("--lr", type=float,
                        help="initial learning rate (Adam: its step size alpha; default: the "
                        "network's fast preset's with --recipe fast, e.g. 0.2 for "
                        "B-ResNet-110 at batch 256, else the recipe's: 0.001 for paper)")
    recipe = parser.add_argument_group(
        "training recipe (--recipe picks one; the flags below change single settings)")
    recipe.add_argument("--recipe", choices=sorted(RECIPES),
                        help="paper: the authors' Adam (step 0.001), no schedule, no "
                        "augmentation (default); fast: SGD with momentum 0.9, weight decay "
                        "5e-4, 1 warm-up epoch then a cosine schedule, random "
                        "4-pixel-padded crops and flips, the joint stage at 0.1x the rate, "
                        "and the network's fast preset (B-ResNet-110: full CIFAR-10, batch "
                        "256, rate 0.2, 20 + 4 epochs; networks/resnet110_cifar10.py)")
    recipe.add_argument("--optimizer", choices=OPTIMIZERS, help="optimizer")
    recipe.add_argument("--momentum", type=float, help="momentum of momentum-sgd")
    recipe.add_argument("--weight-decay", type=float, help="L2 weight decay rate (0: none)")
    recipe.add_argument("--lr-schedule", choices=SCHEDULES,
                        help="learning-rate schedule over each stage's epochs")
    recipe.add_argument("--warmup-epochs", type=float,
                        help="linear warm-up from lr/10 over this many epochs (0: none)")
    recipe.add_argument("--augment", choices=AUGMENTATIONS,
                        help="on-the-fly augmentation of the training images")
    recipe.add_argument("--joint-lr-factor", type=float,
                        help="the joint stage's initial rate as a multiple of --lr")
    parser.add_argument("--train-only", action="store_true",
                        help="stop once both networks are trained (no exit outputs, sweep or "
                        "timing); the same command without it then goes on from the weights")
    parser.add_argument("--time-budget", type=float, metavar="MINUTES",
                        help="stop training after MINUTES of wall-clock time from the start "
                        "of the run, with a snapshot (mid-epoch too); the run then says so "
                        f"and exits with status {EXIT_TIME_BUDGET} before any sweep or "
                        "timing; the same command again continues the training exactly "
                        "where it stopped (a budget may be given again)")
    parser.add_argument("--loss-weights", type=float, nargs="+",
                        help="per-exit weights of the joint loss (default: 1 each)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    parser.add_argument("--device", action="append",
                        help="Chainer device specifier (@numpy, @cupy:0); repeat for several, "
                        "or 'all' for the CPU and every GPU (default: @numpy)")
    parser.add_argument("--grid", type=float, nargs="+",
                        help="threshold values; the grid is their product over the exits but "
                        "the last (default: the paper's grid for the network with entropy, "
                        "branchynet.sweep.CRITERION_GRIDS for the other criteria)")
    parser.add_argument("--criterion", default="entropy", choices=list(CRITERIA),
                        help="exit score, lower = more confident, exit when score < T: "
                        "entropy (paper), max-prob (1 - top probability), margin "
                        "(1 - (top - second probability)) (default: %(default)s)")
    select = parser.add_argument_group(
        "choosing T on validation data (all need --val-size; each budget adds a table row)")
    select.add_argument("--val-size", type=_val_size, default=0, metavar="N",
                        help="hold out N training samples (or a fraction in (0, 1)) as a "
                        "validation split, seeded by --seed; train on the rest and choose T "
                        "there: the validation knee, plus any budgets below (default: 0, "
                        "no split: only the paper's test-set knee)")
    select.add_argument("--search", default="grid", choices=list(SEARCHES),
                        help="how T is searched on validation: grid (every grid vector), "
                        "coordinate (coordinate descent over the grid values, for many exits), "
                        "quantile (MSDNet-style: a fraction q of the samples reaching each "
                        "exit leaves there) (default: %(default)s)")
    select.add_argument("--latency-budget-ms", type=float, metavar="MS",
                        help="latency budget: the most accurate T on validation whose predicted "
                        "runtime is at most MS ms per sample (batch size 1, per device)")
    select.add_argument("--latency-budget-fraction", type=float, metavar="F",
                        help="latency budget as a fraction of the baseline's measured latency "
                        "on each device, e.g. 0.5 for half")
    select.add_argument("--accuracy-floor", type=float, metavar="PCT",
                        help="accuracy floor: the fastest T whose validation accuracy is at "
                        "least PCT percent")
    select.add_argument("--accuracy-drop", type=float, metavar="PP",
                        help="accuracy floor relative to the baseline: the fastest T whose "
                        "validation accuracy is at most PP percentage points below the "
                        "baseline's validation accuracy (0: match the baseline)")
    parser.add_argument("--inc-amt", type=float,
                        help="tolerance of the inc-points frontier rule (default: the network's)")
    parser.add_argument("--timing-samples", type=int, default=1000,
                        help="test samples timed at batch size 1 (0: all; default: %(default)s)")
    parser.add_argument("--out", help="results folder (default: results/<network>-<dataset>)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    spec = get_network(args.network)
    if args.paper and args.recipe not in (None, "paper"):
        parser.error(f"--paper trains with the authors' recipe; drop --recipe {args.recipe} "
                     f"or --paper")
    fast = args.recipe == "fast"
    if fast and not spec.fast:
        parser.error(f"--recipe fast: {spec.name} has no fast preset (networks with one: "
                     f"{', '.join(sorted(n for n, s in REGISTRY.items() if s.fast))}); "
                     f"set --optimizer, --lr-schedule, --augment, ... instead")
    preset = spec.paper if args.paper else spec.fast if fast else spec.quick
    if args.lr is None:
        args.lr = preset.get("lr")  # a preset's rate (e.g. scaled to its batch size)
    try:
        args.recipe_obj = _recipe(args)
    except ValueError as err:
        parser.error(str(err))
    args.lr = args.recipe_obj.lr
    if args.time_budget is not None:
        if not (np.isfinite(args.time_budget) and args.time_budget > 0):
            parser.error("--time-budget must be a positive number of minutes")
        args.deadline = _clock() + 60 * args.time_budget
    else:
        args.deadline = None
    args.dataset = args.dataset or (spec.dataset if args.paper or fast else spec.quick_dataset)
    args.batch_size = args.batch_size if args.batch_size is not None else preset["batch_size"]
    args.baseline_epochs = args.baseline_epochs if args.baseline_epochs is not None else preset["baseline_epochs"]
    args.branchy_epochs = args.branchy_epochs if args.branchy_epochs is not None else preset["branchy_epochs"]
    for name in ("train_limit", "test_limit"):
        if getattr(args, name) is None:
            setattr(args, name, preset.get(name, 0))
        if getattr(args, name) < 0:
            parser.error(f"--{name.replace('_', '-')} must be >= 0 (0: all samples)")
    args.grid = tuple(args.grid or default_grid(args.criterion, spec.grid))
    args.inc_amt = spec.inc_amt if args.inc_amt is None else args.inc_amt
    args.out = args.out or os.path.join("results", f"{spec.name}-{args.dataset}" + (
        "-paper" if args.paper else "-fast" if fast else ""))
    for name in ("batch_size", "baseline_epochs", "branchy_epochs"):
        if getattr(args, name) < (1 if name == "batch_size" else 0):
            parser.error(f"--{name.replace('_', '-')} must be positive")
    if any(np.isnan(v) or v < 0 for v in args.grid):
        parser.error("--grid values must be >= 0")
    budgets = {"--latency-budget-ms": args.latency_budget_ms,
               "--latency-budget-fraction": args.latency_budget_fraction,
               "--accuracy-floor": args.accuracy_floor, "--accuracy-drop": args.accuracy_drop}
    given = [name for name, value in budgets.items() if value is not None]
    if given and not args.val_size:
        parser.error(f"{', '.join(given)} choose(s) T on validation data: give --val-size too")
    if args.search != "grid" and not args.val_size:
        parser.error("--search applies to the choice of T on validation data: give --val-size too")
    for name in ("--latency-budget-ms", "--latency-budget-fraction"):
        if budgets[name] is not None and not (np.isfinite(budgets[name]) and budgets[name] > 0):
            parser.error(f"{name} must be a positive number")
    if args.accuracy_floor is not None and not 0 <= args.accuracy_floor <= 100:
        parser.error("--accuracy-floor is a percentage in [0, 100]")
    if args.accuracy_drop is not None and not np.isfinite(args.accuracy_drop):
        parser.error("--accuracy-drop must be a number of percentage points")
    try:
        args.devices = resolve_devices(args.device or ["@numpy"])
    except ValueError as err:
        parser.error(str(err))
    return args


def _recipe(args):
    """The training recipe: --recipe's (default paper), with the single flags applied."""
    flags = {"optimizer": args.optimizer, "lr": args.lr, "momentum": args.momentum,
             "weight_decay": args.weight_decay, "schedule": args.lr_schedule,
             "warmup_epochs": args.warmup_epochs, "augment": args.augment,
             "joint_lr_factor": args.joint_lr_factor}
    return dataclasses.replace(RECIPES[args.recipe or "paper"],
                               **{k: v for k, v in flags.items() if v is not None})


def recipe_config(args):
    """The recipe as recorded in config.json (its lr is the key ``lr``)."""
    return {k: v for k, v in args.recipe_obj.to_dict().items() if k != "lr"}


def resolve_devices(specifiers):
    """Chainer devices for the --device values; 'all' is the CPU plus every CUDA GPU."""
    devices = []
    for spec in specifiers:
        if spec == "all":
            found, reason = available_devices()
            if reason:
                print(f"note: --device all: no CUDA GPU ({reason}); running on the CPU only",
                      file=sys.stderr)
            devices.extend(found)
        else:
            try:
                device = chainer.get_device(spec)
                why = _unusable_gpu(device)
            except Exception as err:
                # Chainer's own message for a GPU hides why CuPy is unusable; say why.
                device, why = None, (cuda_status()[1] if spec.startswith("@cupy") else "") or err
            if why:
                raise ValueError(f"--device {spec!r} is not a usable Chainer device ({why}); "
                                 f"use @numpy for the CPU or @cupy:N for GPU N") from None
            devices.append(device)
    return list(dict.fromkeys(devices))


def _unusable_gpu(device):
    """Why a CuPy device cannot run here ('' for a usable GPU, or a non-CuPy device).

    Chainer builds a @cupy:N device without asking the driver, so a missing driver or GPU
    would otherwise show only at the first kernel, after the data is loaded.
    """
    if device.xp is np:
        return ""
    gpus, reason = cuda_status()
    if device.device.id < gpus:
        return ""
    return reason or f"there is no GPU {device.device.id}: this machine has {gpus}"


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
        changed = [k for k in TRAINING_KEYS
                   if old.get(k, TRAINING_DEFAULTS.get(k)) != config.get(k)]
        if changed:
            raise SystemExit(
                f"error: {out} holds a run with other settings ({', '.join(changed)}: "
                f"{[old.get(k, TRAINING_DEFAULTS.get(k)) for k in changed]} there, "
                f"{[config.get(k) for k in changed]} now). "
                f"Use another --out, or delete {out} to start over.")
    write_json(path, config)


def train_stage(name, net, data, args, device, log):
    """Train ``net`` unless ``<out>/<name>.npz`` exists; resumable from snapshots.

    When --time-budget runs out, says where training stopped and exits with
    ``EXIT_TIME_BUDGET`` (nothing after training runs on a half-trained net).
    """
    epochs = args.baseline_epochs if name == "baseline" else args.branchy_epochs
    try:
        net = train_or_load(net, os.path.join(args.out, f"{name}.npz"), data.train_x,
                             data.train_y, epochs, args.batch_size, device, log=log,
                             seed=args.seed, stage=name, recipe=args.recipe_obj,
                             weights=args.loss_weights if name == "branchynet" else None,
                             deadline=args.deadline, clock=_clock,
                             progress=not args.no_progress)
    except TimeBudgetExhausted as stop:
        where = f"; snapshot {stop.snapshot}" if stop.snapshot else ""
        log(f"[{name}] stopped at the time budget after epoch {stop.epoch_detail:.2f} of "
            f"{stop.epochs}{where}; run again to continue")
        raise SystemExit(EXIT_TIME_BUDGET) from None
    if name == "branchynet" and args.train_only:
        log(f"--train-only: both networks are trained ({args.out}/baseline.npz, "
            f"branchynet.npz); stopping before the sweep")
        raise SystemExit(0)
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
    if args.val_size:
        # Carved after --train-limit: val_index are positions in the original training set.
        try:
            data = split_validation(data, args.val_size, args.seed)
        except ValueError as err:
            raise SystemExit(f"error: --val-size: {err}")
    log(data.summary())

    config = {"network": spec.name, "dataset": args.dataset, "dataset_options": options,
              "dataset_info": {k: v for k, v in data.info.items() if k != "files"},
              "train_limit": args.train_limit, "test_limit": args.test_limit,
              "samples": {"train": len(data.train_y), "test": len(data.test_y),
                          "val": 0 if data.val_y is None else len(data.val_y)},
              "val_size": args.val_size, "seed": args.seed,
              "batch_size": args.batch_size, "baseline_epochs": args.baseline_epochs,
              "branchy_epochs": args.branchy_epochs, "lr": args.lr,
              "recipe": recipe_config(args), "recipe_preset": args.recipe or "paper",
              "loss_weights": args.loss_weights, "paper_preset": args.paper,
              "criterion": args.criterion, "grid": list(args.grid), "inc_amt": args.inc_amt,
              "timing_samples": args.timing_samples, "devices": [str(d) for d in args.devices]}
    if data.val_index is not None:
        config["validation"] = {
            "samples": len(data.val_index), "seed": args.seed, "index_file": "val_index.npy",
            "index_sha256": hashlib.sha256(data.val_index.astype("<i8").tobytes()).hexdigest(),
            "carved_from": f"{len(data.train_y) + len(data.val_index)} training samples"
                           + (" (after --train-limit)" if args.train_limit else ""),
            "search": args.search,
            "budgets": {"latency_budget_ms": args.latency_budget_ms,
                        "latency_budget_fraction": args.latency_budget_fraction,
                        "accuracy_floor_percent": args.accuracy_floor,
                        "accuracy_drop_pp": args.accuracy_drop}}
    os.makedirs(args.out, exist_ok=True)
    check_config(args.out, config)
    if data.val_index is not None:
        with atomic_path(os.path.join(args.out, "val_index.npy")) as tmp:
            with open(tmp, "wb") as f:
                np.save(f, data.val_index)

    # Training runs on the first GPU requested, else on the CPU.
    train_device = next((d for d in args.devices if d.xp is not np), args.devices[0])
    np.random.seed(args.seed)  # Chainer's initialisers draw from NumPy's global generator
    baseline = BranchyNet(spec.build(), main_only=True)
    branchy = BranchyNet(spec.build())
    train_stage("baseline", baseline, data, args, train_device, log)
    if not os.path.exists(os.path.join(args.out, "branchynet.npz")):
        branchy.init_from_baseline(baseline)
    train_stage("branchynet", branchy, data, args, train_device, log)

    suffix = "" if args.criterion == "entropy" else f"_{args.criterion}"
    outputs = cached_exit_outputs(branchy, data.test_x, data.test_y,
                                  os.path.join(args.out, f"exit_outputs{suffix}.npz"),
                                  train_device, args)
    baseline.to_device(train_device)
    baseline_pred = collect_exit_outputs(baseline, data.test_x, data.test_y, device=train_device)
    baseline_accuracy = baseline_pred.exit_accuracies()[0]
    log(f"accuracy on {len(data.test_y)} test samples: baseline {100 * baseline_accuracy:.2f}%, "
        f"exits if taken alone {', '.join(f'{100 * a:.2f}%' for a in outputs.exit_accuracies())}")
    summary = {"config": config, "baseline_accuracy": baseline_accuracy,
               "exit_accuracies": outputs.exit_accuracies(), "devices": {},
               "training": {name: training_record(os.path.join(args.out, name, "log"),
                                                  len(data.train_y))
                            for name in ("baseline", "branchynet")}}
    validation = None
    if data.val_x is not None:
        val_outputs = cached_exit_outputs(branchy, data.val_x, data.val_y,
                                          os.path.join(args.out, f"exit_outputs_val{suffix}.npz"),
                                          train_device, args)
        baseline.to_device(train_device)
        val_baseline = collect_exit_outputs(baseline, data.val_x, data.val_y,
                                            device=train_device).exit_accuracies()[0]
        log(f"accuracy on {len(data.val_y)} validation samples: baseline "
            f"{100 * val_baseline:.2f}%, exits if taken alone "
            f"{', '.join(f'{100 * a:.2f}%' for a in val_outputs.exit_accuracies())}")
        validation = {"outputs": val_outputs, "baseline_accuracy": val_baseline}
        summary.update(val_baseline_accuracy=val_baseline,
                       val_exit_accuracies=val_outputs.exit_accuracies())

    costs = exit_path_costs(branchy, data.test_x.shape[1:])
    baseline_costs = exit_path_costs(baseline, data.test_x.shape[1:])
    costs.update(baseline_macs=baseline_costs["path_macs"][0],
                 baseline_params=baseline_costs["params"][0])
    log(format_costs(spec, costs))
    summary["costs"] = costs

    grid = threshold_grid(args.grid, branchy.n_exits)
    sweep = evaluate_grid(outputs, grid)
    infeasible = []
    for device in args.devices:
        result = measure_device(device, spec, args, data, baseline, branchy, outputs, sweep,
                                baseline_accuracy, validation, costs, log)
        summary["devices"][result["tag"]] = result
        infeasible += result["infeasible"]
    write_json(os.path.join(args.out, "summary.json"), summary)
    log(f"results in {args.out}/")
    if infeasible:
        raise SystemExit("error: " + "\nerror: ".join(infeasible))
    return summary


def training_record(log_path, n_train):
    """Per-epoch seconds, images/s and final training metrics from a Chainer LogReport file
    (None if the weights came without their log)."""
    if not os.path.exists(log_path):
        return None
    log = read_json(log_path)
    if not log:
        return None
    elapsed = [entry["elapsed_time"] for entry in log]
    # Chainer's elapsed_time continues across resumes; an epoch's time is the difference.
    epoch_seconds = np.diff([0.0] + elapsed).tolist()
    return {"epochs": log[-1]["epoch"], "seconds": elapsed[-1], "epoch_seconds": epoch_seconds,
            "images_per_second": n_train * len(log) / elapsed[-1], "last_epoch": log[-1]}


def cached_exit_outputs(net, x, y, path, device, args):
    """Every exit's scores and predictions over ``(x, y)``, cached in ``path``."""
    if os.path.exists(path):
        outputs = ExitOutputs.load(path)
        if outputs.criterion == args.criterion and len(outputs) == len(y):
            return outputs
    net.to_device(device)
    outputs = collect_exit_outputs(net, x, y, device=device, criterion=args.criterion,
                                   progress=not args.no_progress)
    outputs.save(path)
    return outputs


def measure_device(device, spec, args, data, baseline, branchy, outputs, sweep,
                   baseline_accuracy, validation, costs, log):
    """Time, select and measure on one device; write its table, sweep CSV and plot.

    ``validation`` (None without --val-size) holds the validation exit outputs and the
    baseline's validation accuracy: thresholds are chosen from those and the exit-path
    latencies (timed on validation inputs) alone, then measured on the test set.
    """
    label = device_label(device)
    tag = label if args.criterion == "entropy" else f"{label}-{args.criterion}"
    show = not args.no_progress
    count = args.timing_samples or len(data.test_y)
    timed_x, timed_y = data.test_x[:count], data.test_y[:count]
    # With a validation split, exit paths are timed on validation inputs, so that choosing T
    # there reads no test data at all (the paths' cost does not depend on the input).
    path_inputs = "validation" if validation else "test"
    path_x = data.val_x[:count] if validation else timed_x
    baseline.to_device(device)
    branchy.to_device(device)
    log(f"[{tag}] timing {len(path_x)} {path_inputs} samples at batch size 1 on {device}")

    timing_path = os.path.join(args.out, f"timing_{tag}.json")
    if os.path.exists(timing_path):
        timing = read_json(timing_path)
    else:
        timing = {"machine": machine_info(device), "samples": len(path_x), "inputs": path_inputs,
                  "criterion": args.criterion,
                  **latency_profile(branchy, baseline, path_x, device, progress=show,
                                    criterion=args.criterion)}
        write_json(timing_path, timing)

    predicted = predict_runtime(sweep.exit_fractions, timing["path_ms"])
    predicted_trunk = predict_runtime(sweep.exit_fractions, timing["trunk_ms"])
    frontier = inc_points(sweep.accuracy, predicted, args.inc_amt)
    knee_index = knee(sweep.accuracy, predicted, frontier)

    # Measure every frontier point for real, and check it against the cached sweep.
    def measure(thresholds):
        return measure_point(branchy, timed_x, timed_y, thresholds, device, timing,
                             outputs.take(slice(0, count)), args.criterion, show)

    measured = {int(i): measure(sweep.thresholds[i]) for i in frontier}
    rows = table_rows(spec, sweep, timing, measured, knee_index, baseline_accuracy,
                      args.criterion)

    # Thresholds chosen on validation, then measured on the test set.
    selections, marks, infeasible = [], [], []
    if validation:
        for rule, chosen in select_on_validation(args, validation["outputs"], timing,
                                                 validation["baseline_accuracy"]):
            name = f"val {rule} ({args.search})"
            if isinstance(chosen, InfeasibleBudget):
                infeasible.append(f"[{tag}] {chosen}")
                rows.append(_row(spec, name + ": INFEASIBLE", note=str(chosen)))
                selections.append({"rule": rule, "search": args.search, "infeasible": str(chosen)})
                continue
            point = measure(chosen.thresholds)
            on_test = evaluate_grid(outputs, [chosen.thresholds])
            rows.append(_row(
                spec, name, accuracy=100 * on_test.accuracy[0], time_ms=point["ms"],
                gain=timing["baseline_ms"] / point["ms"], thresholds=list(chosen.thresholds),
                exit_percent=list(100 * on_test.exit_fractions[0]),
                predicted_ms=point["predicted_ms"], trunk_ms=point["predicted_trunk_ms"],
                trunk_gain=timing["baseline_trunk_ms"] / point["predicted_trunk_ms"],
                val_accuracy=100 * chosen.accuracy, val_predicted_ms=chosen.runtime_ms))
            marks.append((name, point["ms"], 100 * on_test.accuracy[0]))
            selections.append({
                "rule": rule, "search": args.search, "thresholds": list(chosen.thresholds),
                "val_accuracy": chosen.accuracy, "val_predicted_ms": chosen.runtime_ms,
                "val_exit_fractions": chosen.exit_fractions,
                "candidates": len(chosen.candidates), "evaluations": chosen.candidates.evaluations,
                "search_seconds": chosen.candidates.seconds,
                "test_accuracy": on_test.accuracy[0], "test_exit_fractions": on_test.exit_fractions[0],
                "test_measured": point})
            if rule == "knee":
                write_candidates_csv(os.path.join(args.out, f"candidates_val_{tag}.csv"),
                                     chosen, args.inc_amt)

    for row in rows:
        if row.get("exit_percent"):
            row["macs"] = expected_macs(np.asarray(row["exit_percent"]) / 100, costs["macs"])
        elif row.get("accuracy") is not None:
            row["macs"] = costs["baseline_macs"]
    title = (f"Table I rows: {spec.title} on {args.dataset}, {label} "
             f"({timing['machine'].get('gpu') or timing['machine']['cpu']}); time = ms per "
             f"sample at batch size 1 over {count} test samples"
             + ("" if args.criterion == "entropy" else f"; exit criterion {args.criterion}"))
    log(format_table(rows, title))
    for row in rows:
        if row.get("note"):
            log(f"  note: {row['selection']}: {row['note']}")
    points = list(measured.values())
    if any(m["other_exit"] > m["other_exit_borderline"] for m in points):
        log(f"[{tag}] warning: real early-exit inference and the cached sweep disagree on "
            f"exits for some frontier points (see sweep_{tag}.csv)")
    elif any(m["other_exit"] for m in points):
        log(f"[{tag}] note: at {sum(m['other_exit'] > 0 for m in points)} frontier point(s) "
            f"a few samples ({max(m['other_exit'] for m in points)} at most) took another exit "
            f"at batch size 1 than in the batched sweep; all of them score within "
            f"{BORDERLINE:g} (relative) of the threshold, where float32 logits computed at "
            f"different batch sizes differ in the last bits (BLAS blocking)")
    write_csv(os.path.join(args.out, f"table_{tag}.csv"), rows)
    write_json(os.path.join(args.out, f"table_{tag}.json"),
               {"title": title, "rows": rows, "machine": timing["machine"], "timing": timing,
                "criterion": args.criterion,
                "knee_rule": "Kneedle: max of scaled accuracy minus scaled runtime on the frontier",
                "frontier_rule": f"inc points, inc_amt={args.inc_amt}"})
    if validation:
        write_json(os.path.join(args.out, f"selection_{tag}.json"),
                   {"criterion": args.criterion, "search": args.search, "grid": list(args.grid),
                    "validation_samples": len(validation["outputs"]),
                    "val_baseline_accuracy": validation["baseline_accuracy"],
                    "path_ms": timing["path_ms"], "baseline_ms": timing["baseline_ms"],
                    "selections": selections})
    write_sweep_csv(os.path.join(args.out, f"sweep_{tag}.csv"), sweep, predicted,
                    predicted_trunk, frontier, knee_index, measured)
    front = sorted(measured)
    plot_tradeoff(
        os.path.join(args.out, f"tradeoff_{tag}"),
        f"{spec.title} ({args.dataset}), {tag}: {timing['machine'].get('gpu') or timing['machine']['cpu']}",
        predicted, 100 * sweep.accuracy,
        [measured[i]["ms"] for i in frontier], [100 * sweep.accuracy[i] for i in frontier],
        (timing["baseline_ms"], 100 * baseline_accuracy),
        (measured[knee_index]["ms"], 100 * sweep.accuracy[knee_index]),
        labels=(f"B-{spec.title}", spec.title), marks=marks)
    return {"tag": tag, "rows": rows, "frontier": [int(i) for i in front], "knee": knee_index,
            "timing": timing, "selections": selections, "infeasible": infeasible}


def select_on_validation(args, val_outputs, timing, val_baseline_accuracy):
    """Choose T on validation data only: the knee, then one choice per budget given.

    Reads the validation exit outputs, the exit-path and baseline latencies (timed on
    validation inputs) and the baseline's validation accuracy; nothing from the test set.
    Returns ``(rule, Selection or InfeasibleBudget)`` pairs.
    """
    rules = ["knee"]
    if args.latency_budget_ms is not None:
        rules.append(LatencyBudget(args.latency_budget_ms))
    if args.latency_budget_fraction is not None:
        f = args.latency_budget_fraction
        rules.append(LatencyBudget(f * timing["baseline_ms"],
                                   f"{f:g} x baseline {timing['baseline_ms']:.3f} ms"))
    if args.accuracy_floor is not None:
        rules.append(AccuracyFloor(args.accuracy_floor / 100))
    if args.accuracy_drop is not None:
        rules.append(AccuracyFloor(
            val_baseline_accuracy - args.accuracy_drop / 100,
            f"baseline {100 * val_baseline_accuracy:.2f}% - {args.accuracy_drop:g} pp"))
    results = []
    for rule in rules:
        try:
            chosen = choose(val_outputs, timing["path_ms"], rule, method=args.search,
                            values=args.grid, inc_amt=args.inc_amt)
        except InfeasibleBudget as err:
            chosen = err
        results.append((rule if rule == "knee" else rule.describe(), chosen))
    return results


def measure_point(branchy, x, y, thresholds, device, timing, outputs, criterion, show):
    """Early-exit inference on ``x`` at batch size 1 with ``thresholds``: latency, accuracy,
    exit fractions, and whether the exit counts match the cached ``outputs`` of ``x``."""
    thresholds = check_thresholds(thresholds, branchy.n_exits)
    seconds, labels, exits = time_early_exit(branchy, x, thresholds, device, progress=show,
                                             desc=f"T={thresholds}", criterion=criterion)
    counts = np.bincount(exits, minlength=branchy.n_exits)
    fractions = counts / len(exits)
    other, borderline = compare_with_sweep(outputs, thresholds, exits)
    return {"ms": 1e3 * seconds.mean(), "accuracy": (labels == y).mean(),
            "exit_fractions": fractions,
            "predicted_ms": float(predict_runtime(fractions, timing["path_ms"])),
            "predicted_trunk_ms": float(predict_runtime(fractions, timing["trunk_ms"])),
            "matches_sweep": other == 0, "other_exit": other, "other_exit_borderline": borderline}


# Relative distance to a threshold within which a score may fall on either side of it,
# depending on the batch size the logits were computed at (float32 rounding).
BORDERLINE = 1e-5


def compare_with_sweep(outputs, thresholds, exits):
    """How many samples took another exit than the cached sweep says, and how many of those
    score within ``BORDERLINE`` of the threshold at the first exit where the two differ."""
    expected = exit_indices(outputs, [thresholds])[0]
    differ = np.flatnonzero(expected != exits)
    first = np.minimum(expected[differ], exits[differ])
    limits = np.asarray(thresholds, np.float64)[first]
    scores = outputs.scores[differ, first].astype(np.float64)
    near = np.abs(scores - limits) <= BORDERLINE * np.maximum(1.0, limits)
    return int(len(differ)), int(near.sum())


ROW_KEYS = ("network", "selection", "accuracy", "time_ms", "gain", "thresholds", "exit_percent",
            "predicted_ms", "trunk_ms", "trunk_gain", "macs", "val_accuracy", "val_predicted_ms",
            "note")


def _row(spec, selection, **values):
    """A B-net table row (every key of ROW_KEYS; missing values are None)."""
    row = dict.fromkeys(ROW_KEYS)
    row.update(network=f"B-{spec.title}", selection=selection, **values)
    return row


def table_rows(spec, sweep, timing, measured, knee_index, baseline_accuracy, criterion="entropy"):
    """The baseline row and the B-net test-set knee row of Table I, with our extra columns."""
    point = measured[knee_index]
    base_ms, base_trunk = timing["baseline_ms"], timing["baseline_trunk_ms"]
    baseline = dict.fromkeys(ROW_KEYS)
    baseline.update(network=spec.title, accuracy=100 * baseline_accuracy, time_ms=base_ms,
                    trunk_ms=base_trunk)
    return [
        baseline,
        _row(spec, "test knee (as paper)" if criterion == "entropy" else "test knee",
             accuracy=100 * sweep.accuracy[knee_index], time_ms=point["ms"],
             gain=base_ms / point["ms"],
             thresholds=[float(t) for t in sweep.thresholds[knee_index]],
             exit_percent=[100 * f for f in sweep.exit_fractions[knee_index]],
             predicted_ms=point["predicted_ms"], trunk_ms=point["predicted_trunk_ms"],
             trunk_gain=base_trunk / point["predicted_trunk_ms"]),
    ]


def format_costs(spec, costs):
    """Multiply-adds and parameters of the baseline and of each exit path, as a text table."""
    lines = [f"Multiply-adds (MACs) and parameters per sample, {spec.title} and each exit path of "
             f"B-{spec.title} (MACs with earlier heads: what a sample leaving there really runs)",
             f"  {'path':<10}{'MACs':>14}{'+ earlier heads':>18}{'params':>12}",
             f"  {'baseline':<10}{costs['baseline_macs']:>14,}{'':>18}{costs['baseline_params']:>12,}"]
    for n, (m, mh, p) in enumerate(zip(costs["path_macs"], costs["macs"], costs["params"])):
        lines.append(f"  {'exit ' + str(n + 1):<10}{m:>14,}{mh:>18,}{p:>12,}")
    return "\n".join(lines)


def write_candidates_csv(path, selection, inc_amt):
    """The validation candidates of a knee selection, with frontier and knee flags."""
    c = selection.candidates
    frontier = set(int(i) for i in inc_points(c.accuracy, c.runtime_ms, inc_amt))
    n_thresholds = c.thresholds.shape[1]
    columns = ([f"T{n + 1}" for n in range(n_thresholds)] + ["val_accuracy"]
               + [f"exit{n + 1}_fraction" for n in range(n_thresholds + 1)]
               + ["predicted_ms", "frontier", "knee"])
    rows = []
    for i in range(len(c)):
        row = {f"T{n + 1}": c.thresholds[i, n] for n in range(n_thresholds)}
        row.update({f"exit{n + 1}_fraction": c.exit_fractions[i, n] for n in range(n_thresholds + 1)})
        row.update(val_accuracy=c.accuracy[i], predicted_ms=c.runtime_ms[i],
                   frontier=int(i in frontier), knee=int(i == selection.index))
        rows.append(row)
    write_csv(path, rows, columns)


def write_sweep_csv(path, sweep, predicted, predicted_trunk, frontier, knee_index, measured):
    n_thresholds = sweep.thresholds.shape[1]
    columns = ([f"T{n + 1}" for n in range(n_thresholds)] + ["accuracy"]
               + [f"exit{n + 1}_fraction" for n in range(n_thresholds + 1)]
               + ["predicted_ms", "predicted_trunk_ms", "frontier", "knee", "measured_ms",
                  "measured_other_exit"])
    frontier = set(int(i) for i in frontier)
    rows = []
    for i in range(len(sweep.accuracy)):
        row = {f"T{n + 1}": sweep.thresholds[i, n] for n in range(n_thresholds)}
        row.update({f"exit{n + 1}_fraction": sweep.exit_fractions[i, n] for n in range(n_thresholds + 1)})
        row.update(accuracy=sweep.accuracy[i], predicted_ms=predicted[i],
                   predicted_trunk_ms=predicted_trunk[i], frontier=int(i in frontier),
                   knee=int(i == knee_index), measured_ms=measured.get(i, {}).get("ms", ""),
                   measured_other_exit=measured.get(i, {}).get("other_exit", ""))
        rows.append(row)
    write_csv(path, rows, columns)


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
