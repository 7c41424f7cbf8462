"""Print a Markdown summary of runner results folders (the README's results table).

    python scripts/results_table.py results/cpu-lenet_mnist results/cpu-alexnet_cifar10 ...

One row per folder and device: the training setting, the baseline and the test-set knee
(accuracy, measured batch-size-1 latency, end-to-end and trunk-only gain, exits),
multiply-adds per sample, and the training time per epoch. Everything is read from the
folder's summary.json and config.json, as written by ``python -m experiments.run``.
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
               f"| {base['time_ms']:.3f} → {knee['time_ms']:.3f} | {knee['gain']:.2f}x "
               f"| {knee['trunk_gain']:.2f}x "
               f"| {base['macs'] / 1e6:.3g} → {knee['macs'] / 1e6:.3g} "
               f"| {epoch_seconds(summary, 'baseline')} / {epoch_seconds(summary, 'branchynet')} |")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", help="results folders of experiments.run")
    args = parser.parse_args(argv)
    print("| B-net | setting | device | baseline acc. (%) | knee acc. (%) | knee T | exits (%) "
          "| time baseline → knee (ms) | gain | trunk-only gain | MACs (M) baseline → knee "
          "| epoch: baseline / joint |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for folder in args.folders:
        for row in rows(folder):
            print(row)


if __name__ == "__main__":
    main()
