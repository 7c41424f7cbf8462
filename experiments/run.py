"""Run one BranchyNet experiment end to end: train, sweep, select, measure, report.

    python -m experiments.run --network lenet_mnist            # quick, on mnist-5k
    python -m experiments.run --network lenet_mnist --paper --data-dir ../shared/data
    python -m experiments.run --network lenet_mnist --val-size 500 --latency-budget-fraction 0.8 \
        --out results/lenet-val

    python -m experiments.run --from-results results/cpu-lenet_mnist   # re-derive, no training

Stages (experiments.experiment.Experiment), each resumable (outputs already in the results
folder are reused when the hashes of the weights and inputs they were made from match):
  1. data: read the dataset, apply the limits, carve the validation split;
  2. train the baseline (main branch only) for E1 epochs, then the B-net from it, all exits
     jointly, for E2 epochs;
  3. exit outputs: run every exit once over the test set; keep each sample's score and
     prediction (and the baseline's);
  4. sweep: evaluate the whole threshold grid exactly from the cached arrays;
  5. measure, per device: a profile of every exit path at batch size 1 (predicted runtime
     of each grid point, frontier by the authors' inc-points rule, knee by the Kneedle
     rule), then one interleaved measurement of the baseline, every exit path and every
     frontier point (and, for the paper's three networks with the entropy criterion,
     Table I's thresholds: the row "paper's T (Table I)"): --timing-rounds rounds, each
     figure the median over rounds, gains paired per round with their range;
     self-consistency checks (a point against its prediction and the exit paths it
     mixes, trunk-only against end to end) are printed as warnings and flagged in the CSVs;
  6. report: Table I rows (stdout, CSV, JSON), sweep CSV, a Fig. 3-style plot (PNG, PDF).

--from-results DIR re-derives every derived file of a results folder (sweep_<dev>.csv,
table_<dev>.csv/.json, summary.json; selection_<dev>.json and candidates_val_<dev>.csv
with a validation split) from its committed exit outputs, timing records and training
logs only (no data, training or timing) and compares them with the folder's (JSON as
values, re-derived floats to 1e-9 relative; CSV as text): exit status 1 and the file and
first differing field if not; --verify-outputs N (or all) also runs the folder's weights
on the first N test and validation samples (this needs the data: --data-dir, else the
folder config.json records when it exists on this machine, else $BRANCHYNET_DATA) and
checks they reproduce the committed exit outputs.

Exit status: 0 done; 1 a budget no T meets (everything is still written) or a
--from-results mismatch; 2 bad input (named, before any work); 3 --time-budget reached
(run the same command again to continue).

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

--seeds K runs the seeds --seed .. --seed + K - 1 of one setting, each a complete runner
folder OUT/seed-<s>/, and reports the mean, standard deviation and range over the seeds of
every Table I column (experiments/seeds.py); all seeds train first, --train-only stops
there (with the exit outputs and the accuracy aggregate), and --from-results OUT
re-derives every seed and the aggregate.

Thresholds with a guarantee (--risk-epsilon PP --risk-delta D, with --val-size): with
probability at least 1 - D over the draw of the validation samples, the accuracy lost on
new data against running every sample to the last exit is at most PP points
(Learn-then-Test, fixed-sequence testing, exact binomial p-value); --calibrate fits one
temperature per exit first. Rows in guarantee_<device>[_calibrated].csv/.json beside the
same drop without a guarantee; an infeasible PP says how many validation samples it would
need, and the run exits with status 1 after writing everything (docs/selection.md).

--criterion picks the exit score (lower = more confident; a sample exits when score < T):
entropy (the paper's, default), max-prob (1 - top softmax probability: exits when the
top probability > 1 - T) or margin (1 - (top - second probability): exits when the top
two differ by more than 1 - T). The latter two default to the grid
branchynet.sweep.CRITERION_GRIDS; their outputs and per-device files carry a
-<criterion> suffix, so the three can share one results folder.
"""
import argparse
import contextlib
import dataclasses
import glob
import os
import sys
import time

