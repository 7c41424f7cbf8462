"""How deep should a side branch be? Its depth against the final exit's accuracy (Fig. 5).

    python -m experiments.branch_study --from-baseline results/cpu-alexnet_cifar10-converged \\
        --branch 1 --conv-layers 0 1 2 3 4 --seeds 2 --epochs 2 --jobs 2 \\
        --out results/fig5-alexnet_cifar10
    python -m experiments.branch_study --measure results/fig5-alexnet_cifar10   # batch-1 ms
    python -m experiments.branch_study --from-results results/fig5-alexnet_cifar10

The paper (section V.C) trains B-AlexNet with only its first side branch and 0-4
convolutional layers in it, one run per depth, no control, and reads an optimum depth
that improves the main exit. Here every variant keeps only side branch N, rebuilt with k
convolutions of the kind it has (``branchynet.variants``), takes its trunk and final
classifier from the same trained baseline (a runner folder's ``baseline.npz``) and is
trained jointly with that folder's joint-stage recipe for E epochs, once per seed. The
**control** is the baseline trained the same E epochs with the same recipe and no branch:
it separates "the branch helps the main exit" from "more training helps". A seed sets the
branch's initialisation, the batch order and the augmentation.

The folder holds one study (``study.json``; settings that change the training must
match, more depths and seeds may be added later): ``runs/<run>/`` (Chainer's log; a
snapshot while unfinished, so ``--time-budget`` stops resume exactly),
``runs/<run>.npz`` (weights), ``runs/<run>.exits.npz`` (every exit's prediction and
entropy on the test set: the table and figure derive from these alone),
``timing_cpu.json`` (``--measure``), ``table.csv``/``table.json``, ``fig5.png``. Runs are
``k<k>-seed<s>``, ``control-seed<s>`` and ``start`` (the baseline as it was, evaluated).
A ``.gitignore`` keeps the weights of seeds other than the first out of git; a snapshot of an
unfinished run is meant to be committed with its log, so a clone continues the study.

Exit status: 0 done; 1 a --from-results mismatch; 2 bad input; 3 --time-budget reached
(run the same command again to continue).
"""
import argparse
import concurrent.futures
import json
import multiprocessing
import os
import sys
import time

import branchynet  # noqa: F401  (compatibility fixes before chainer)
import chainer
import numpy as np

from branchynet.datasets import DatasetError, info_differences, load_dataset
from branchynet.flops import exit_path_costs
from branchynet.io import atomic_path, read_json, write_json, write_text
from branchynet.net import BranchyNet
from branchynet.provenance import file_sha256, machine_key
from branchynet.report import machine_info, write_csv
from branchynet.routing import entropy
from branchynet.threads import set_blas_threads, timing_threads
from branchynet.timing import EndToEnd, forced_exit_thresholds, interleave
from branchynet.training import Recipe, TimeBudgetExhausted, load_weights, train_or_load
from experiments.compare import json_difference
from branchynet.variants import copy_main_branch, one_branch, side_branches, with_conv_layers
from networks import get_network

EXIT_TIME_BUDGET = 3
# Settings that change what a run trains: one study folder holds one value of each.
TRAINING_KEYS = ("network", "branch", "epochs", "batch_size", "lr", "recipe", "loss_weights",
                 "baseline_sha256",
                 "dataset", "dataset_options", "train_limit", "test_limit")
PAPER_SHAPE = ("paper, Fig. 5 (one run per depth, no control, axis 76-78 %): final-exit "
               "accuracy rises to an optimum depth, then falls as layers are added")


class StudyError(ValueError):
    """Settings or folders the study cannot use (exit status 2)."""


# -- settings -------------------------------------------------------------------------------

