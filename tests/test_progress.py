"""python -m experiments.progress: where a results folder stands, read from the folder."""
import itertools
import os

import pytest

from experiments import progress, run

TINY = ["--network", "lenet_mnist", "--dataset", "mnist-5k", "--train-limit", "320",
        "--test-limit", "100", "--baseline-epochs", "2", "--branchy-epochs", "1",
        "--batch-size", "32", "--timing-samples", "10", "--no-progress"]


def test_progress_of_a_run_stopped_mid_epoch_then_finished(tmp_path, monkeypatch, capsys):
    out = str(tmp_path / "run")
    ticks = itertools.count()  # a fake clock: one second per reading
    monkeypatch.setattr(run, "_clock", lambda: next(ticks))
    with pytest.raises(SystemExit) as stopped:
        run.main(TINY + ["--out", out, "--time-budget", "0.25"])  # 15 readings
    assert stopped.value.code == run.EXIT_TIME_BUDGET
    said = capsys.readouterr().out
    snapshot = [n for n in os.listdir(os.path.join(out, "baseline")) if "_iter_" in n]
    assert len(snapshot) == 1
    iteration = int(snapshot[0].rpartition("_iter_")[2])
    epoch = iteration * 32 / 320  # 10 iterations per epoch
    assert 1 < epoch < 2 and f"after epoch {epoch:.2f} of 2" in said
    config, stages, written = progress.progress(out)
    baseline, joint = stages
    assert baseline["epoch"] == pytest.approx(epoch) and not baseline["done"]
    assert len(baseline["log"]) == 1 and baseline["hours"] > 0
    assert joint["epoch"] == 0 and joint["snapshot"] is None
    assert written == {"exit outputs": False, "timing": False, "tables": False}
    lines = progress.describe(out)
    accuracy = 100 * baseline["log"][0]["test/main/accuracy/exit2"]
    assert lines[1].startswith(f"baseline: epoch {epoch:.2f} of 2, snapshot baseline/{snapshot[0]}; "
                               "1 epoch(s) logged in")
    assert f"    epoch 1: {accuracy:.2f}" in lines and "branchynet: not started" in lines

    monkeypatch.setattr(run, "_clock", run.time.monotonic)
    run.main(TINY + ["--out", out])
    lines = progress.describe(out)
    assert lines[1].startswith("baseline: done, 2 epochs; 2 epoch(s) logged")
    assert any(line.startswith("branchynet: done, 1 epoch; 1 epoch(s) logged") for line in lines)
    assert lines[-1] == "then: exit outputs written, timing written, tables written"


def test_progress_refuses_a_folder_the_runner_did_not_write(tmp_path, capsys):
    with pytest.raises(SystemExit) as refused:
        progress.main([str(tmp_path)])
    assert refused.value.code == 2
    assert "has no config.json: not a folder of python -m experiments.run" in capsys.readouterr().err
