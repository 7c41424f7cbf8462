"""Print a Markdown summary of runner results folders (the README's results table).

    python scripts/results_table.py results/cpu-lenet_mnist results/cpu-alexnet_cifar10 ...

One row per folder and device: the training setting, the baseline and the test-set knee
(accuracy, measured batch-size-1 latency as the median of interleaved rounds with its
quartiles, the exits of the samples it was measured on, the end-to-end gain with the range of its per-round values (n.s. when that
range includes 1), the trunk-only gain, exits), multiply-adds per sample, and the training
time per epoch. Everything is read from the
folder's summary.json and config.json, as written by ``python -m experiments.run``.

    python scripts/results_table.py --beside-paper results/cpu-alexnet_cifar10-converged

prints instead, per folder and device, the rows the paper's Table I has (the baseline, the
B-net at Table I's thresholds, and the knee by the stated rule) beside Table I's figures
for that device.
"""
import argparse
import json
import os


def setting(config, summary):
    samples = config["samples"]
    limits = f"{samples['train']:,} train / {samples['test']:,} test"
    return (f"{config['dataset']} ({limits}), batch {config['batch_size']}, "
            f"{config['baseline_epochs']} + {config['branchy_epochs']} epochs")


def epoch_seconds(summary, name):
    record = (summary.get("training") or {}).get(name)
    if not record:
        return "-"
    return f"{record['seconds'] / record['epochs']:.0f} s"


def _time(row):
    """Median ms with the quartiles of the rounds, when the row has them."""
    if row.get("time_q1_ms") is None:
        return f"{row['time_ms']:.3f}"
    return f"{row['time_ms']:.3f} ({row['time_q1_ms']:.3f}-{row['time_q3_ms']:.3f})"


def _gain(row):
    """The gain with the range of its per-round values; n.s. when the range includes 1."""
    if row.get("gain_low") is None:
        return f"{row['gain']:.2f}x"
    return (f"{row['gain']:.2f}x [{row['gain_low']:.2f}-{row['gain_high']:.2f}]"
            + ("" if row.get("gain_significant") else " n.s."))


def _timed_exits(row):
    """The exits of the samples the time was measured on (rows written before they were
    kept: '-')."""
    if not row.get("timed_exit_percent"):
        return "-"
    return " / ".join(f"{p:.1f}" for p in row["timed_exit_percent"])


def rows(folder):
    with open(os.path.join(folder, "summary.json")) as f:
        summary = json.load(f)
    config = summary["config"]
    for tag, device in summary["devices"].items():
        base, knee = device["rows"][0], device["rows"][1]
        yield (f"| {knee['network']} | {setting(config, summary)} | {tag} "
               f"| {base['accuracy']:.2f} | {knee['accuracy']:.2f} "
               f"| {', '.join(f'{t:g}' for t in knee['thresholds'])} "
               f"| {' / '.join(f'{p:.1f}' for p in knee['exit_percent'])} "
               f"| {_time(base)} → {_time(knee)} | {_timed_exits(knee)} | {_gain(knee)} "
               f"| {knee['trunk_gain']:.2f}x "
               f"| {base['macs'] / 1e6:.3g} → {knee['macs'] / 1e6:.3g} "
               f"| {epoch_seconds(summary, 'baseline')} / {epoch_seconds(summary, 'branchynet')} |")


def _paper_figures(row):
    """Table I's accuracy / exits / time / gain, as printed beside a row."""
    exits = ", ".join(f"{p:g}" for p in row[6]) if row[6] else "-"
    gain = f"{row[4]:g}x" if row[4] else "-"
    return f"{row[2]:.2f} / {exits} / {row[3]:g} / {gain}"


def beside_paper(folder):
    """The baseline, paper's-T and knee rows of ``folder`` beside Table I's."""
    from branchynet.paper import NETWORKS, PAPER_T, TABLE_I
    with open(os.path.join(folder, "summary.json")) as f:
        summary = json.load(f)
    title = NETWORKS.get(summary["config"]["network"])
    if title is None:
        raise SystemExit(f"error: {folder}: {summary['config']['network']} is not one of the "
                         f"paper's networks ({', '.join(NETWORKS)})")
    for tag, device in summary["devices"].items():
        kind = "gpu" if tag.startswith("gpu") else "cpu"
        paper = {row[1]: row for row in TABLE_I if row[0] == kind}
        by_selection = {row["selection"]: row for row in device["rows"]}
        labelled = [(title, device["rows"][0], paper[title])]
        if PAPER_T in by_selection:
            row = by_selection[PAPER_T]
            labelled.append((f"B-{title}, paper's T = {_thresholds(row)}", row, paper[f"B-{title}"]))
        knee = device["rows"][1]
        labelled.append((f"B-{title}, knee (stated rule), T = {_thresholds(knee)}", knee, None))
        for label, row, reference in labelled:
            exits, timed_exits, gain, trunk_gain = "-", "-", "-", "-"
            if row["gain"] is not None:  # a B-net row
                exits = " / ".join(f"{p:.1f}" for p in row["exit_percent"])
                timed_exits = _timed_exits(row)
                gain, trunk_gain = _gain(row), f"{row['trunk_gain']:.2f}x"
            paper_figures = _paper_figures(reference) if reference else "-"
            yield (f"| {label} | {tag} | {row['accuracy']:.2f} | {exits} | {_time(row)} "
                   f"| {timed_exits} | {gain} | {trunk_gain} | {paper_figures} |")


def _thresholds(row):
    return ", ".join(f"{t:g}" for t in row["thresholds"])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", help="results folders of experiments.run")
    parser.add_argument("--beside-paper", action="store_true",
                        help="the rows of Table I (baseline, paper's T, knee) beside the paper's")
    args = parser.parse_args(argv)
    if args.beside_paper:
        header = ("| row | device | acc. (%) | exits (%) | time (ms, median (quartiles)) "
                  "| exits of the timed samples (%) | gain end to end [per-round range] | trunk-only gain "
                  "| paper: acc. / exits (%) / time (ms) / gain |")
        table_rows = beside_paper
    else:
        header = ("| B-net | setting | device | baseline acc. (%) | knee acc. (%) | knee T "
                  "| exits (%) | time baseline → knee (ms, median (quartiles)) "
                  "| knee exits of the timed samples (%) | gain [per-round range] | trunk-only gain | MACs (M) baseline → knee "
                  "| epoch: baseline / joint |")
        table_rows = rows
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for folder in args.folders:
        for row in table_rows(folder):
            print(row)

if __name__ == "__main__":
    main()
