"""The branch-depth study (Fig. 5): layer-list variants, and a real study on a tiny B-LeNet."""
import json
import os

import chainer.links as L
import numpy as np
import pytest

from branchynet.flops import exit_path_costs
from branchynet.net import Branch, BranchyNet
from branchynet.training import load_weights
from branchynet.variants import copy_main_branch, one_branch, side_branches, with_conv_layers
from experiments import branch_study
from experiments.run import main as run_main
from networks import get_network


def _convs(branch):
    return sum(isinstance(layer, L.Convolution2D) for layer in branch.layers)


def test_one_branch_keeps_the_chosen_side_branch_and_the_final_exit():
    layers = get_network("alexnet_cifar10").build()
    assert side_branches(layers) == 2
    for n, convs in ((1, 2), (2, 1)):
        kept = [layer for layer in one_branch(layers, n) if isinstance(layer, Branch)]
        assert len(kept) == 2 and _convs(kept[0]) == convs and kept[1] is layers[-1]
    with pytest.raises(ValueError, match="side branch.*1 to 2"):
        one_branch(layers, 3)


@pytest.mark.parametrize("k", [0, 1, 4])
def test_with_conv_layers_rebuilds_the_branch_around_k_convolutions(k):
    layers = with_conv_layers(one_branch(get_network("alexnet_cifar10").build(), 1), 1, k)
    branch = layers[[i for i, x in enumerate(layers) if isinstance(x, Branch)][0]]
    assert _convs(branch) == k
    assert all(c.out_channels == 32 and c.ksize == 3 and c.pad == (1, 1)
               and c.stride == (1, 1) for c in branch.layers if isinstance(c, L.Convolution2D))
    net = BranchyNet(layers)
    outputs = net.predict_all_exits(np.zeros((2, 3, 32, 32), np.float32))
    assert [o.shape for o in outputs] == [(2, 10), (2, 10)]
    # The classifier's input: 64 channels (k = 0) or 32, pooled twice to 4x4.
    assert branch.layers[-1].W.shape == (10, (64 if k == 0 else 32) * 16)


def test_a_branch_without_a_convolution_is_refused():
    with pytest.raises(ValueError, match="no Convolution2D"):
        with_conv_layers([L.Linear(4, 4), Branch([L.Linear(4, 2)]), Branch([L.Linear(4, 2)])], 1, 2)


def test_copy_main_branch_gives_the_baseline_s_final_exit_exactly(lenet_pair, mnist):
    baseline, _ = lenet_pair
    x = mnist.test_x[:50]
    variant = BranchyNet(with_conv_layers(one_branch(get_network("lenet_mnist").build(), 1), 1, 3))
    variant.predict_all_exits(x[:1])
    before = variant.predict_all_exits(x)[-1]
    copy_main_branch(baseline, variant)
    after = variant.predict_all_exits(x)[-1]
    np.testing.assert_array_equal(after, baseline.predict_all_exits(x)[-1])
    assert not np.array_equal(before, after)
    alexnet = BranchyNet(get_network("alexnet_cifar10").build(), main_only=True)
    with pytest.raises(ValueError, match="main branches differ"):
        copy_main_branch(alexnet, variant)


@pytest.fixture(scope="module")
def tiny_study(data_dir, tmp_path_factory):
    """A B-LeNet baseline trained by the runner on 600 mnist-5k images, then the study of
    branch 1 at 0 and 2 convolutions, two seeds, one joint epoch each (about a minute)."""
    root = tmp_path_factory.mktemp("study")
    baseline = str(root / "baseline")
    try:
        run_main(["--network", "lenet_mnist", "--dataset", "mnist-5k", "--data-dir", data_dir,
                  "--train-limit", "600", "--test-limit", "300", "--baseline-epochs", "1",
                  "--branchy-epochs", "1", "--batch-size", "64", "--train-only",
                  "--no-progress", "--blas-threads", "1", "--out", baseline])
    except SystemExit as done:
        assert done.code in (0, None)
    out = str(root / "study")
    argv = ["--from-baseline", baseline, "--conv-layers", "0", "2", "--seeds", "2",
            "--epochs", "1", "--jobs", "2", "--out", out, "--data-dir", data_dir]
    assert branch_study.main(argv) == 0
    return baseline, out, argv


