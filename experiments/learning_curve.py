"""Learning curves of a results folder: accuracy per epoch of every exit, both stages.

    python -m experiments.learning_curve results/cpu-lenet_mnist-paper   # -> learning_curve.png
    python -m experiments.learning_curve DIR --out curve.png --table      # also print the numbers

Reads the Chainer logs ``DIR/baseline/log`` and ``DIR/branchynet/log`` (one entry per
finished epoch) and draws, on one figure, the training accuracy of every exit
(``main/accuracy/exitK``: the running mean over the epoch's batches, in training mode,
augmented, with dropout) dashed, and the test accuracy (``test/main/accuracy/exitK``:
every test sample after the epoch, in inference mode; ``branchynet.training.CurveEvaluator``)
solid. The joint stage's epochs follow the baseline's. Logs written before the test
evaluation existed have no test accuracy: then only the training curves are drawn, and the
title says so. The runner (``experiments.run``) draws it whenever training stops.
"""
import argparse
import os
import sys

from branchynet.io import atomic_path, read_json

STAGES = ("baseline", "branchynet")
FILENAME = "learning_curve.png"
TRAIN, TEST = "main/accuracy/", "test/main/accuracy/"


def read_logs(folder):
    """Stage -> its log entries (an empty list for a stage not started)."""
    logs = {}
    for stage in STAGES:
        path = os.path.join(folder, stage, "log")
        logs[stage] = read_json(path) if os.path.exists(path) else []
    return logs


def curves(folder):
    """The curves of ``folder``: a list of dicts (stage, split 'train' or 'test', exit name,
    epochs on the common axis, accuracies in percent), and the joint stage's offset."""
    logs = read_logs(folder)
    config_path = os.path.join(folder, "config.json")
    config = read_json(config_path) if os.path.exists(config_path) else {}
    logged = max((e["epoch"] for e in logs["baseline"]), default=0)
    offset = config.get("baseline_epochs", logged)
    found = []
    for stage in STAGES:
        shift = offset if stage == "branchynet" else 0
        for split, prefix in (("train", TRAIN), ("test", TEST)):
            exits = sorted({key[len(prefix):] for entry in logs[stage] for key in entry
                            if key.startswith(prefix)})
            for name in exits:
                points = [(e["epoch"] + shift, 100 * e[prefix + name]) for e in logs[stage]
                          if prefix + name in e]
                found.append({"stage": stage, "split": split, "exit": name,
                              "epochs": [p[0] for p in points],
                              "accuracy": [p[1] for p in points]})
    return found, offset, config


def plot_learning_curve(folder, path=None):
    """Draw ``folder``'s learning curves to ``path`` (default ``folder/learning_curve.png``),
    atomically; returns the path, or None when the folder has no training log yet."""
    found, offset, config = curves(folder)
    if not found:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker  # noqa: F401
    path = path or os.path.join(folder, FILENAME)
    exits = sorted({c["exit"] for c in found}, key=lambda n: int(n[len("exit"):] or 0))
    colours = {name: plt.get_cmap("tab10")(i) for i, name in enumerate(exits)}
    has_test = any(c["split"] == "test" for c in found)
    fig, ax = plt.subplots(figsize=(9.5, 5))
    first = {(c["stage"], c["exit"]): c["epochs"][0] for c in found if c["split"] == "train"}
    for c in found:
        stage = "baseline" if c["stage"] == "baseline" else "B-net"
        since = c["epochs"][0]
        late = c["split"] == "test" and since > first.get((c["stage"], c["exit"]), since)
        ax.plot(c["epochs"], c["accuracy"], color=colours[c["exit"]],
                linestyle="-" if c["split"] == "test" else "--",
                marker="o" if c["stage"] == "baseline" else ".", markersize=4,
                label=f"{stage} {c['exit']} {c['split']}"
                + (f" (from epoch {since})" if late else ""))
    if any(c["stage"] == "branchynet" for c in found):
        ax.axvline(offset + 0.5, color="grey", linestyle=":", linewidth=1)
        ax.text(offset + 0.5, ax.get_ylim()[1], " joint training", color="grey",
                va="top", fontsize=8)
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_xlabel("epoch (baseline, then joint B-net training)")
    ax.set_ylabel("accuracy (%)")
    ax.grid(alpha=0.3)
    name = config.get("network", os.path.basename(os.path.normpath(folder)))
    what = config.get("data_name", config.get("dataset", ""))
    test = config.get("learning_curve", {}).get("test_samples")
    ax.set_title(f"{name} {what}: accuracy per epoch\n{subtitle(has_test, test)}", fontsize=9)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return path


def subtitle(has_test, test_samples):
    """What the lines are (the title's second line)."""
    if not has_test:
        return ("training accuracy only (running mean over each epoch):\nthese logs have no "
                "test accuracy")
    return (f"dashed: training (running mean over the epoch, training mode)\nsolid: "
            f"{test_samples or 'the'} test samples after the epoch (inference mode)")


def table(folder):
    """The curves as text: one line per epoch, one column per stage, split and exit."""
    found, _, _ = curves(folder)
    columns = found
    epochs = sorted({e for c in columns for e in c["epochs"]})
    header = ["epoch"] + [f"{c['stage'][:4]} {c['split']} {c['exit']}" for c in columns]
    lines = ["  ".join(f"{h:>18}" for h in header)]
    for epoch in epochs:
        cells = [str(epoch)]
        for c in columns:
            value = dict(zip(c["epochs"], c["accuracy"])).get(epoch)
            cells.append("" if value is None else f"{value:.2f}")
        lines.append("  ".join(f"{v:>18}" for v in cells))
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m experiments.learning_curve",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", help="a results folder (with baseline/log, branchynet/log)")
    parser.add_argument("--out", help=f"the PNG to write (default: FOLDER/{FILENAME})")
    parser.add_argument("--table", action="store_true", help="also print the accuracies")
    args = parser.parse_args(argv)
    if not os.path.isdir(args.folder):
        parser.error(f"{args.folder!r} is not a folder")
    path = plot_learning_curve(args.folder, args.out)
    if path is None:
        parser.error(f"{args.folder} has no training log (baseline/log or branchynet/log): "
                     f"nothing to draw yet")
    if args.table:
        print(table(args.folder))
    print(f"learning curve: {path}")
    return path


if __name__ == "__main__":
    main()
    sys.exit(0)
