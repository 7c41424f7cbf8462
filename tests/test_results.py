"""Every committed results folder re-derives from its own files, without training or timing.

For each folder under results/ with a timing record, every derived file (sweep, Table I
CSV and JSON, summary, and with a validation split the selection and its candidates) is
rebuilt from the committed exit outputs, timing records and training logs alone and must
equal the committed one; the committed weights must reproduce the committed exit outputs
of the test and validation samples: all of them for the small networks, and for the others
as many as fit in ``VERIFY_MACS`` multiply-adds (at least 100) to keep CI short. This reads
the dataset: official MNIST and CIFAR-10 from $BRANCHYNET_DATA. Tampering with any derived
file kind makes the recompute fail, naming the file and the field.
"""
import csv
import filecmp
import glob
import json
import os
import re
import shutil

import numpy as np
import pytest

from experiments.experiment import _tag_of
from experiments.run import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Runner folders (a config.json beside a timing record; the branch study's folder has a
# timing record of its own and is recomputed by tests/test_branch_study.py).
FOLDERS = sorted(set(os.path.dirname(p) for p in glob.glob(os.path.join(ROOT, "results", "*",
                                                                          "timing_*.json"))
                     if os.path.exists(os.path.join(os.path.dirname(p), "config.json"))))
# Every folder with a sweep, timed by the runner or not (the deploy folders).
SWEPT = sorted(set(os.path.dirname(p) for p in glob.glob(os.path.join(ROOT, "results", "*",
                                                                        "sweep_*.csv"))))
# Multiply-adds spent per split verifying exit outputs: all 10,000 MNIST test samples of
# B-LeNet (2.4M per sample, both networks), about 425 of B-AlexNet's, 100 of ResNet-110's.
VERIFY_MACS = 2.5e10


def _contents(folder):
    """The bytes of a folder's weights and exit outputs (to spot a folder that shares them)."""
    names = ("baseline.npz", "branchynet.npz", "exit_outputs.npz", "exit_outputs_baseline.npz")
    return [open(os.path.join(folder, n), "rb").read() for n in names]


def samples_to_verify(folder):
    """All samples where the networks are small, else as many as ``VERIFY_MACS`` allow;
    100 where an earlier folder has the same weights and exit outputs (a re-timing)."""
    if any(_contents(other) == _contents(folder) for other in FOLDERS[:FOLDERS.index(folder)]):
        return "100"
    with open(os.path.join(folder, "summary.json"), encoding="utf-8") as f:
        costs = json.load(f)["costs"]
    per_sample = costs["baseline_macs"] + costs["macs"][-1]
    with open(os.path.join(folder, "config.json"), encoding="utf-8") as f:
        samples = json.load(f)["samples"]
    n = int(VERIFY_MACS // per_sample)
    return "all" if n >= max(samples["test"], samples["val"]) else str(max(100, n))


def device_tags(folder):
    """The devices a runner folder was timed on: cpu, gpu0, ... (its timing_<tag>.json)."""
    return sorted(_tag_of(p) for p in glob.glob(os.path.join(folder, "timing_*.json")))


def test_there_are_committed_results():
    assert FOLDERS, "no results/*/timing_*.json committed"


@pytest.mark.parametrize("folder", FOLDERS, ids=os.path.basename)
def test_committed_folder_recomputes_identically(folder, data_dir, capsys):
    assert main(["--from-results", folder, "--verify-outputs", samples_to_verify(folder),
                 "--data-dir", str(data_dir)]) is True, capsys.readouterr().out
    printed = capsys.readouterr().out
    # Each device the folder was timed on (cpu, gpu0, ...) has its own derived files.
    for name in ["summary.json"] + [f"{kind}_{tag}.{ext}" for tag in device_tags(folder)
                                    for kind, ext in (("sweep", "csv"), ("table", "csv"),
                                                      ("table", "json"))]:
        assert f"{name}: identical" in printed
    assert "B-net (test): the weights reproduce the committed exit outputs" in printed
    assert "baseline (test): the weights reproduce the committed exit outputs" in printed
    if os.path.exists(os.path.join(folder, "exit_outputs_val.npz")):
        assert "selection_cpu.json: identical" in printed
        assert "candidates_val_cpu.csv: identical" in printed
        assert "B-net (validation): the weights reproduce" in printed


def test_small_folders_verify_every_test_output():
    lenet = [f for f in FOLDERS if "lenet" in os.path.basename(f)]
    assert lenet and all(samples_to_verify(f) == "all" or any(
        _contents(g) == _contents(f) and samples_to_verify(g) == "all" for g in lenet)
        for f in lenet)


@pytest.mark.parametrize("folder", SWEPT, ids=os.path.basename)
def test_no_committed_point_is_faster_than_every_path_it_mixes(folder):
    """The review's inconsistency (a knee faster than its own exit-1 path) must not be in
    a committed table: the self-consistency flags of every measured point are empty of it."""
    for path in glob.glob(os.path.join(folder, "sweep_*.csv")):
        with open(path) as f:
            assert "faster-than-its-paths" not in f.read(), path


DEPLOY_RECORDS = sorted(glob.glob(os.path.join(ROOT, "results", "*", "deploy_*.json")))


@pytest.mark.parametrize("record", DEPLOY_RECORDS,
                         ids=lambda p: os.path.basename(os.path.dirname(p)))
def test_committed_deploy_timings_recompute_from_their_per_sample_seconds(record, capsys):
    """docs/deploy.md's figures (each sample's fastest round, the per-round medians, the
    block-start effect) re-derive from the committed per-sample seconds."""
    from experiments.deploy import main as deploy
    tag = os.path.basename(record)[len("deploy_"):-len(".json")]
    status = deploy(["recompute", "--results", os.path.dirname(record), "--tag", tag])
    assert status == 0, capsys.readouterr()


VAL_FOLDER = os.path.join(ROOT, "results", "cpu-alexnet_cifar10-val")


def _tamper_csv(path, column):
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    row = next(r for r in rows if r[column])
    row[column] = repr(float(row[column]) * 1.01)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _tamper_json(path, *keys):
    with open(path, encoding="utf-8") as f:
        doc = json.load(f)
    inner = doc
    for key in keys[:-1]:
        inner = inner[key]
    inner[keys[-1]] *= 1.01
    with open(path, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=2)


TAMPERED = {  # file -> (how, the field the error must name)
    "sweep_cpu.csv": (lambda p: _tamper_csv(p, "measured_ms"), "column measured_ms"),
    "table_cpu.csv": (lambda p: _tamper_csv(p, "gain"), "column gain"),
    "table_cpu.json": (lambda p: _tamper_json(p, "rows", 1, "time_ms"), "$.rows[1].time_ms"),
    "summary.json": (lambda p: _tamper_json(p, "exit_accuracies", 0), "$.exit_accuracies[0]"),
    "selection_cpu.json": (lambda p: _tamper_json(p, "selections", 0, "val_accuracy"),
                           "$.selections[0].val_accuracy"),
    "candidates_val_cpu.csv": (lambda p: _tamper_csv(p, "val_accuracy"), "column val_accuracy"),
}


@pytest.fixture
def val_copy(tmp_path):
    """A copy of the committed folder with a validation split (every derived file kind)."""
    copy = tmp_path / "folder"
    shutil.copytree(VAL_FOLDER, copy, ignore=shutil.ignore_patterns("*.png", "*.pdf"))
    return copy


@pytest.mark.parametrize("name", sorted(TAMPERED))
def test_tampering_with_a_derived_file_fails_the_recompute(name, val_copy, capsys):
    assert main(["--from-results", str(val_copy)]) is True, capsys.readouterr().out
    capsys.readouterr()
    tamper, field = TAMPERED[name]
    tamper(str(val_copy / name))
    assert main(["--from-results", str(val_copy)]) is False
    errors = [line for line in capsys.readouterr().out.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and name in errors[0] and field in errors[0], errors


@pytest.mark.parametrize("part", ["profile", "measurement"])
def test_an_edited_timing_block_fails_the_recompute(part, tmp_path, capsys):
    """The stored rounds are the means of the stored blocks: an edited block is caught,
    though no table shows it."""
    copy = tmp_path / "folder"
    shutil.copytree(os.path.join(ROOT, "results", "cpu-lenet_mnist-paper"), copy,
                    ignore=shutil.ignore_patterns("*.png", "*.pdf"))
    assert main(["--from-results", str(copy)]) is True, capsys.readouterr().out
    capsys.readouterr()
    path = str(copy / "timing_cpu.json")
    with open(path, encoding="utf-8") as f:
        record = json.load(f)
    record[part]["blocks_ms"]["exit1"][2][3] += 0.05
    with open(path, "w", encoding="utf-8") as f:
        json.dump(record, f, indent=2)
    assert main(["--from-results", str(copy)]) is False
    errors = [line for line in capsys.readouterr().out.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, errors
    assert f"timing_cpu.json: {part}: rounds_ms['exit1'][2] is" in errors[0], errors


def _copy(name, tmp_path):
    """A copy of a committed folder without its weights and plots (recompute reads neither)."""
    copy = tmp_path / name
    shutil.copytree(os.path.join(ROOT, "results", name), copy,
                    ignore=shutil.ignore_patterns("*.png", "*.pdf", "baseline.npz",
                                                  "branchynet.npz"))
    return copy


def _edit_log(folder, stage, epoch, key, delta):
    path = os.path.join(folder, stage, "log")
    with open(path, encoding="utf-8") as f:
        log = json.load(f)
    next(e for e in log if e["epoch"] == epoch)[key] += delta
    with open(path, "w", encoding="utf-8") as f:
        json.dump(log, f, indent=4)


def _errors(capsys):
    return [line for line in capsys.readouterr().out.splitlines() if line.startswith("error:")]


def test_an_edited_learning_curve_point_fails_the_recompute(tmp_path, capsys):
    """The curve's plotted values are derived (summary.json's training record); its last
    test point is also the accuracy of the committed exit outputs (the final weights)."""
    copy = _copy("cpu-lenet_mnist-paper", tmp_path)
    assert main(["--from-results", str(copy)]) is True, capsys.readouterr().out
    capsys.readouterr()
    _edit_log(copy, "baseline", 40, "test/main/accuracy/exit2", 0.002)
    assert main(["--from-results", str(copy)]) is False
    errors = _errors(capsys)
    assert len(errors) == 1 and "summary.json: $.training.baseline.curve" in errors[0], errors

    copy = _copy("cpu-lenet_mnist-paper", tmp_path / "last")
    _edit_log(copy, "branchynet", 100, "test/main/accuracy/exit1", 0.002)
    assert main(["--from-results", str(copy)]) is False
    errors = _errors(capsys)
    assert any("branchynet/log: epoch 100 test/main/accuracy/exit1 is" in e
               and "exit outputs give 9862/10000" in e for e in errors), errors


@pytest.mark.parametrize("figure, edited", [("85.66%", "85.67%"), ("56.1 / 10.2", "56.1 / 10.3"),
                                            ("1.895 ms", "1.896 ms"), ("0.96x", "0.97x"),
                                            ("[0.93-1.01]", "[0.93-1.02]")])
def test_an_edited_folder_readme_figure_fails_the_recompute(figure, edited, tmp_path, capsys):
    copy = _copy("cpu-alexnet_cifar10-converged", tmp_path)
    readme = copy / "README.md"
    text = readme.read_text(encoding="utf-8")
    assert main(["--from-results", str(copy)]) is True, capsys.readouterr().out
    capsys.readouterr()
    assert text.count(figure) == 1
    readme.write_text(text.replace(figure, edited), encoding="utf-8")
    assert main(["--from-results", str(copy)]) is False
    errors = _errors(capsys)
    assert len(errors) == 1 and "README.md: '" in errors[0], errors


def test_rewrite_derived_replaces_a_differing_derived_file(val_copy, capsys):
    _tamper_csv(str(val_copy / "table_cpu.csv"), "gain")
    assert main(["--from-results", str(val_copy), "--rewrite-derived"]) is True
    assert "table_cpu.csv: rewritten" in capsys.readouterr().out
    assert main(["--from-results", str(val_copy)]) is True
    assert filecmp.cmp(val_copy / "table_cpu.csv", os.path.join(VAL_FOLDER, "table_cpu.csv"),
                       shallow=False)


@pytest.mark.parametrize("folder", FOLDERS, ids=os.path.basename)
def test_rows_show_the_exits_of_the_samples_their_time_was_measured_on(folder):
    """A B-net row's time is measured on the first --timing-samples test samples; their
    exits (the timing record's) stand beside it, the exits over the whole test set apart."""
    from branchynet.report import format_table
    for tag in device_tags(folder):
        with open(os.path.join(folder, f"timing_{tag}.json"), encoding="utf-8") as f:
            points = json.load(f)["points"]
        with open(os.path.join(folder, f"table_{tag}.json"), encoding="utf-8") as f:
            table = json.load(f)
        timed = [row for row in table["rows"] if row["time_ms"] is not None and row["thresholds"]]
        assert timed
        for row in timed:
            name = "T=" + ",".join(repr(float(t)) for t in row["thresholds"])
            assert row["timed_exit_percent"] == [100 * f for f in points[name]["exit_fractions"]]
        header = re.split(r"\s{2,}", format_table(table["rows"]).splitlines()[0])
        assert header.index("Timed exits(%)") == header.index("IQR(ms)") + 1
        assert "whose exits are the timed exits" in table["title"]


def test_results_table_prints_the_timed_exits_and_reads_older_rows(tmp_path, capsys):
    import runpy
    script = runpy.run_path(os.path.join(ROOT, "scripts", "results_table.py"))
    folder = os.path.join(ROOT, "results", "cpu-alexnet_cifar10-converged")
    script["main"](["--beside-paper", folder])
    knee = capsys.readouterr().out.splitlines()[-1]
    assert "| 56.1 / 10.2 / 33.8 | 1.999 (1.934-2.001) | 52.4 / 10.4 / 37.2 |" in knee
    old = tmp_path / "old"  # a folder written before the timed exits were kept
    old.mkdir()
    with open(os.path.join(folder, "summary.json"), encoding="utf-8") as f:
        summary = json.load(f)
    for row in summary["devices"]["cpu"]["rows"]:
        del row["timed_exit_percent"]
    (old / "summary.json").write_text(json.dumps(summary))
    script["main"]([str(old)])
    assert "| 1.895 (1.865-1.902) → 1.999 (1.934-2.001) | - |" in capsys.readouterr().out


def test_tampered_validation_outputs_fail_the_verification(val_copy, data_dir, capsys):
    """The validation exit outputs are checked against the weights, as the test ones."""
    from branchynet.sweep import ExitOutputs
    path = str(val_copy / "exit_outputs_val_baseline.npz")
    outputs = ExitOutputs.load(path)
    outputs.scores = outputs.scores.copy()
    outputs.scores[3, 0] += np.float32(0.01)
    outputs.save(path)
    assert main(["--from-results", str(val_copy), "--verify-outputs", "5",
                 "--data-dir", str(data_dir)]) is False
    printed = capsys.readouterr().out
    assert "error: baseline (validation): the weights do not reproduce" in printed
    assert "scores differ at sample 3, exit 1" in printed


def _record_data_folder(folder, data_folder):
    """Make a copied results folder record CIFAR-10 in ``data_folder``: config.json, and the
    copy of the config that summary.json carries (else the recompute reports the change, as
    it must: ``data_folder`` may be the same files spelled through a symbolic link)."""
    def moved(record):
        record["folder"] = data_folder
        for name, entry in record["files"].items():
            entry["path"] = os.path.join(data_folder, name)

    for name, config_of in (("config.json", lambda doc: doc),
                            ("summary.json", lambda doc: doc["config"])):
        path = os.path.join(folder, name)
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
        moved(config_of(doc)["data_record"])
        with open(path, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=2)


@pytest.fixture
def no_other_data(tmp_path, monkeypatch):
    """No $BRANCHYNET_DATA, an empty cache, and every download attempt recorded and refused."""
    import branchynet.datasets.cifar10 as cifar10
    monkeypatch.delenv("BRANCHYNET_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    attempts = []

    def refuse(name, *args, **kwargs):
        attempts.append(name)
        raise cifar10.DatasetError(f"no download in this test ({name})")
    monkeypatch.setattr(cifar10, "download", refuse)
    return attempts


def test_verify_outputs_finds_the_recorded_data_folder(val_copy, data_dir, no_other_data,
                                                       capsys):
    """Without --data-dir the data come from the folder config.json records (the one holding
    cifar-10-batches-py/ is the data root, not cifar-10-batches-py/ itself); nothing is
    downloaded."""
    from branchynet.datasets.cifar10 import FOLDER
    recorded = next(os.path.join(base, FOLDER) for base in (os.path.join(data_dir, "cifar10"),
                                                           data_dir)
                    if os.path.isdir(os.path.join(base, FOLDER)))
    _record_data_folder(val_copy, recorded)
    assert main(["--from-results", str(val_copy), "--verify-outputs", "5"]) is True, \
        capsys.readouterr()
    assert "B-net (test): the weights reproduce" in capsys.readouterr().out
    assert no_other_data == []


def test_verify_outputs_names_a_recorded_data_folder_missing_here(val_copy, no_other_data,
                                                                  tmp_path, capsys):
    missing = str(tmp_path / "elsewhere" / "cifar10" / "cifar-10-batches-py")
    _record_data_folder(val_copy, missing)
    with pytest.raises(SystemExit) as stop:
        main(["--from-results", str(val_copy), "--verify-outputs", "5"])
    assert stop.value.code == 2
    captured = capsys.readouterr()
    error = captured.err.strip().splitlines()[-1]
    assert str(tmp_path / "elsewhere" / "cifar10") in error and "not on this machine" in error
    assert "--data-dir" in error and "BRANCHYNET_DATA" in error
    assert "identical" not in captured.out  # refused before any work
    assert no_other_data == []


# Folders of python -m experiments.run --seeds K: every seed's folder, then the aggregate.
SEEDS_FOLDERS = sorted(os.path.dirname(p) for p in glob.glob(os.path.join(ROOT, "results", "*",
                                                                          "seeds.json")))


@pytest.mark.parametrize("folder", SEEDS_FOLDERS, ids=os.path.basename)
def test_committed_seeds_folder_recomputes_identically(folder, data_dir, capsys):
    assert main(["--from-results", folder, "--verify-outputs", "100",
                 "--data-dir", str(data_dir)]) is True, capsys.readouterr().out
    assert "seeds_accuracy.csv: identical" in capsys.readouterr().out