import branchynet  # noqa: F401  (compatibility fixes before chainer)
import chainer
import numpy as np

from branchynet import distributed
from branchynet._compat import cuda_status
from branchynet.devices import available_devices
from branchynet.io import FolderInUse, folder_lock, read_json
from branchynet.datasets import DatasetError
from experiments import seeds
from experiments.experiment import Experiment, SettingsError, compare_with_sweep  # noqa: F401
from branchynet.routing import CRITERIA
from branchynet.selection import SEARCHES
from branchynet.sweep import default_grid
from branchynet.datasets import (DATASET_KINDS, PREPROCESS_CHOICES, dataset_kind, dataset_label,
                                 resolve_data_dir)
from branchynet.net import BranchyNet
from branchynet.provenance import file_sha256
from branchynet.training import (AUGMENTATIONS, OPTIMIZERS, RECIPES, SCHEDULES,
                                 TimeBudgetExhausted, load_weights)
from networks import ENTRY_POINT_GROUP, REGISTRY, all_names, get_network

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


def _blas_threads(text):
    """--blas-threads: 'auto' or a thread count >= 1."""
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is neither 'auto' nor a thread count (1, 2, ...)")
    return value


def _sample_count(text):
    """--verify-outputs: a count of samples (>= 0), or 'all' (-1)."""
    if text == "all":
        return -1
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is neither a sample count (0, 1, ...) "
                                         f"nor 'all'")
    return value


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m experiments.run", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--network", default="lenet_mnist", metavar="NAME",
                        help=f"a registered network ({', '.join(sorted(REGISTRY))}), FILE.py:NAME or "
                        "package.module:NAME (a NetworkSpec, or a function returning the layer "
                        "list: then give --dataset; docs/own_network.md), or one an installed "
                        f"package declares (entry points {ENTRY_POINT_GROUP}); --list-networks "
                        "shows them all (default: %(default)s)")
    parser.add_argument("--list-networks", action="store_true",
                        help="list every network with its exits, parameters and dataset, and exit")
    parser.add_argument("--paper", action="store_true",
                        help="the authors' settings: the paper's dataset, batch size and epochs")
    parser.add_argument("--dataset", help="dataset: " + "; ".join(
                            f"{k}: {v}" for k, v in DATASET_KINDS.items()) + " (default: the network's quick "
                        "dataset, or its paper dataset with --paper)")
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
                        "256, rate 0.2, 20 + 4 epochs; B-AlexNet: full CIFAR-10, batch 128, "
                        "rate 0.05, 30 + 10 epochs; networks/*.py)")
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
    parser.add_argument("--baseline-from", metavar="NPZ",
                        help="start the baseline's training from these weights (another "
                        "folder's baseline.npz of the same network) instead of a fresh "
                        "initialisation: --baseline-epochs more epochs of the recipe, e.g. a "
                        "second cosine cycle; config.json records the file's sha256")
    parser.add_argument("--train-only", action="store_true",
                        help="stop once both networks are trained (no exit outputs, sweep or "
                        "timing); the same command without it then goes on from the weights")
    parser.add_argument("--time-budget", type=float, metavar="MINUTES",
                        help="stop training after MINUTES of wall-clock time from the start "
                        "of the run, with a snapshot (mid-epoch too); the run then says so "
                        f"and exits with status {EXIT_TIME_BUDGET} before any sweep or "
                        "timing; the same command again continues the training exactly "
                        "where it stopped (a budget may be given again). With "
                        "--communicator rank 0's clock decides for every rank: all stop at "
                        "the same iteration, rank 0 writes the one snapshot")
    parser.add_argument("--eval-every", type=int, default=1, metavar="N",
                        help="learning curve: after every N-th epoch (and a stage's last) "
                        "evaluate every exit on the test set, in inference mode (no effect on "
                        "the training), into the log as test/main/accuracy/exitK; "
                        "learning_curve.png is drawn whenever training stops; 0: no test "
                        "evaluation (default: %(default)s)")
    parser.add_argument("--eval-limit", type=int, default=0, metavar="N",
                        help="evaluate the learning curve on the first N test samples only "
                        "(0: every test sample of the run; default: %(default)s)")
    parser.add_argument("--loss-weights", type=float, nargs="+",
                        help="per-exit weights of the joint loss (default: 1 each)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    parser.add_argument("--seeds", type=int, metavar="K",
                        help="train and evaluate K seeds (--seed, --seed + 1, ...), each in "
                        "OUT/seed-<s>/, then time each, and report the mean, standard "
                        "deviation and range over the seeds of every Table I column "
                        "(OUT/seeds_<device>.csv/.json/.md) and of the accuracies from the "
                        "exit outputs alone (OUT/seeds_accuracy.*, also with --train-only); "
                        "default OUT: the runner's default plus -seeds (experiments/seeds.py)")
    parser.add_argument("--device", action="append",
                        help="Chainer device specifier (@numpy, @cupy:0); repeat for several, "
                        "or 'all' for the CPU and every GPU (default: @numpy)")
    parser.add_argument("--communicator", metavar="NAME", choices=distributed.COMMUNICATORS,
                        help="data-parallel training over MPI with ChainerMN, one process per "
                        "device: mpiexec -n N python -m experiments.run ... --communicator "
                        f"NAME ({', '.join(distributed.COMMUNICATORS)}; naive on CPUs, "
                        "pure_nccl on GPUs); --batch-size is then per process (the global "
                        "batch is N times it) and --device may name {local_rank}, e.g. "
                        "@cupy:{local_rank} (the default with a GPU communicator). Only rank "
                        "0 writes; sweep, timing and tables run on rank 0 after training "
                        "(docs/distributed.md)")
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
    select.add_argument("--risk-epsilon", type=float, metavar="PP",
                        help="thresholds with a guarantee: with probability at least 1 - "
                        "--risk-delta over the draw of the validation samples, the accuracy "
                        "lost on new data against sending every sample to the last exit is at "
                        "most PP percentage points (Learn-then-Test, fixed-sequence testing "
                        "over a common threshold at every exit, exact binomial p-value; "
                        "branchynet/risk.py, docs/selection.md section 5). Rows in "
                        "guarantee_<device>.csv/.json beside the same drop chosen without a "
                        "guarantee; runtime predicted, not timed. An infeasible PP says how many "
                        "validation samples it would need")
    select.add_argument("--risk-delta", type=float, metavar="D",
                        help="with --risk-epsilon: the probability, in (0, 1), that the "
                        "guarantee may fail over the validation draw (default: 0.1)")
    select.add_argument("--risk-loss", choices=("accuracy", "signed", "disagreement"),
                        help="with --risk-epsilon: the 0/1 loss bounded: accuracy (the exit "
                        "taken is wrong where the last exit is right; bounds the accuracy "
                        "lost; exact binomial p-value), signed (the accuracy lost itself, per "
                        "sample in {-1, 0, 1}; Hoeffding-Bentkus p-value: better where exits "
                        "often disagree) or disagreement (it predicts another class than the last exit; "
                        "needs no labels, more conservative) (default: accuracy)")
    select.add_argument("--calibrate", action="store_true",
                        help="per-exit temperature scaling: one T per exit fitted (NLL) on a "
                        "seeded half of the validation split, scores computed from logits / T; "
                        "writes calibration.json (T, ECE and NLL before/after per exit) and "
                        "reliability.png; with --risk-epsilon the guarantee is chosen on "
                        "calibrated scores over the other half (guarantee_<device>_calibrated.*)")
    parser.add_argument("--inc-amt", type=float,
                        help="tolerance of the inc-points frontier rule (default: the network's)")
    parser.add_argument("--timing-samples", type=int,
                        help="test samples timed at batch size 1 (0: all; default: 1000, or "
                        "all when the test set is smaller)")
    parser.add_argument("--timing-rounds", type=int, default=5,
                        help="interleaved timing rounds; every latency is the median over "
                        "rounds, and a gain's interval is the range of its per-round values, "
                        "which covers the median with probability 1 - 2^(1-R): 93.8%% for "
                        "5, 98.4%% for 7 (default: %(default)s)")
    parser.add_argument("--timed-points", type=int, default=25, metavar="N",
                        help="frontier points timed at most: the non-dominated ones, spread "
                        "evenly over predicted runtime, the knee always among them (plus the "
                        "choices on validation); the rest of the frontier is predicted from "
                        "the exit paths (default: %(default)s)")
    parser.add_argument("--time-all-points", action="store_true",
                        help="time every frontier point of the inc-points rule (the authors' "
                        "frontier; with a fine grid and many exits, thousands of points: the "
                        "run prints an estimate of the time before it starts)")
    parser.add_argument("--name", metavar="TITLE",
                        help="the network's name in tables and plot titles (default: the "
                        "registered title; for FILE.py:NAME the file's stem, e.g. my_net)")
    parser.add_argument("--remeasure", action="store_true",
                        help="time again even where timing_<device>.json matches the weights, "
                        "inputs and machine (e.g. to check that two measurements agree)")
    parser.add_argument("--blas-threads", type=_blas_threads, default="auto", metavar="{auto,N}",
                        help="BLAS threads (every loaded BLAS library, set with threadpoolctl "
                        "whatever OPENBLAS_NUM_THREADS says) for training and batched "
                        "inference; auto: the faster of 1 thread and every core for one "
                        "training step, measured at the start (1 when training on a GPU or "
                        "with --communicator); recorded in config.json. Batch-size-1 timing "
                        "always runs with 1 thread (default: %(default)s)")
    parser.add_argument("--out", help="results folder (default: results/<network>-<dataset>)")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bars (the default when stdout or stderr is not a "
                        "terminal)")
    parser.add_argument("--from-results", metavar="DIR",
                        help="re-derive DIR's files from its exit outputs, timing records and "
                        "training logs (no training, no timing) and compare: sweep_<dev>.csv, "
                        "table_<dev>.csv/.json, summary.json and, with a validation split, "
                        "selection_<dev>.json and candidates_val_<dev>.csv (exit status 1 and "
                        "the first differing field if any differs); other options are ignored "
                        "except --criterion, --verify-outputs and --data-dir")
    parser.add_argument("--verify-outputs", type=_sample_count, default=0, metavar="N",
                        help="with --from-results: also run DIR's weights on its first N test "
                        "samples (and N validation samples, if DIR has a split; 'all': every "
                        "sample) and check they reproduce the exit outputs (needs the data: --data-dir, "
                        "else the folder DIR/config.json records, else $BRANCHYNET_DATA)")
    parser.add_argument("--rewrite-derived", action="store_true",
                        help="with --from-results: write the re-derived files over the "
                        "folder's differing ones instead of failing (after a change of what "
                        "the runner derives; the inputs are left as they are)")
    args = parser.parse_args(argv)
    if not _terminal():
        args.no_progress = True  # a log file: the stages' and epochs' own lines, no bars
    args.data_dir = resolve_data_dir(args.data_dir)  # relative paths: from here, once
    if args.list_networks:
        print(list_networks())
        raise SystemExit(0)
    if args.from_results:
        if not os.path.isdir(args.from_results):
            parser.error(f"--from-results {args.from_results!r} is not a folder")
        check_guarantee_args(parser, args, bool(glob.glob(
            os.path.join(args.from_results, "exit_outputs_val*.npz"))))
        return args
    check_guarantee_args(parser, args, bool(args.val_size))
    seeds.check_count(parser, args)
    out_given = args.out is not None
    check_args(parser, args)
    seeds.check_out(parser, args, out_given)
    return args


