"""Learning curves of a results folder: accuracy per epoch of every exit, both stages.

    python -m experiments.learning_curve results/cpu-lenet_mnist-paper   # -> learning_curve.png
    python -m experiments.learning_curve DIR --out curve.png --table      # also print the numbers

Reads the Chainer logs ``DIR/baseline/log`` and ``DIR/branchynet/log`` (one entry per
finished epoch) and draws, on one figure, the training accuracy of every exit
(``main/accuracy/exitK``: the running mean over the epoch's batches, in training mode,
augmented, with dropout) dashed, and the test accuracy (``test/main/accuracy/exitK``:
every test sample after the epoch, in inference mode; ``branchynet.training.CurveEvaluator``)
solid. The joint stage's epochs follow the baseline's, and a baseline started from another
folder's weights (``--baseline-from``) counts on from that folder's epochs; every stage and
exit has its own colour. The lower panel zooms on the band the final test accuracies lie
in (the differences that matter there are tenths of a point). Logs written before the test
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
    start = started_after(config)
    offset = start + config.get("baseline_epochs", logged)
    found = []
    for stage in STAGES:
        shift = offset if stage == "branchynet" else start
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


def started_after(config):
    """Baseline epochs the folder's baseline had before its own (``--baseline-from``: the
    source folder's), 0 for one trained from a fresh initialisation."""
    record = config.get("baseline_from_record") or {}
    return (record.get("folder_settings") or {}).get("baseline_epochs") or 0


def plot_learning_curve(folder, path=None):
    """Draw ``folder``'s learning curves to ``path`` (default ``folder/learning_curve.png``),
    atomically; returns the path, or None when the folder has no training log yet."""
    fig = learning_curve_figure(folder)
    if fig is None:
        return None
    import matplotlib.pyplot as plt
    path = path or os.path.join(folder, FILENAME)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return path


def learning_curve_figure(folder):
    """The learning-curve figure of ``folder`` (full range above, the zoomed band below),
    or None when the folder has no training log yet."""
    found, offset, config = curves(folder)
    if not found:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker  # noqa: F401
    lines = sorted({(c["stage"], c["exit"]) for c in found},
                   key=lambda k: (STAGES.index(k[0]), int(k[1][len("exit"):] or 0)))
    palette = ("C3", "C0", "C1", "C2", "C4", "C5", "C6", "C8", "C9", "C7")
    colours = {key: palette[i % len(palette)] for i, key in enumerate(lines)}
    has_test = any(c["split"] == "test" for c in found)
    fig, (ax, zoom) = plt.subplots(2, 1, figsize=(9.5, 8), sharex=True,
                                   gridspec_kw={"height_ratios": [1, 1.2]})
    first = {(c["stage"], c["exit"]): c["epochs"][0] for c in found if c["split"] == "train"}
    for c in found:
        stage = "baseline" if c["stage"] == "baseline" else "B-net"
        since = c["epochs"][0]
        late = c["split"] == "test" and since > first.get((c["stage"], c["exit"]), since)
        for axis in (ax, zoom):
            axis.plot(c["epochs"], c["accuracy"], color=colours[(c["stage"], c["exit"])],
                      linestyle="-" if c["split"] == "test" else "--",
                      marker="o" if c["stage"] == "baseline" else ".", markersize=3,
                      label=f"{stage} {c['exit']} {c['split']}"
                      + (f" (from epoch {since})" if late else ""))
    zoom.set_ylim(*zoom_band(found))
    for axis in (ax, zoom):
        if any(c["stage"] == "branchynet" for c in found):
            axis.axvline(offset + 0.5, color="grey", linestyle=":", linewidth=1)
            axis.text(offset + 0.5, axis.get_ylim()[1], " joint training", color="grey",
                      va="top", fontsize=8)
        axis.set_ylabel("accuracy (%)")
        axis.grid(alpha=0.3)
    zoom.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    start = started_after(config)
    zoom.set_xlabel("epoch (baseline, then joint B-net training)" if not start else
                    f"epoch (baseline from the {start} epochs of the weights it started "
                    f"from, then joint B-net training)")
    zoom.set_title("zoomed on the final test accuracies", fontsize=9)
    name = config.get("network", os.path.basename(os.path.normpath(folder)))
    what = config.get("data_name", config.get("dataset", ""))
    test = config.get("learning_curve", {}).get("test_samples")
    ax.set_title(f"{name} {what}: accuracy per epoch\n{subtitle(has_test, test)}", fontsize=9)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.tight_layout()
    return fig


def zoom_band(found):
    """The lower panel's accuracy range: around the last two accuracies of every test curve
    (every training curve when there is none; the last step shows where a curve is going)
    and the highest of those curves over the last half of the epochs drawn, with a margin
    of a quarter of that span (at least 0.1)."""
    split = "test" if any(c["split"] == "test" for c in found) else "train"
    curves = [c for c in found if c["split"] == split and c["accuracy"]]
    epochs = [e for c in curves for e in c["epochs"]]
    middle = (min(epochs) + max(epochs)) / 2
    late = [a for c in curves for e, a in zip(c["epochs"], c["accuracy"]) if e >= middle]
    finals = [a for c in curves for a in c["accuracy"][-2:]]
    low = min(finals)
    high = max(late + finals)
    margin = max(0.25 * (high - low), 0.1)
    return low - margin, min(high + margin, 100 + margin / 4)


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
