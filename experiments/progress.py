"""Where a runner's results folder stands: for each training stage, the epochs done (a
stop at the time budget included), the learning curve so far and the training time as
logged; then which of the later steps (exit outputs, timing, tables) are written.

    python -m experiments.progress results/cpu-resnet110_cifar10-converged

Reads only the folder (``config.json``, ``<stage>/log``, the snapshots' names and the
result files): no data, no network, nothing written. For a long run stopped at its
``--time-budget``, this is what to report before continuing it.
"""
import argparse
import json
import os
import sys

from branchynet.distributed import snapshots

STAGES = (("baseline", "baseline_epochs"), ("branchynet", "branchy_epochs"))
SHOWN = 5  # learning-curve points shown per stage (the latest)


def stage_progress(folder, stage, epochs, config):
    """One stage's state as a dict: ``epochs`` planned, ``epoch`` reached (fractional at a
    mid-epoch snapshot), ``done`` (its weights saved), ``snapshot``, ``log`` (Chainer's
    per-epoch records) and ``hours`` (the trainer's elapsed time at the last record)."""
    path = os.path.join(folder, stage)
    log = []
    if os.path.isfile(os.path.join(path, "log")):
        with open(os.path.join(path, "log"), encoding="utf-8") as f:
            log = json.load(f)
    done = os.path.isfile(os.path.join(folder, f"{stage}.npz"))
    latest = (snapshots(path) or [None])[-1]
    epoch = log[-1]["epoch"] if log else 0
    if done:
        epoch = epochs
    elif latest and "_iter_" in latest:
        # A stop during an epoch: iteration x global batch / training images (Chainer's
        # epoch_detail, each rank holding its share).
        iteration = int(latest.rpartition("_iter_")[2])
        batch = config.get("global_batch_size") or config["batch_size"]
        epoch = iteration * batch / config["samples"]["train"]
    return {"stage": stage, "epochs": epochs, "epoch": epoch, "done": done,
            "snapshot": latest, "log": log,
            "hours": log[-1]["elapsed_time"] / 3600 if log else 0.0}


def progress(folder):
    """The state of every training stage of ``folder`` and which result files exist."""
    config_path = os.path.join(folder, "config.json")
    if not os.path.isfile(config_path):
        raise ValueError(f"{folder} has no config.json: not a folder of python -m "
                         "experiments.run (give the folder the runner's --out named)")
    with open(config_path, encoding="utf-8") as f:
        config = json.load(f)
    stages = [stage_progress(folder, stage, config[key], config) for stage, key in STAGES]
    names = set(os.listdir(folder))
    written = {"exit outputs": "exit_outputs.npz" in names,
               "timing": any(n.startswith("timing_") for n in names),
               "tables": "summary.json" in names}
    return config, stages, written


def _curve(log, last=SHOWN):
    """Lines 'epoch 2: 52.20' (every exit's test accuracy, %) for the last ``last``
    evaluated epochs of ``log``, and how many earlier ones there are."""
    keys = sorted({k for record in log for k in record if k.startswith("test/main/accuracy/")})
    evaluated = [r for r in log if any(k in r for k in keys)]
    lines = [f"    epoch {r['epoch']}: " + " / ".join(
        f"{100 * r[k]:.2f}" if k in r else "-" for k in keys) for r in evaluated[-last:]]
    earlier = len(evaluated) - len(lines)
    names = " / ".join(k.rsplit("/", 1)[1] for k in keys)
    return names, lines, earlier


def describe(folder):
    """The report ``python -m experiments.progress`` prints, as lines."""
    config, stages, written = progress(folder)
    ranks = config.get("ranks") or 1
    batch = config.get("global_batch_size") or config["batch_size"]
    curve = config.get("learning_curve") or {}
    lines = [f"{folder}: {config.get('title', config['network'])} on {config['dataset']}, "
             f"{config['baseline_epochs']} + {config['branchy_epochs']} epochs, batch "
             f"{batch}" + (f" on {ranks} processes" if ranks > 1 else "")]
    for s in stages:
        if s["done"]:
            state = f"done, {s['epochs']} epoch{'s' if s['epochs'] != 1 else ''}"
        elif s["epoch"] == 0 and not s["snapshot"]:
            lines.append(f"{s['stage']}: not started")
            continue
        else:
            where = f", snapshot {s['stage']}/{s['snapshot']}" if s["snapshot"] else ""
            state = f"epoch {s['epoch']:.2f} of {s['epochs']}{where}"
        lines.append(f"{s['stage']}: {state}; {len(s['log'])} epoch(s) logged in "
                     f"{s['hours']:.2f} h of training as logged (evaluations included)")
        if s["log"] and not s["done"]:
            left = (s["epochs"] - s["epoch"]) * s["hours"] / len(s["log"])
            lines.append(f"  about {left:.1f} h left in this stage at its logged rate")
        names, rows, earlier = _curve(s["log"])
        if rows:
            samples = curve.get("test_samples")
            on = f"the first {samples:,} test images" if samples else "the test set"
            before = f"; {earlier} earlier in {s['stage']}/log" if earlier else ""
            lines.append(f"  test accuracy (%) on {on}, {names}{before}:")
            lines.extend(rows)
    lines.append("then: " + ", ".join(f"{name} {'written' if there else 'not yet'}"
                                      for name, there in written.items()))
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m experiments.progress", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", help="results folders of experiments.run")
    args = parser.parse_args(argv)
    for folder in args.folders:
        try:
            print("\n".join(describe(folder)))
        except ValueError as err:
            parser.exit(2, f"{parser.prog}: error: {err}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