def check_guarantee_args(parser, args, validation):
    """--calibrate and --risk-*: their values, and a validation split to work on."""
    if args.risk_epsilon is None:
        given = [f"--{n.replace('_', '-')}" for n in ("risk_delta", "risk_loss")
                 if getattr(args, n) is not None]
        if given:
            parser.error(f"{', '.join(given)}: only with the guaranteed selection, give "
                         f"--risk-epsilon PP too")
    else:
        if not (np.isfinite(args.risk_epsilon) and 0 < args.risk_epsilon < 100):
            parser.error("--risk-epsilon is the accuracy lost in percentage points, in (0, 100)")
        args.risk_delta = 0.1 if args.risk_delta is None else args.risk_delta
        if not (np.isfinite(args.risk_delta) and 0 < args.risk_delta < 1):
            parser.error("--risk-delta is a probability in (0, 1), e.g. 0.1 or 0.05")
        args.risk_loss = args.risk_loss or "accuracy"
    asked = [name for name, on in (("--calibrate", args.calibrate),
                                   ("--risk-epsilon", args.risk_epsilon is not None)) if on]
    if asked and not validation:
        where = (f"{args.from_results} has no validation exit outputs (a folder made with "
                 f"--val-size)" if args.from_results else "give --val-size too")
        parser.error(f"{' and '.join(asked)} need{'s' if len(asked) == 1 else ''} a "
                     f"validation split: {where}")