def study_settings(args):
    """The study's record from the arguments and the baseline's runner folder."""
    folder = args.from_baseline
    config_path, baseline = os.path.join(folder, "config.json"), os.path.join(folder, "baseline.npz")
    for path in (config_path, baseline):
        if not os.path.isfile(path):
            raise StudyError(f"--from-baseline {folder}: no {os.path.basename(path)} there; give "
                             f"a runner folder with a trained baseline (python -m "
                             f"experiments.run ... --out {folder})")
    config = read_json(config_path)
    network = args.network or config["network"]
    if network != config["network"]:
        raise StudyError(f"--network {network} but {folder} holds {config['network']}: leave "
                         f"--network out, or give that network's folder")
    spec = get_network(network)
    n_side = side_branches(spec.build())
    if not 1 <= args.branch <= n_side:
        raise StudyError(f"--branch {args.branch}: {network} has side branches 1 to {n_side}")
    try:
        with_conv_layers(spec.build(), args.branch, 0)
    except ValueError as err:
        raise StudyError(f"--branch {args.branch}: {err}") from None
    recipe = dict(config.get("recipe") or {})
    weights = config.get("loss_weights")  # the kept exits' weights of the joint stage
    weights = None if weights is None else [weights[args.branch - 1], weights[-1]]
    return {"network": network, "branch": args.branch, "epochs": args.epochs,
            "batch_size": config["batch_size"], "lr": config["lr"], "recipe": recipe,
            "loss_weights": weights,
            "baseline": os.path.abspath(baseline),  # made relative to the study folder
            "baseline_sha256": file_sha256(baseline),
            "baseline_accuracy_note": "run 'start' below: the baseline as trained, evaluated",
            "dataset": config["dataset"], "dataset_options": config.get("dataset_options", {}),
            "train_limit": config.get("train_limit", 0), "test_limit": config.get("test_limit", 0),
            "data_record": config.get("data_record"), "input_shape": config["input_shape"],
            "conv_layers": sorted(set(args.conv_layers)), "seeds": list(range(args.seeds))}


def check_folder(out, settings):
    """Refuse to mix two studies in one folder; add new depths and seeds to the record."""
    path = os.path.join(out, "study.json")
    settings["baseline"] = os.path.relpath(settings["baseline"], out)
    if os.path.exists(path):
        old = read_json(path)
        changed = [k for k in TRAINING_KEYS if old.get(k) != settings.get(k)]
        if changed:
            raise StudyError(f"{out} holds a study with other settings ({', '.join(changed)}: "
                             f"{[old.get(k) for k in changed]} there, "
                             f"{[settings.get(k) for k in changed]} now). Use another --out.")
        settings["conv_layers"] = sorted(set(old["conv_layers"]) | set(settings["conv_layers"]))
        settings["seeds"] = sorted(set(old["seeds"]) | set(settings["seeds"]))
    os.makedirs(os.path.join(out, "runs"), exist_ok=True)
    write_json(path, settings)
    write_text(os.path.join(out, ".gitignore"),
               "# the weights of every seed but the first (their exit outputs are kept)\n"
               "runs/*-seed[1-9]*.npz\n!runs/*.exits.npz\n")


def load_data(settings, data_dir):
    data = load_dataset(settings["dataset"], data_dir, seed=0, **settings["dataset_options"])
    recorded = settings.get("data_record")
    if recorded:
        what = info_differences(recorded, data.info)
        if what:
            raise StudyError(f"the data differ from those the baseline was trained on: "
                             f"{'; '.join(what[:4])}")
    if settings["train_limit"]:
        data.train_x, data.train_y = (data.train_x[:settings["train_limit"]],
                                      data.train_y[:settings["train_limit"]])
    if settings["test_limit"]:
        data.test_x, data.test_y = (data.test_x[:settings["test_limit"]],
                                    data.test_y[:settings["test_limit"]])
    return data


# -- networks -------------------------------------------------------------------------------

def run_names(settings):
    """Every run of the study, in training order: each seed's depths and its control."""
    return [name for seed in settings["seeds"]
            for name in [f"k{k}-seed{seed}" for k in settings["conv_layers"]]
            + [f"control-seed{seed}"]]


def parse_run(name):
    """``(k, seed)`` of a run name; k is None for the control and for 'start'."""
    if name == "start":
        return None, None
    kind, seed = name.split("-seed")
    return (None if kind == "control" else int(kind[1:])), int(seed)


def build(out, settings, name, sample):
    """The run's network with the baseline's trunk and final classifier (its branch
    initialised from NumPy's generator, seeded by the run's seed)."""
    spec = get_network(settings["network"])
    k, seed = parse_run(name)
    np.random.seed(seed or 0)
    path = os.path.join(out, settings["baseline"])
    if not os.path.isfile(path):
        raise StudyError(f"the study's baseline {path} is missing (study.json: baseline)")
    baseline = load_weights(path, BranchyNet(spec.build(), main_only=True))
    if k is None:
        return baseline
    layers = with_conv_layers(one_branch(spec.build(), settings["branch"]), 1, k)
    net = BranchyNet(layers)
    net.predict_all_exits(sample)  # sizes the lazy layers of the branch
    return copy_main_branch(baseline, net)


