"""The plots in the paper's terms: this run at the paper's T, the paper's own Table I
points, the trunk-only frontier beside the end-to-end one, and Fig. 4 as a file; all
redrawn from a committed folder without data (``python -m experiments.figures``)."""
import json
import os
import shutil

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from branchynet.io import read_json  # noqa: E402
from branchynet.report import first_exit_figure  # noqa: E402
from branchynet.sweep import first_exit_curve  # noqa: E402
from experiments import figures  # noqa: E402
from experiments.experiment import Experiment, point_name  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "results")


def _derived(folder):
    experiment = Experiment.from_results(folder, "entropy", log=lambda *_, **__: None)
    experiment.load_cached_outputs()
    experiment.evaluate()
    return experiment, experiment.derive("cpu", read_json(os.path.join(folder, "timing_cpu.json")))


def _gain_panel(folder):
    """The right panel's data for a committed folder: (derived result, panel, frontier)."""
    experiment, result = _derived(folder)
    sweep = experiment.sweep
    front = [i for i in result["selection"]["frontier"]
             if point_name(sweep.thresholds[i]) in result["measured"]]
    knee = result["measured"][point_name(sweep.thresholds[result["selection"]["knee"]])]
    return result, experiment.gain_panel(result, front, knee), front


def test_the_gain_panel_sets_this_run_at_the_papers_t_beside_the_papers_points():
    folder = os.path.join(RESULTS, "cpu-lenet_mnist-paper")
    result, panel, front = _gain_panel(folder)
    assert [m[0] for m in result["marks"]] == ["this run at the paper's T = 0.025"]
    assert panel["paper"] == [("paper, Table I (cpu): LeNet", 1.0, 99.20),
                              ("paper, Table I (cpu): B-LeNet, trunk-only", 5.4, 99.25)]
    rows = {r["selection"]: r for r in read_json(os.path.join(folder, "table_cpu.json"))["rows"]}
    paper_row = rows["paper's T (Table I)"]
    assert [m[0] for m in panel["marks"]] == ["this run at the paper's T, end to end",
                                             "this run at the paper's T, trunk-only"]
    (e2e, acc), (trunk, acc2) = [m[1:] for m in panel["marks"]]
    assert e2e == pytest.approx(paper_row["gain"]) and trunk == pytest.approx(paper_row["trunk_gain"])
    assert acc == acc2 == pytest.approx(paper_row["accuracy"])
    (end, end_acc), (trunk_only, trunk_acc) = panel["frontiers"].values()
    assert end_acc == trunk_acc and len(end) == len(front) > 5
    # The authors' accounting leaves the heads out: every point gains more trunk-only.
    assert all(t > e for t, e in zip(trunk_only, end))
    assert panel["knee"][0] == pytest.approx(rows["test knee (as paper)"]["gain"])


def _gain_axis_scale(folder):
    from branchynet.report import gain_figure
    _, panel, _ = _gain_panel(os.path.join(RESULTS, folder))
    _, ax = plt.subplots()
    gain_figure(ax, **panel)
    scale = ax.get_xscale()
    plt.close(ax.figure)
    return scale, max(g for g in panel["frontiers"]["trunk-only (the authors' accounting)"][0])


def test_the_gain_axis_turns_logarithmic_when_a_cheap_exit_spreads_the_gains():
    # B-ResNet-110's exit 1 runs 0.17 ms of trunk: its trunk-only gain is over 100x, which
    # on a linear axis would squeeze every other point against gain 1.
    assert _gain_axis_scale("cpu-resnet110_cifar10-converged-cycle2") == ("log", pytest.approx(155, rel=0.05))
    scale, largest = _gain_axis_scale("cpu-alexnet_cifar10-converged")
    assert scale == "linear" and largest < 20


def test_figures_redraws_a_folder_without_data_and_draws_fig4(tmp_path, capsys):
    source = os.path.join(RESULTS, "cpu-alexnet_cifar10")
    folder = tmp_path / "alexnet"
    folder.mkdir()
    for name in ("config.json", "timing_cpu.json", "exit_outputs.npz", "exit_outputs_baseline.npz"):
        shutil.copy(os.path.join(source, name), folder / name)
    written = figures.main([str(folder), "--fig4"])
    assert written == [str(folder / "tradeoff_cpu.png"), str(folder / "fig4_first_exit.png")]
    for name in ("tradeoff_cpu.png", "tradeoff_cpu.pdf", "fig4_first_exit.png", "fig4_first_exit.pdf"):
        assert os.path.getsize(folder / name) > 5_000
    assert not (folder / "table_cpu.json").exists()  # the tables are left alone
    with pytest.raises(SystemExit) as refused:
        figures.main([str(tmp_path / "nowhere")])
    assert refused.value.code == 2 and "no config.json" in capsys.readouterr().err


def test_fig4_draws_the_curve_first_exit_curve_gives():
    experiment, result = _derived(os.path.join(RESULTS, "cpu-alexnet_cifar10-converged"))
    knee = experiment.sweep.thresholds[result["selection"]["knee"]]
    exited, accuracy, entropy = first_exit_curve(experiment.outputs, knee[1:])
    share = float((experiment.outputs.scores[:, 0] < knee[0]).mean())
    fig = first_exit_figure(exited, accuracy, entropy, share, "B-AlexNet")
    left, right = fig.axes
    curve, knee_line = left.get_lines()
    np.testing.assert_allclose(curve.get_ydata(), 100 * accuracy)
    np.testing.assert_allclose(right.get_lines()[0].get_ydata(), entropy)
    # The committed knee, T = (0.5, 0.5), sends 56.1% of the test set out at exit 1.
    assert knee_line.get_xdata()[0] == pytest.approx(56.1, abs=0.05)
    plt.close(fig)