def check_args(parser, args):
    """Fill the network's defaults into ``args`` and refuse bad values (exit status 2)."""
    # Devices first (building a network below allocates on Chainer's default device);
    # with --communicator, each process's own devices ({local_rank}).
    default = ["@cupy:{local_rank}" if args.communicator in distributed.GPU_COMMUNICATORS
               else "@numpy"]
    try:
        args.comm = distributed.create(args.communicator) if args.communicator else None
        args.devices = resolve_devices(distributed.local_devices(args.device or default,
                                                                 args.comm))
    except ValueError as err:
        parser.error(str(err))
    try:
        spec = get_network(args.network)
    except ValueError as err:
        parser.error(str(err))
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
        args.lr = (preset or {}).get("lr")  # a preset's rate (e.g. scaled to its batch size)
    elif not np.isfinite(args.lr) or args.lr <= 0:
        parser.error("--lr must be a positive number")
    try:
        args.recipe_obj = _recipe(args)
    except ValueError as err:
        parser.error(str(err))
    args.lr = args.recipe_obj.lr
    if args.eval_every < 0 or args.eval_limit < 0:
        parser.error("--eval-every and --eval-limit must be >= 0 (0: no evaluation, all "
                     "test samples)")
    if args.time_budget is not None:
        # With --communicator every rank sets a deadline; rank 0's alone is read.
        if not (np.isfinite(args.time_budget) and args.time_budget > 0):
            parser.error("--time-budget must be a positive number of minutes")
        args.deadline = _clock() + 60 * args.time_budget
    else:
        args.deadline = None
    args.clock = _clock
    args.dataset = args.dataset or (spec.dataset if args.paper or fast else spec.quick_dataset)
    if not args.dataset:
        parser.error(f"--network {args.network} names no dataset: give --dataset "
                     f"({', '.join(DATASET_KINDS)})")
    try:
        kind = dataset_kind(args.dataset)
    except DatasetError as err:
        parser.error(f"--dataset: {err}")
    if args.preprocess and args.preprocess not in PREPROCESS_CHOICES[kind]:
        parser.error(f"--preprocess {args.preprocess!r} does not apply to {kind} data; "
                     f"choose one of {', '.join(PREPROCESS_CHOICES[kind])}")
    for name in ("batch_size", "baseline_epochs", "branchy_epochs"):
        if getattr(args, name) is None:
            setattr(args, name, preset[name])
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1" + (
                "" if name == "batch_size" else " (a finished stage is reused when you run "
                "the same --out again: no need for 0)"))
    for name in ("train_limit", "test_limit"):
        if getattr(args, name) is None:
            setattr(args, name, preset.get(name, 0))
        if getattr(args, name) < 0:
            parser.error(f"--{name.replace('_', '-')} must be >= 0 (0: all samples)")
    n_exits = BranchyNet(spec.build()).n_exits
    if args.loss_weights is not None:
        weights = np.asarray(args.loss_weights)
        if len(weights) != n_exits:
            parser.error(f"--loss-weights: {len(weights)} given, but {spec.name} has "
                         f"{n_exits} exits: give one weight per exit")
        if not np.isfinite(weights).all() or (weights < 0).any() or not weights.any():
            parser.error("--loss-weights must be finite and >= 0, at least one > 0 (a "
                         "negative weight trains that exit to be wrong)")
    args.grid = tuple(args.grid or default_grid(args.criterion, spec.grid))
    args.inc_amt = spec.inc_amt if args.inc_amt is None else args.inc_amt
    args.out = args.out or os.path.join(
        "results", f"{spec.slug}-{dataset_label(args.dataset, args.data_dir)}"
        + ("-paper" if args.paper else "-fast" if fast else ""))
    check_out(parser, args.out)
    if args.baseline_from is not None:
        check_baseline_from(parser, args, spec)
    if args.timing_samples is not None and args.timing_samples < 0:
        parser.error("--timing-samples must be >= 0 (0: every test sample)")
    if args.timed_points < 2:
        parser.error("--timed-points must be >= 2 (the fastest and the most accurate point)")
    if args.timing_rounds < 1:
        parser.error("--timing-rounds must be >= 1 (5 or more for an interval worth having)")
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