def exit_outputs(net, x, batch_size=500):
    """Every exit's prediction and entropy on ``x`` (exits x samples)."""
    logits = [net.predict_all_exits(x[i:i + batch_size]) for i in range(0, len(x), batch_size)]
    logits = [np.concatenate([batch[n] for batch in logits]) for n in range(net.n_exits)]
    return (np.stack([z.argmax(axis=1) for z in logits]).astype(np.int16),
            np.stack([entropy(z) for z in logits]).astype(np.float32))


# -- training -------------------------------------------------------------------------------

_DATA = {}  # the dataset, inherited by the forked workers


def _train_run(out, settings, name, deadline):
    """Train (or resume) one run and evaluate it; in a worker process."""
    set_blas_threads(1)
    data = _DATA["data"]
    folder = os.path.join(out, "runs", name)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "train.out"), "a") as stream:
        os.dup2(stream.fileno(), 1)  # Chainer's PrintReport: this run's own file
        os.dup2(stream.fileno(), 2)
    net = build(out, settings, name, data.test_x[:1])
    weights = os.path.join(out, "runs", f"{name}.npz")
    start = time.perf_counter()
    if name != "start":
        recipe = Recipe(lr=settings["lr"], **settings["recipe"])
        k, seed = parse_run(name)
        weights_of_exits = settings["loss_weights"]
        if weights_of_exits is not None and k is None:
            weights_of_exits = weights_of_exits[-1:]
        try:
            train_or_load(net, weights, data.train_x, data.train_y, settings["epochs"],
                          settings["batch_size"], chainer.get_device("@numpy"),
                          log=print, seed=seed, weights=weights_of_exits, recipe=recipe,
                          stage="branchynet",
                          deadline=deadline, progress=False)
        except TimeBudgetExhausted as stop:
            return name, "stopped", stop.epoch_detail, time.perf_counter() - start
        for leftover in os.listdir(folder):
            if leftover.startswith("snapshot_"):
                os.remove(os.path.join(folder, leftover))
    predictions, scores = exit_outputs(net, data.test_x)
    with atomic_path(os.path.join(out, "runs", f"{name}.exits.npz")) as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, predictions=predictions, entropy=scores,
                                labels=data.test_y.astype(np.int16),
                                weights_sha256=np.array(file_sha256(weights) if name != "start"
                                                        else settings["baseline_sha256"]))
    return name, "done", float((predictions[-1] == data.test_y).mean()), time.perf_counter() - start


def train(out, settings, data, jobs, deadline, log=print):
    """Train every run not yet evaluated, ``jobs`` at a time; True when all are done."""
    names = ["start"] + run_names(settings)
    todo = [n for n in names if not os.path.exists(os.path.join(out, "runs", f"{n}.exits.npz"))]
    log(f"{len(names) - len(todo)} of {len(names)} runs done; training {len(todo)} "
        f"({jobs} at a time, each one BLAS thread; logs in {out}/runs/<run>/train.out)")
    _DATA["data"] = data
    context = multiprocessing.get_context("fork")
    finished = True
    with concurrent.futures.ProcessPoolExecutor(jobs, mp_context=context) as pool:
        futures = [pool.submit(_train_run, out, settings, n, deadline) for n in todo]
        for future in concurrent.futures.as_completed(futures):
            name, status, value, seconds = future.result()
            if status == "stopped":
                finished = False
                log(f"[{name}] stopped at the time budget after epoch {value:.2f}")
            else:
                log(f"[{name}] final-exit accuracy {100 * value:.2f}% ({seconds:.0f} s)")
    return finished


# -- measurement ----------------------------------------------------------------------------

