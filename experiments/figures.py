"""Redraw a results folder's figures from what it keeps: no data, no training, no timing.

    python -m experiments.figures results/cpu-lenet_mnist-paper
    python -m experiments.figures results/cpu-alexnet_cifar10-converged --fig4

Writes, from the committed exit outputs, timing records and training logs:
``tradeoff_<dev>.png/.pdf`` for every entropy timing record (the Fig. 3-style plot and,
beside it, accuracy against the gain, end to end and trunk-only, with the paper's Table I
points), ``learning_curve.png`` when the folder has training logs, and with ``--fig4`` the
paper's Fig. 4 as ``fig4_first_exit.png/.pdf``: accuracy and the largest exited entropy
against the share of samples leaving at exit 1, the later exits at the knee's thresholds
(the first timing record's knee). The tables are left alone: ``./dev.sh run
--from-results FOLDER`` re-derives and checks those.
"""
import argparse
import glob
import os
import sys

from branchynet.io import read_json


def redraw(folder, fig4=False, log=print):
    """Redraw ``folder``'s figures; returns the paths written."""
    from branchynet.report import first_exit_figure, save_figure
    from branchynet.sweep import first_exit_curve
    from experiments.experiment import Experiment, _criterion_of, _tag_of
    from experiments.learning_curve import plot_learning_curve

    experiment = Experiment.from_results(folder, "entropy", log=lambda *_, **__: None)
    experiment.load_cached_outputs()
    experiment.evaluate()
    records = [p for p in sorted(glob.glob(os.path.join(folder, "timing_*.json")))
               if _criterion_of(_tag_of(p)) == "entropy"]
    if fig4 and not records:
        raise ValueError(f"{folder} has no timing_<device>.json: Fig. 4 needs the knee")
    written, knee = [], None
    for path in records:
        result = experiment.derive(_tag_of(path), read_json(path))
        experiment.plot(result)
        written.append(os.path.join(folder, f"tradeoff_{result['tag']}.png"))
        if knee is None:
            knee = experiment.sweep.thresholds[result["selection"]["knee"]]
    curve = plot_learning_curve(folder)
    if curve:
        written.append(curve)
    if fig4:
        outputs = experiment.outputs
        if outputs.n_exits < 2:
            raise ValueError(f"{folder}: Fig. 4 needs a network with an early exit")
        exited, accuracy, max_entropy = first_exit_curve(outputs, knee[1:])
        at_knee = float((outputs.scores[:, 0] < knee[0]).mean())
        later = ", ".join(f"{t:g}" for t in knee[1:])
        title = (f"B-{experiment.spec.title}, exit 1"
                 + (f" (later exits at the knee's T = {later})" if later else ""))
        stem = os.path.join(folder, "fig4_first_exit")
        save_figure(first_exit_figure(exited, accuracy, max_entropy, at_knee, title), stem)
        written.append(stem + ".png")
    return written


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m experiments.figures", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", help="a runner's results folder (with config.json)")
    parser.add_argument("--fig4", action="store_true",
                        help="also draw the paper's Fig. 4 (fig4_first_exit.png/.pdf)")
    args = parser.parse_args(argv)
    if not os.path.isfile(os.path.join(args.folder, "config.json")):
        parser.error(f"{args.folder!r} is not a runner's results folder (no config.json)")
    try:
        written = redraw(args.folder, args.fig4)
    except ValueError as error:
        parser.error(str(error))
    for path in written:
        print(f"wrote {path}")
    return written


if __name__ == "__main__":
    main()
    sys.exit(0)