def check_baseline_from(parser, args, spec):
    """--baseline-from: a readable npz of this network's baseline; its sha256 and, when it
    sits in a results folder, that folder's training settings go into ``args``."""
    path = args.baseline_from
    if os.path.abspath(path) == os.path.abspath(os.path.join(args.out, "baseline.npz")):
        parser.error(f"--baseline-from {path!r} is the baseline of --out {args.out} itself: "
                     f"continue from it in another folder (--out)")
    if not os.path.isfile(path):
        parser.error(f"--baseline-from {path!r}: no such file (give a baseline.npz, e.g. "
                     f"results/<folder>/baseline.npz)")
    try:
        load_weights(path, BranchyNet(spec.build(), main_only=True))
    except (ValueError, OSError) as err:
        parser.error(f"--baseline-from {path!r} is not a baseline of {spec.name}: {err}")
    source = os.path.join(os.path.dirname(path), "config.json")
    config = read_json(source) if os.path.isfile(source) else {}
    args.baseline_from_record = {
        "file": path, "sha256": file_sha256(path),
        **({"folder_settings": {k: config.get(k) for k in (
            "network", "baseline_epochs", "global_batch_size", "lr", "recipe")}}
           if config else {})}


def _recipe(args):
    """The training recipe: --recipe's (default paper), with the single flags applied."""
    flags = {"optimizer": args.optimizer, "lr": args.lr, "momentum": args.momentum,
             "weight_decay": args.weight_decay, "schedule": args.lr_schedule,
             "warmup_epochs": args.warmup_epochs, "augment": args.augment,
             "joint_lr_factor": args.joint_lr_factor}
    return dataclasses.replace(RECIPES[args.recipe or "paper"],
                               **{k: v for k, v in flags.items() if v is not None})