def measure(out, data, samples, rounds, log=print):
    """Batch-size-1 ms of the first seed's exit paths, interleaved, into timing_cpu.json."""
    derive(out)  # refuses an unfinished study
    settings = read_json(os.path.join(out, "study.json"))
    seed = settings["seeds"][0]
    x = data.test_x[:samples]
    variants = {}
    start = build(out, settings, "start", x[:1])
    variants["baseline"] = EndToEnd(start, x, [])
    for k in settings["conv_layers"]:
        name = f"k{k}-seed{seed}"
        net = load_weights(os.path.join(out, "runs", f"{name}.npz"), build(out, settings, name, x[:1]))
        for n in range(net.n_exits):
            variants[f"k{k}/exit{n + 1}"] = EndToEnd(net, x, forced_exit_thresholds(n, net.n_exits))
    log(f"timing {len(variants)} paths on {samples} test samples, {rounds} interleaved rounds")
    with timing_threads():
        timings = interleave(variants, samples, rounds)
    device = chainer.get_device("@numpy")
    record = {"command": " ".join(sys.argv), "key": machine_key(device),
              "machine": machine_info(device), "seed": seed, "weights": {
                  k: file_sha256(os.path.join(out, "runs", f"k{k}-seed{seed}.npz"))
                  for k in settings["conv_layers"]}, **timings.to_json()}
    write_json(os.path.join(out, "timing_cpu.json"), record)
    return record


# -- table and figure -----------------------------------------------------------------------

def _accuracy(out, name):
    with np.load(os.path.join(out, "runs", f"{name}.exits.npz")) as f:
        return 100 * (f["predictions"] == f["labels"][None]).mean(axis=1)


def derive(out):
    """The study's table (one row per depth, then the control and the starting point) from
    its exit outputs, the networks' structure and the timing record, if any."""
    settings = read_json(os.path.join(out, "study.json"))
    missing = [n for n in ["start"] + run_names(settings)
               if not os.path.exists(os.path.join(out, "runs", f"{n}.exits.npz"))]
    if missing:
        raise StudyError(f"{out}: {len(missing)} run(s) not finished ({', '.join(missing[:4])}"
                         f"{' ...' if len(missing) > 4 else ''}): run the study's command again "
                         f"to continue them")
    spec = get_network(settings["network"])
    timing_path = os.path.join(out, "timing_cpu.json")
    timing = read_json(timing_path) if os.path.exists(timing_path) else None
    shape = tuple(settings["input_shape"])
    rows = []
    for k in settings["conv_layers"]:
        runs = [f"k{k}-seed{s}" for s in settings["seeds"]]
        accuracies = np.array([_accuracy(out, run) for run in runs])  # seeds x exits
        net = BranchyNet(with_conv_layers(one_branch(spec.build(), settings["branch"]), 1, k))
        net.predict_all_exits(np.zeros((1,) + shape, np.float32))
        costs = exit_path_costs(net, shape)
        row = {"run": f"k = {k}", "conv_layers": k,
               "final_accuracy": float(accuracies[:, -1].mean()),
               "final_accuracy_seeds": accuracies[:, -1].tolist(),
               "exit1_accuracy": float(accuracies[:, 0].mean()),
               "exit1_accuracy_seeds": accuracies[:, 0].tolist(),
               "exit1_macs": int(costs["macs"][0]), "final_macs": int(costs["macs"][-1])}
        if timing is not None:
            for n, key in ((0, "exit1_ms"), (net.n_exits - 1, "final_ms")):
                values = np.asarray(timing["rounds_ms"][f"k{k}/exit{n + 1}"])
                row[key] = float(np.median(values))
                row[key + "_range"] = [float(values.min()), float(values.max())]
        rows.append(row)
    control = np.array([_accuracy(out, f"control-seed{s}")[-1] for s in settings["seeds"]])
    rows.append({"run": "control (no branch)", "conv_layers": None,
                 "final_accuracy": float(control.mean()), "final_accuracy_seeds": control.tolist()})
    rows.append({"run": "start (baseline as trained)", "conv_layers": None,
                 "final_accuracy": float(_accuracy(out, "start")[-1]),
                 "final_accuracy_seeds": [float(_accuracy(out, "start")[-1])]})
    if timing is not None:
        values = np.asarray(timing["rounds_ms"]["baseline"])
        rows[-1]["final_ms"] = float(np.median(values))
        rows[-1]["final_ms_range"] = [float(values.min()), float(values.max())]
    return {"settings": {k: settings[k] for k in TRAINING_KEYS + ("conv_layers", "seeds")},
            "timing": None if timing is None else {
                "samples": timing["samples"], "rounds": timing["rounds"],
                "cpu": timing["machine"].get("cpu"), "load": timing.get("load")},
            "rows": rows}


def write_report(out, table):
    """table.json, table.csv and fig5.png from a derived table."""
    write_json(os.path.join(out, "table.json"), table)
    columns = ["run", "final_accuracy", "final_accuracy_seeds", "exit1_accuracy",
               "exit1_accuracy_seeds", "exit1_macs", "exit1_ms", "final_ms"]
    write_csv(os.path.join(out, "table.csv"),
              [{c: _cell(row.get(c)) for c in columns} for row in table["rows"]], columns)
    plot(out, table)


