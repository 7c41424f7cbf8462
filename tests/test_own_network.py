"""A network of one's own through the CLI, exactly as docs/own_network.md documents it,
and the ways of writing a network that Chainer users use."""
import csv
import json
import re
import os
import shlex
import subprocess
import sys

import chainer
import chainer.functions as F
import chainer.links as L
import numpy as np
import pytest

from branchynet.flops import exit_path_costs
from branchynet.net import Branch, BranchyNet
from networks import get_network

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def documented_command():
    """The `./dev.sh run --network docs/examples/...` command of docs/own_network.md."""
    with open(os.path.join(ROOT, "docs", "own_network.md")) as f:
        text = f.read()
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines)
                 if line.startswith("./dev.sh run --network docs/examples/"))
    command = lines[start]
    while command.endswith("\\"):
        start += 1
        command = command[:-1] + " " + lines[start]
    return shlex.split(command)[2:]


def test_the_documented_own_network_runs_to_table_and_plot(tmp_path):
    out = tmp_path / "my_net"
    argv = documented_command()
    assert argv[:2] == ["--network", "docs/examples/my_net.py:build"]
    run = subprocess.run([sys.executable, "-m", "experiments.run", *argv, "--no-progress",
                          "--out", str(out)], cwd=ROOT, capture_output=True, text=True,
                         timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Table I rows: my_net on mnist-5k" in run.stdout and "B-my_net" in run.stdout
    for name in ("table_cpu.csv", "sweep_cpu.csv", "tradeoff_cpu.png", "tradeoff_cpu.pdf"):
        assert (out / name).stat().st_size > 0, name
    with open(out / "sweep_cpu.csv") as f:
        assert len(f.read().splitlines()) == 1 + 17 ** 2  # the default grid, 2 side exits
    with open(out / "config.json") as f:
        config = json.load(f)
    # The lazy layers got their sizes from the data: exit 1 is a Linear on 784 pixels.
    assert config["network_structure"]["/exit1/0/W"] == [10, 784]
    assert config["network"] == "docs/examples/my_net.py:build"
    with open(out / "table_cpu.json") as f:
        knee = json.load(f)["rows"][1]
    assert len(knee["thresholds"]) == 2 and sum(knee["exit_percent"]) == pytest.approx(100)


def lazy_net():
    return [Branch(L.Linear(None, 10)),
            L.Convolution2D(None, 4, 3, pad=1), L.BatchNormalization(4), F.relu,
            Branch([L.Convolution2D(None, 4, 3, pad=1), L.BatchNormalization(4), F.relu,
                    F.dropout, L.Linear(None, 10)]),
            L.Linear(None, 16), F.relu,
            Branch(L.Linear(None, 10))]


def test_lazy_sizes_early_branch_and_single_link_branches_work_everywhere():
    x = np.random.RandomState(0).rand(4, 1, 28, 28).astype(np.float32)
    baseline = BranchyNet(lazy_net(), main_only=True)
    baseline(x)  # sizes set by the first batch
    branchy = BranchyNet(lazy_net())
    branchy.init_from_baseline(baseline)  # crashed on None sizes before
    trunk_names = [n for n, _ in baseline.namedparams()]
    mine = dict(branchy.namedparams())
    for name, param in baseline.namedparams():
        np.testing.assert_array_equal(mine[name].array, param.array)
    assert set(trunk_names) < set(mine)
    # Costs: exit 1 leaves before any trunk layer (this raised "Sequential does not have
    # any layer"): a Linear on 784 inputs.
    costs = exit_path_costs(BranchyNet(lazy_net()), (1, 28, 28))
    assert costs["path_macs"][0] == 784 * 10 and costs["params"][0] == 7850
    # Batch and single-sample early exit agree; BatchNorm and dropout in inference mode.
    with chainer.using_config("train", False):
        labels, exits = branchy.predict(x, [0.5, 0.5])
        single = [branchy.predict(x[i:i + 1], [0.5, 0.5]) for i in range(4)]
    assert [int(e[0]) for _, e in single] == exits.tolist()
    assert [int(lab[0]) for lab, _ in single] == labels.tolist()


def test_a_layer_list_that_is_not_a_bnet_is_refused_with_the_reason(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import chainer.links as L\ndef build():\n    return [L.Linear(None, 10)]\n")
    with pytest.raises(ValueError, match="does not make a BranchyNet.*must end with a Branch"):
        get_network(f"{bad}:build")
    with pytest.raises(ValueError, match="a Branch needs one or more"):
        Branch([])


def test_import_chainer_first_works_with_the_startup_hook(tmp_path):
    """What dev.sh installs as a .pth: `import chainer` before `import branchynet` works on
    NumPy 2 (numpy.sctypes was removed there)."""
    code = ("import branchynet_startup; branchynet_startup.install(); import chainer, numpy; "
            "import chainer.functions as F; print(chainer.__version__, hasattr(numpy, 'sctypes'))")
    run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                         text=True, env={**os.environ, "PYTHONPATH": ROOT})
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split() == ["7.8.1", "True"]


FOUR_EXITS = os.path.join(ROOT, "tests", "fixtures", "own_network", "four_exit_net.py")


def test_a_four_exit_network_times_a_capped_set_of_points_and_says_how_long(tmp_path, capsys):
    """A user's own network, test-sized: a 4-exit conv net with BatchNorm and dropout given
    as FILE.py:build. 17^3 = 4,913 threshold vectors are swept; at most --timed-points of
    the frontier are timed (the rest predicted), with an estimate printed first; a correct
    measurement raises no self-consistency warning; tables carry the file's name."""
    from experiments.run import main
    out = tmp_path / "four"
    summary = main(["--network", f"{FOUR_EXITS}:build", "--dataset", "mnist-5k",
                    "--train-limit", "600", "--test-limit", "300", "--baseline-epochs", "1",
                    "--branchy-epochs", "1", "--timing-samples", "40", "--timing-rounds", "3",
                    "--timed-points", "8", "--no-progress", "--out", str(out)])
    printed = capsys.readouterr().out
    with open(out / "timing_cpu.json") as f:
        record = json.load(f)
    with open(out / "sweep_cpu.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 17 ** 3
    frontier = [r for r in rows if r["frontier"] == "1"]
    assert len(frontier) > 8  # more on the frontier than are timed
    assert 2 <= len(record["points"]) <= 8
    assert len([r for r in frontier if r["measured_ms"]]) == len(record["points"])
    assert re.search(r"measuring the baseline, 4 exit paths and \d threshold vector\(s\) on 40 "
                     r"test samples .*: about \d+ s \(\d+\.\d+ ms per sample", printed), printed
    assert "warning:" not in printed, printed
    assert "Table I rows: four_exit_net on mnist-5k" in printed and "B-four_exit_net" in printed
    assert summary["devices"]["cpu"]["warnings"] == []
    assert main(["--from-results", str(out)]) is True