def check_out(parser, out):
    """--out must be a folder, or a new one in a writable place."""
    if os.path.exists(out) and not os.path.isdir(out):
        parser.error(f"--out {out!r} is a file, not a folder: name a folder for the results")
    parent = out
    while not os.path.exists(parent):
        parent = os.path.dirname(os.path.abspath(parent))
    if not os.path.isdir(parent):
        parent_out = os.path.relpath(parent) if not os.path.isabs(out) else parent
        parser.error(f"--out {out!r}: {parent_out} is a file, not a folder: name a folder "
                     f"for the results")
    if not os.access(parent, os.W_OK | os.X_OK):
        parser.error(f"--out {out!r}: {parent} is not writable; choose another --out")


def list_networks():
    """A text table of every network: exits, parameters, dataset."""
    lines = [f"{'network':<22}{'title':<16}{'exits':>6}{'params':>12}  dataset"]
    for name in all_names():
        try:
            spec = get_network(name)
            net = BranchyNet(spec.build())
            params = sum(p.size for p in net.params() if p.array is not None)
            lazy = any(p.array is None for p in net.params())
            lines.append(f"{name:<22}{spec.title:<16}{net.n_exits:>6}"
                         f"{params:>12,}{'+' if lazy else ' '} {spec.dataset or '(give --dataset)'}")
        except ValueError as err:
            lines.append(f"{name:<22}(fails to load: {err})")
    lines.append("+: more parameters whose size is set by the first input (lazy layers). "
                 "Your own: --network FILE.py:NAME or package.module:NAME.")
    return "\n".join(lines)


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


