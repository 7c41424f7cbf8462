"""The replication notebooks execute top to bottom in their quick setting (papermill).

Each runs in a fresh kernel on real data (mnist-5k; CIFAR-10 from the data folder), trains
in a temporary folder, and leaves ``notebook_summary.json`` there, which is checked here.
"""
import json
import os

import nbformat
import numpy as np
import papermill
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = os.path.join(ROOT, "notebooks")


# Fewer samples and rounds than the quick setting: the tests check what is computed, not
# how fast (CI has 2 cores).
FAST_TIMING = {"lenet_mnist": 100, "alexnet_cifar10": 40, "resnet110_cifar10": 4}


def execute(name, tmp_path, **parameters):
    """Run ``notebooks/<name>.ipynb`` with ``parameters``; return (summary, notebook)."""
    os.makedirs(tmp_path, exist_ok=True)
    parameters.setdefault("timing_samples", FAST_TIMING[name])
    parameters.setdefault("timing_rounds", 3)
    work_dir = parameters.setdefault("work_dir", str(tmp_path / "work"))
    out = tmp_path / f"{name}.out.ipynb"
    papermill.execute_notebook(os.path.join(NOTEBOOKS, f"{name}.ipynb"), str(out),
                               parameters=parameters, cwd=NOTEBOOKS, progress_bar=False,
                               kernel_name="python3")
    with open(os.path.join(work_dir, "notebook_summary.json")) as f:
        return json.load(f), nbformat.read(str(out), as_version=4)


def images(notebook):
    return sum("image/png" in output.get("data", {})
               for cell in notebook.cells if cell.cell_type == "code"
               for output in cell.get("outputs", []))


def printed(notebook):
    return "".join(output.get("text", "") for cell in notebook.cells if cell.cell_type == "code"
                   for output in cell.get("outputs", []))


def check_common(summary, notebook, n_exits, grid_points, setting="quick"):
    assert summary["setting"] == setting and summary["grid_points"] == grid_points
    assert len(summary["exit_accuracies"]) == n_exits == len(summary["macs"])
    cpu = summary["devices"]["cpu"]
    assert cpu["knee"] in cpu["frontier"] and str(cpu["knee"]) in cpu["measured_ms"]
    assert sum(cpu["knee_exit_fractions"]) == pytest.approx(1)
    # Frontier points (at most 25, the knee among them) and Table I's thresholds were
    # measured in the interleaved rounds, and each figure is the median of its rounds.
    rounds = cpu["rounds_ms"]
    timed = set(cpu["measured_ms"]) - {"paper"}
    assert "paper" in cpu["measured_ms"] and str(cpu["knee"]) in timed
    assert timed <= {str(i) for i in cpu["frontier"]}
    assert len(timed) <= 25  # the non-dominated ones, spread over runtime
    assert cpu["timing_rounds"] == 3 and all(len(r) == 3 for r in rounds.values())
    assert set(rounds) == ({"baseline", "baseline_trunk"} | set(cpu["measured_ms"])
                           | {f"exit{n + 1}{s}" for n in range(n_exits) for s in ("", "_trunk")})
    for i, ms in cpu["measured_ms"].items():
        assert ms == pytest.approx(sorted(rounds[i])[1])
    text = printed(notebook)
    # The knee's gain in the table is paired round by round (it once divided the baseline
    # by the knee's grid index: "0.05x").
    knee_gain = np.median(np.array(rounds["baseline"]) / np.array(rounds[str(cpu["knee"])]))
    knee_row = next(line for line in text.splitlines() if "this run (knee)" in line)
    assert f"{knee_gain:.2f}x" in knee_row.split()
    assert f"Table I, cpu, setting {setting!r}" in text and "paper (cpu)" in text
    assert "this run (knee)" in text and "this run (paper's T)" in text


def test_lenet_notebook_and_reloading_its_weights(tmp_path):
    summary, notebook = execute("lenet_mnist", tmp_path)
    check_common(summary, notebook, n_exits=2, grid_points=17)
    assert images(notebook) == 3  # Fig. 3, exits and entropies, reliability diagrams
    # The guarantee section (on the committed results/cpu-lenet_mnist outputs).
    assert "P(accuracy lost vs the last exit > 0.5 pp) <= 0.1" in printed(notebook)
    assert "ltt-accuracy  violations" in printed(notebook)
    assert summary["baseline_accuracy"] > 0.9 and summary["exit_accuracies"][-1] > 0.9
    assert summary["macs"] == [220_150, 1_247_720] and summary["baseline_macs"] == 1_140_070

    # The same notebook with the weights of the first run as results_dir: nothing trains,
    # and the accuracies are those of the first run.
    again, notebook = execute("lenet_mnist", tmp_path / "again",
                              results_dir=summary["weights_from"], timing_samples=50)
    assert "reusing" in printed(notebook) and "] training" not in printed(notebook)
    assert "read from" not in printed(notebook)  # a notebook's work_dir holds no exit outputs
    assert again["baseline_accuracy"] == summary["baseline_accuracy"]
    assert again["exit_accuracies"] == summary["exit_accuracies"]