def test_the_study_trains_every_depth_and_seed_and_a_control(tiny_study, data_dir, tmp_path):
    baseline, out, _ = tiny_study
    table = json.load(open(os.path.join(out, "table.json")))
    rows = {row["run"]: row for row in table["rows"]}
    assert list(rows) == ["k = 0", "k = 2", "control (no branch)", "start (baseline as trained)"]
    assert all(len(rows[name]["final_accuracy_seeds"]) == 2 for name in list(rows)[:3])
    # 'start' is the runner's baseline itself, evaluated on the same 300 test images.
    with np.load(os.path.join(out, "runs", "start.exits.npz")) as f:
        labels, start_predictions = f["labels"], f["predictions"][-1]
    net = load_weights(os.path.join(baseline, "baseline.npz"),
                       BranchyNet(get_network("lenet_mnist").build(), main_only=True))
    from branchynet.datasets import load_dataset
    test_x = load_dataset("mnist-5k", data_dir).test_x[:300]
    np.testing.assert_array_equal(start_predictions, net.predict_all_exits(test_x)[-1].argmax(1))
    assert rows["start (baseline as trained)"]["final_accuracy"] == 100 * np.mean(
        start_predictions == labels)
    # Each run trained from it: the seeds differ from each other and from the start.
    for name in ("k = 0", "k = 2", "control (no branch)"):
        seeds = rows[name]["final_accuracy_seeds"]
        assert seeds[0] != seeds[1] or seeds[0] != rows["start (baseline as trained)"]["final_accuracy"]
    # Exit-1 multiply-adds are those of the variant's own structure.
    variant = BranchyNet(with_conv_layers(one_branch(get_network("lenet_mnist").build(), 1), 1, 2))
    variant.predict_all_exits(test_x[:1])
    assert rows["k = 2"]["exit1_macs"] == exit_path_costs(variant, (1, 28, 28))["macs"][0]
    assert rows["k = 2"]["exit1_macs"] > rows["k = 0"]["exit1_macs"]
    assert os.path.exists(os.path.join(out, "fig5.png"))
    # The printed table (and the notebook's): one line per row, the seeds' figures in it.
    text = branch_study.format_table(table).splitlines()
    assert len(text) == 1 + len(rows) and text[0].startswith("run")
    k2 = next(line for line in text if line.startswith("k = 2"))
    assert " / ".join(f"{v:.2f}" for v in rows["k = 2"]["final_accuracy_seeds"]) in k2
    assert f"{rows['k = 2']['exit1_macs'] / 1e6:.1f}" in k2.split()
    # git keeps every run's exit outputs and the first seed's weights, and no other weights.
    import shutil
    import subprocess
    repo = str(tmp_path / "repo")
    shutil.copytree(out, repo)
    subprocess.run(["git", "init", "-q", repo], check=True)
    names = ["runs/k2-seed0.npz", "runs/k2-seed0.exits.npz", "runs/k2-seed1.npz",
             "runs/k2-seed1.exits.npz", "runs/control-seed1.exits.npz", "study.json",
             "runs/k2-seed1/snapshot_epoch_1"]
    ignored = subprocess.run(["git", "-C", repo, "check-ignore", *names],
                             capture_output=True, text=True).stdout.split()
    assert ignored == ["runs/k2-seed1.npz"]


def test_from_results_rederives_the_table_and_catches_an_edited_output(tiny_study, tmp_path):
    _, out, _ = tiny_study
    assert branch_study.main(["--from-results", out]) == 0
    import shutil
    copy = str(tmp_path / "copy")
    shutil.copytree(out, copy)
    path = os.path.join(copy, "runs", "k2-seed1.exits.npz")
    with np.load(path) as f:
        arrays = dict(f)
    arrays["predictions"][-1, :10] = (arrays["labels"][:10] + 1) % 10
    np.savez_compressed(path, **arrays)
    assert branch_study.main(["--from-results", copy]) == 1


def test_a_second_study_with_other_settings_is_refused(tiny_study, capsys):
    _, out, argv = tiny_study
    changed = [a if a != "1" or argv[i - 1] != "--epochs" else "3" for i, a in enumerate(argv)]
    assert branch_study.main(changed) == 2
    assert "other settings (epochs" in capsys.readouterr().err


def test_a_branch_the_network_lacks_is_refused_before_any_work(tiny_study, capsys):
    baseline, out, _ = tiny_study
    assert branch_study.main(["--from-baseline", baseline, "--branch", "2",
                              "--out", out + "-b2"]) == 2
    assert "side branches 1 to 1" in capsys.readouterr().err
    assert not os.path.exists(out + "-b2")


def test_measure_times_every_exit_path_of_the_first_seed(tiny_study, data_dir):
    _, out, _ = tiny_study
    assert branch_study.main(["--measure", out, "--timing-samples", "20", "--timing-rounds", "2",
                              "--data-dir", data_dir]) == 0
    timing = json.load(open(os.path.join(out, "timing_cpu.json")))
    assert set(timing["rounds_ms"]) == {"baseline", "k0/exit1", "k0/exit2", "k2/exit1", "k2/exit2"}
    assert timing["samples"] == 20 and timing["rounds"] == 2
    rows = json.load(open(os.path.join(out, "table.json")))["rows"]
    assert all(r["exit1_ms"] > 0 and r["final_ms"] > 0 for r in rows[:2])
    assert branch_study.main(["--from-results", out]) == 0


def test_an_unfinished_study_says_which_runs_to_continue(tiny_study, tmp_path, capsys):
    import shutil
    _, out, _ = tiny_study
    copy = str(tmp_path / "unfinished")
    shutil.copytree(out, copy)
    os.remove(os.path.join(copy, "runs", "control-seed1.exits.npz"))
    assert branch_study.main(["--from-results", copy]) == 2
    assert "1 run(s) not finished (control-seed1)" in capsys.readouterr().err


COMMITTED = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                         "results", "fig5-alexnet_cifar10")


def test_the_committed_study_recomputes_from_its_exit_outputs(tmp_path):
    """results/fig5-alexnet_cifar10 (docs/replication.md, "Fig. 5"): its table derives from
    the committed exit outputs and timing record alone (a copy, so the figure is redrawn
    outside the repository)."""
    import shutil
    copy = str(tmp_path / "fig5")
    shutil.copytree(COMMITTED, copy)
    assert branch_study.main(["--from-results", copy]) == 0
    table = json.load(open(os.path.join(copy, "table.json")))
    rows = {row["run"]: row for row in table["rows"]}
    assert len(rows) == 7 and all(len(rows[f"k = {k}"]["final_accuracy_seeds"]) == 2
                                  for k in range(5))
    assert table["timing"]["samples"] == 500 and table["timing"]["rounds"] == 5
