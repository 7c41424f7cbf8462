"""scripts/recipe_pilot.py: the learning-rate pilot of a network's CPU recipe, tiny."""
import json
import os
import runpy

import pytest

PILOT = runpy.run_path(os.path.join(os.path.dirname(__file__), "..", "scripts",
                                    "recipe_pilot.py"))


def test_pilot_runs_every_rate_and_writes_its_table(tmp_path, capsys):
    """Two steps per rate on 256 images (code path only: too short to learn anything)."""
    out = str(tmp_path / "pilot")
    chosen = PILOT["main"](["--rates", "0.02", "50", "--epochs", "1", "--train", "256",
                            "--held-out", "200", "--out", out])
    printed = capsys.readouterr().out
    record = json.load(open(os.path.join(out, "pilot.json")))
    assert [(r["lr"], r["epoch"]) for r in record["rows"]] == [(0.02, 1), (50.0, 1)]
    assert all(r["training_seconds"] > 0 for r in record["rows"])
    assert "held-out acc" in printed and record["chosen_lr"] == chosen
    assert record["settings"]["schedule"] == "constant"
    assert chosen == PILOT["choose"](record["rows"], 1)


def test_pilot_rule_skips_diverged_and_unstarted_rates():
    def row(lr, loss, accuracy, epoch=2):
        return {"lr": lr, "epoch": epoch, "train_loss": loss, "held_out_accuracy": accuracy}
    rows = [row(0.01, 1.2, 0.50), row(0.02, 1.0, 0.55), row(0.05, float("nan"), 0.10),
            row(0.1, 2.3, 0.12), row(0.05, 0.9, 0.70, epoch=1)]
    assert PILOT["choose"](rows, 2) == 0.02  # not 0.05's epoch-1 row, nor NaN or chance
    assert PILOT["choose"](rows[2:4], 2) is None


@pytest.mark.parametrize("argv, message", [
    (["--train", "49000", "--held-out", "2000"], "must not be trained on"),
    (["--rates", "0"], "--rates must be positive"),
    (["--network", "lenet_mnist"], "trains on mnist"),
])
def test_pilot_refuses_bad_settings(argv, message, capsys):
    with pytest.raises(SystemExit) as refused:
        PILOT["parse_args"](argv)
    assert refused.value.code == 2 and message in capsys.readouterr().err