def _cell(value):
    if isinstance(value, list):
        return " / ".join(f"{v:.2f}" for v in value)
    if isinstance(value, float):
        return f"{value:.3f}"
    return "" if value is None else value


def format_table(table):
    """The derived table as aligned text: one row per depth, the control and the start."""
    header = ("run", "final exit %", "seeds", "exit 1 %", "seeds", "exit-1 M MACs",
              "exit-1 ms", "final ms")
    lines = [header]
    for row in table["rows"]:
        macs = row.get("exit1_macs")
        lines.append((row["run"], _cell(row["final_accuracy"]), _cell(row["final_accuracy_seeds"]),
                      _cell(row.get("exit1_accuracy")), _cell(row.get("exit1_accuracy_seeds")),
                      "" if macs is None else f"{macs / 1e6:.1f}", _cell(row.get("exit1_ms")),
                      _cell(row.get("final_ms"))))
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(str(v).ljust(w) for v, w in zip(line, widths)).rstrip()
                     for line in lines)


def plot(out, table):
    """Draw the figure into ``out``/fig5.png."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig = figure(table)
    with atomic_path(os.path.join(out, "fig5.png")) as tmp:
        fig.savefig(tmp, dpi=130, format="png")
    plt.close(fig)


def figure(table):
    """Fig. 5 from a derived table: final-exit accuracy against depth beside the control;
    exit 1's accuracy and cost."""
    import matplotlib.pyplot as plt
    s = table["settings"]
    rows = [r for r in table["rows"] if r["conv_layers"] is not None]
    control, start = table["rows"][-2], table["rows"][-1]
    ks = [r["conv_layers"] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11.5, 5.0))
    for r in rows:
        left.scatter([r["conv_layers"]] * len(r["final_accuracy_seeds"]),
                     r["final_accuracy_seeds"], color="tab:blue", alpha=0.45, s=18)
    left.plot(ks, [r["final_accuracy"] for r in rows], "o-", color="tab:blue",
              label=f"one-branch B-net, mean of {len(s['seeds'])} seeds (dots: each)")
    low, high = min(control["final_accuracy_seeds"]), max(control["final_accuracy_seeds"])
    left.axhspan(low, high, color="tab:orange", alpha=0.15)
    left.axhline(control["final_accuracy"], color="tab:orange",
                 label="control: baseline, same extra epochs, no branch (band: seeds)")
    left.axhline(start["final_accuracy"], color="grey", ls=":", label="baseline before the extra epochs")
    left.set_xticks(ks)
    left.set_xlabel(f"convolutional layers in branch {s['branch']}")
    left.set_ylabel("final-exit accuracy (%)")
    left.set_title(f"{s['network']}: {s['epochs']} joint epoch(s) from one baseline", fontsize=10)
    left.legend(fontsize=7.5, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=1,
                frameon=False)
    right.plot(ks, [r["exit1_accuracy"] for r in rows], "s-", color="tab:green",
               label="exit-1 accuracy (mean)")
    right.set_xticks(ks)
    right.set_xlabel(f"convolutional layers in branch {s['branch']}")
    right.set_ylabel("exit-1 accuracy (%)", color="tab:green")
    cost = right.twinx()
    if all("exit1_ms" in r for r in rows):
        cost.errorbar(ks, [r["exit1_ms"] for r in rows],
                      yerr=np.array([[r["exit1_ms"] - r["exit1_ms_range"][0],
                                      r["exit1_ms_range"][1] - r["exit1_ms"]] for r in rows]).T,
                      fmt="^--", color="tab:red", capsize=3, label="exit-1 path, ms at batch 1")
        cost.set_ylabel("exit-1 path: ms at batch size 1 (median, range)", color="tab:red")
        y = [r["exit1_ms"] for r in rows]
    else:
        cost.plot(ks, [r["exit1_macs"] / 1e6 for r in rows], "^--", color="tab:red")
        cost.set_ylabel("exit-1 path: M multiply-adds", color="tab:red")
        y = [r["exit1_macs"] / 1e6 for r in rows]
    for k, value, r in zip(ks, y, rows):
        cost.annotate(f"{r['exit1_macs'] / 1e6:.1f} M MACs", (k, value), fontsize=7,
                      textcoords="offset points", xytext=(0, 6), ha="center", color="tab:red")
    right.set_title("exit 1: accuracy and cost", fontsize=10)
    fig.text(0.5, 0.01, PAPER_SHAPE, ha="center", va="bottom", fontsize=7.5, color="dimgrey")
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    return fig


