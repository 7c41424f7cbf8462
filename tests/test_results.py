"""Every committed results folder re-derives from its own files, without training or timing.

For each folder under results/ with a timing record, the sweep, frontier, knee and Table I
CSVs are rebuilt from the committed exit outputs and timing records alone and must be
identical to the committed CSVs; the committed weights must reproduce the committed exit
outputs on the first test samples (this reads the dataset: official MNIST and CIFAR-10
from $BRANCHYNET_DATA).
"""
import glob
import os

import pytest

from experiments.run import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FOLDERS = sorted(os.path.dirname(p) for p in glob.glob(os.path.join(ROOT, "results", "*",
                                                                    "timing_*.json")))
FOLDERS = sorted(set(FOLDERS))


def test_there_are_committed_results():
    assert FOLDERS, "no results/*/timing_*.json committed"


@pytest.mark.parametrize("folder", FOLDERS, ids=os.path.basename)
def test_committed_folder_recomputes_identically(folder, data_dir, capsys):
    assert main(["--from-results", folder, "--verify-outputs", "100",
                 "--data-dir", str(data_dir)]) is True, capsys.readouterr().out
    printed = capsys.readouterr().out
    assert "identical" in printed and "reproduce the committed exit outputs" in printed


@pytest.mark.parametrize("folder", FOLDERS, ids=os.path.basename)
def test_no_committed_point_is_faster_than_every_path_it_mixes(folder):
    """The review's inconsistency (a knee faster than its own exit-1 path) must not be in
    a committed table: the self-consistency flags of every measured point are empty of it."""
    for path in glob.glob(os.path.join(folder, "sweep_*.csv")):
        with open(path) as f:
            assert "faster-than-its-paths" not in f.read(), path


# Folders of python -m experiments.run --seeds K: every seed's folder, then the aggregate.
SEEDS_FOLDERS = sorted(os.path.dirname(p) for p in glob.glob(os.path.join(ROOT, "results", "*",
                                                                          "seeds.json")))


@pytest.mark.parametrize("folder", SEEDS_FOLDERS, ids=os.path.basename)
def test_committed_seeds_folder_recomputes_identically(folder, data_dir, capsys):
    assert main(["--from-results", folder, "--verify-outputs", "100",
                 "--data-dir", str(data_dir)]) is True, capsys.readouterr().out
    assert "seeds_accuracy.csv: identical" in capsys.readouterr().out