def _terminal():
    """Whether stdout and stderr are both terminals. Progress bars redraw their line with
    carriage returns; written to a file (``./dev.sh demo > demo.log``) they leave thousands
    of updates, so there the runner prints only its one line per stage and per epoch."""
    return all(getattr(stream, "isatty", lambda: False)() for stream in (sys.stdout, sys.stderr))


def recompute(args, log=print):
    """``--from-results``: re-derive a committed folder; True when everything is identical."""
    if seeds.is_seeds_folder(args.from_results):
        problems = seeds.recompute(args.from_results, args.criterion, args.verify_outputs,
                                   args.data_dir, log, rewrite=args.rewrite_derived)
    else:
        experiment = Experiment.from_results(args.from_results, args.criterion, log)
        experiment.s.data_dir = args.data_dir
        for name in ("calibrate", "risk_epsilon", "risk_delta", "risk_loss"):
            setattr(experiment.s, name, getattr(args, name))
        problems = experiment.recompute(args.verify_outputs, rewrite=args.rewrite_derived)
    for problem in problems:
        log(f"error: {problem}")
    return not problems


def main(argv=None):
    """Run the experiment; returns the summary (``--from-results``: True if identical).

    Exits with status 1 when a budget is infeasible (after writing every result).
    """
    args = parse_args(argv)
    comm = getattr(args, "comm", None)
    several = comm is not None and comm.size > 1
    # Rank 0 alone writes the folder, so it alone holds it.
    folder = args.from_results or args.out
    held = folder_lock(folder) if distributed.is_root(comm) else contextlib.nullcontext()
    try:
        with held:
            if args.from_results:
                return recompute(args)
            log = print if distributed.is_root(comm) else (lambda *_, **__: None)
            if args.seeds:
                summary, infeasible = seeds.run(args, log)
            else:
                summary, infeasible = Experiment(args, log).run(args.devices)
    except (SettingsError, DatasetError, distributed.DistributedError, FolderInUse) as err:
        if several and not getattr(err, "on_every_rank", False):
            distributed.abort(comm, err, 2)  # the other ranks may wait for this one
        if distributed.is_root(comm):
            print(f"python -m experiments.run: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    except TimeBudgetExhausted as stop:
        if distributed.is_root(comm):
            where = f"; snapshot {stop.snapshot}" if stop.snapshot else ""
            print(f"[{stop.stage}] stopped at the time budget after epoch "
                  f"{stop.epoch_detail:.2f} of {stop.epochs}{where}; run again to continue")
        raise SystemExit(EXIT_TIME_BUDGET) from None
    except Exception as err:
        if several:
            distributed.abort(comm, err)
        raise
    distributed.wait(comm)  # the other ranks sleep here while rank 0 sweeps and times
    if not distributed.is_root(comm):
        raise SystemExit(0)
    if infeasible:
        raise SystemExit("error: " + "\nerror: ".join(infeasible))
    return summary


def cli():
    """The ``branchynet-run`` command: exit status 0 on success."""
    sys.exit(0 if main() else 1)


if __name__ == "__main__":
    cli()