def recompute(out, log=print):
    """Re-derive table.json from the committed files; True if identical. Redraws the figure."""
    table = derive(out)
    committed = read_json(os.path.join(out, "table.json"))
    fresh = json.loads(json.dumps(table))
    difference = json_difference(committed, fresh)
    if difference:
        log(f"{out}/table.json differs from what its exit outputs and timing record give: "
            f"{difference}")
        return False
    plot(out, table)
    log(f"{out}: table.json re-derived identically; fig5.png redrawn")
    return True


# -- command line ---------------------------------------------------------------------------

def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m experiments.branch_study", description=__doc__.split("\n\n")[1],
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 2)[2])
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--from-baseline", metavar="DIR",
                      help="runner folder with the trained baseline (baseline.npz, config.json)")
    what.add_argument("--measure", metavar="DIR", help="time the study in DIR at batch size 1")
    what.add_argument("--from-results", metavar="DIR",
                      help="re-derive DIR's table and figure from its committed files")
    parser.add_argument("--network", help="the network (default: the baseline folder's)")
    parser.add_argument("--branch", type=int, default=1, help="the side branch studied (1-based)")
    parser.add_argument("--conv-layers", type=int, nargs="+", default=[0, 1, 2, 3, 4],
                        metavar="K", help="depths of the branch (default: 0 1 2 3 4)")
    parser.add_argument("--seeds", type=int, default=2, help="seeds 0 .. S-1 per depth (default 2)")
    parser.add_argument("--epochs", type=int, default=2,
                        help="joint epochs of every run and of the control (default 2)")
    parser.add_argument("--jobs", type=int, default=1, help="runs trained at once (default 1)")
    parser.add_argument("--out", help="study folder (default results/branch_study-NETWORK-bN)")
    parser.add_argument("--data-dir", help="dataset folder (default $BRANCHYNET_DATA)")
    parser.add_argument("--time-budget", type=float, metavar="MINUTES",
                        help="stop cleanly after this many minutes; run again to continue")
    parser.add_argument("--timing-samples", type=int, default=500,
                        help="--measure: first N test samples (default 500)")
    parser.add_argument("--timing-rounds", type=int, default=5,
                        help="--measure: interleaved rounds (default 5)")
    args = parser.parse_args(argv)
    if any(k < 0 for k in args.conv_layers):
        parser.error("--conv-layers must be >= 0")
    for name in ("seeds", "epochs", "jobs", "timing_samples", "timing_rounds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.time_budget is not None and not args.time_budget > 0:
        parser.error("--time-budget must be a positive number of minutes")
    for folder in (args.measure, args.from_results):
        if folder and not os.path.isfile(os.path.join(folder, "study.json")):
            parser.error(f"{folder} holds no study (study.json); make one with --from-baseline")
    return args


def main(argv=None):
    args = parse_args(argv)
    try:
        if args.from_results:
            return 0 if recompute(args.from_results) else 1
        if args.measure:
            settings = read_json(os.path.join(args.measure, "study.json"))
            data = load_data(settings, args.data_dir)
            if args.timing_samples > len(data.test_y):
                raise StudyError(f"--timing-samples {args.timing_samples}: only "
                                 f"{len(data.test_y)} test samples")
            measure(args.measure, data, args.timing_samples, args.timing_rounds)
            table = derive(args.measure)
            write_report(args.measure, table)
            print(format_table(table))
            return 0
        settings = study_settings(args)
        out = args.out or os.path.join(
            "results", f"branch_study-{settings['network']}-b{settings['branch']}")
        data = load_data(settings, args.data_dir)
        check_folder(out, settings)
        deadline = None if args.time_budget is None else time.monotonic() + 60 * args.time_budget
        if not train(out, settings, data, args.jobs, deadline):
            print("stopped at the time budget; run the same command again to continue")
            return EXIT_TIME_BUDGET
        table = derive(out)
        write_report(out, table)
        print(format_table(table))
        print(f"{out}: table.csv, table.json, fig5.png (time the exit paths with --measure {out})")
        return 0
    except (StudyError, DatasetError) as err:
        print(f"python -m experiments.branch_study: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