def test_alexnet_notebook(tmp_path, data_dir):
    # The weights of the committed CPU results folder (scripts/reproduce_cpu_results.sh;
    # tests/test_results.py checks they reproduce its outputs): no CIFAR training here.
    summary, notebook = execute("alexnet_cifar10", tmp_path, data_dir=str(data_dir),
                                results_dir=os.path.join(ROOT, "results", "cpu-alexnet_cifar10"))
    check_common(summary, notebook, n_exits=3, grid_points=11 ** 2,
                 setting="cpu-alexnet_cifar10")
    # The folder's settings (config.json), not the quick setting's: all 10,000 test images.
    assert summary["settings"]["train_limit"] == 10_000 and summary["settings"]["test_limit"] is None
    assert images(notebook) == 5  # Fig. 3, exits and entropies, Fig. 4, Fig. 5, Fig. 6
    # Briefly trained (10,000 images, 3 + 3 epochs): far from the paper, above chance (10%).
    assert max(summary["exit_accuracies"]) > 0.2
    assert "[branchynet] reusing" in printed(notebook)
    assert "[baseline] training" not in printed(notebook)


def test_resnet_notebook(tmp_path, data_dir):
    summary, notebook = execute("resnet110_cifar10", tmp_path, data_dir=str(data_dir),
                                results_dir=os.path.join(ROOT, "results", "cpu-resnet110_cifar10"))
    check_common(summary, notebook, n_exits=3, grid_points=17 ** 2,
                 setting="cpu-resnet110_cifar10")
    assert summary["settings"]["test_limit"] == 2_000
    assert images(notebook) == 2
    assert summary["macs"][0] == 48_600_000 and summary["baseline_macs"] == 232_411_968
    # The folder's exit outputs are read, not recomputed: their key names these weights and
    # these 2,000 test samples, and they give the folder's own accuracies.
    folder = os.path.join(ROOT, "results", "cpu-resnet110_cifar10")
    # Nothing trains, so no training step is timed to choose BLAS threads.
    assert "auto: the weights are trained already" in printed(notebook)
    assert "timing a training step" not in printed(notebook)
    for cache in ("exit_outputs.npz", "exit_outputs_baseline.npz"):
        assert f"test samples read from results/cpu-resnet110_cifar10/{cache}" in printed(notebook)
    with open(os.path.join(folder, "summary.json")) as f:
        recorded = json.load(f)
    assert summary["exit_accuracies"] == pytest.approx(recorded["exit_accuracies"], abs=1e-12)
    assert summary["baseline_accuracy"] == pytest.approx(recorded["baseline_accuracy"], abs=1e-12)
    assert "[branchynet] reusing" in printed(notebook)
    assert "[baseline] training" not in printed(notebook)


def test_notebooks_match_their_template():
    """The committed notebooks are the generator's cells (plus the outputs of a run)."""
    import sys
    sys.path.insert(0, NOTEBOOKS)
    try:
        import make_notebooks
    finally:
        sys.path.remove(NOTEBOOKS)
    for name, config in make_notebooks.NOTEBOOKS.items():
        committed = nbformat.read(os.path.join(NOTEBOOKS, f"{name}.ipynb"), as_version=4)
        sources = [c.source for c in committed.cells if "injected-parameters" not in
                   c.metadata.get("tags", [])]
        assert sources == [c.source for c in make_notebooks.cells(name, config)], name
        assert "parameters" in committed.cells[1].metadata["tags"]
        # The parameters of the stored run hold no path of the machine that ran it: a
        # user's clone has neither that results folder nor that data folder.
        injected = [c.source for c in committed.cells
                    if "injected-parameters" in c.metadata.get("tags", [])]
        parameters = committed.metadata.get("papermill", {}).get("parameters", {})
        for value in parameters.values():
            assert not (isinstance(value, str) and os.path.isabs(value)), (name, value)
            assert not isinstance(value, str) or f'"{value}"' in "".join(injected), (name, value)


def test_lenet_notebook_on_a_runner_folder_shows_its_measurement(tmp_path, data_dir):
    """On a runner folder whose timing record timed these weights on these samples, the
    notebook takes the folder's settings and its measurement: the same rows as the
    runner's table_cpu.json, nothing timed again."""
    folder = os.path.join(ROOT, "results", "cpu-lenet_mnist-paper")
    # A relative results_dir is taken from the repository root (papermill starts the
    # kernel in notebooks/).
    summary, notebook = execute("lenet_mnist", tmp_path, data_dir=str(data_dir),
                                results_dir="results/cpu-lenet_mnist-paper", timing_samples=0)
    text = printed(notebook)
    assert "the timings of results/cpu-lenet_mnist-paper/timing_cpu.json" in text
    assert summary["setting"] == "cpu-lenet_mnist-paper" and summary["settings"]["batch_size"] == 512
    with open(os.path.join(folder, "timing_cpu.json")) as f:
        record = json.load(f)
    cpu = summary["devices"]["cpu"]
    assert cpu["timing_rounds"] == 5
    assert cpu["rounds_ms"]["baseline"] == record["measurement"]["rounds_ms"]["baseline"]
    with open(os.path.join(folder, "table_cpu.json")) as f:
        runner = {row["selection"]: row for row in json.load(f)["rows"]}
    for selection, ours in (("test knee (as paper)", "this run (knee)"),
                            ("paper's T (Table I)", "this run (paper's T)")):
        row = runner[selection]
        line = next(line for line in text.splitlines() if ours in line).split()
        assert f"{row['accuracy']:.2f}" in line and f"{row['gain']:.2f}x" in line
        assert f"{row['trunk_gain']:.2f}x" in line, (selection, line)
