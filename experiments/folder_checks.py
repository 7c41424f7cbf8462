"""Checks ``--from-results`` makes beyond re-deriving the derived files.

* The learning curve's last test point of each training stage is the accuracy of the
  committed exit outputs on the samples the curve evaluates (the final weights made both):
  an edited last point, or a log from other weights, fails.
* Every figure of the folder's ``README.md`` written as a percentage, a time in ms or a
  gain (``85.66%``, ``56.1 / 10.2 / 33.8%``, ``1.895 ms``, ``0.96x``, ``[0.93-1.01]``)
  must be one the folder's table rows or accuracies give at the printed precision.

Each check returns a list of problems (empty: all agree), as ``Experiment.recompute``.
"""
import os
import re

import numpy as np

from branchynet.io import read_json

TEST_PREFIX = "test/main/accuracy/"
_NUMBER = r"\d+(?:\.\d+)?"
PERCENTS = re.compile(rf"((?:{_NUMBER}\s*/\s*)*{_NUMBER})\s*%")
MILLISECONDS = re.compile(rf"({_NUMBER})\s*ms\b")
GAINS = re.compile(rf"({_NUMBER})x\b")
INTERVALS = re.compile(rf"\[({_NUMBER})\s*[-,]\s*({_NUMBER})\]")


def _exit_number(key):
    return int(re.sub(r"\D", "", key.rsplit("/", 1)[-1]) or 0)


def curve_problems(exp):
    """The last logged test accuracy of each stage against the committed exit outputs on
    the first ``learning_curve.test_samples`` test samples (stages that end without a test
    point, or logs from before the curve existed, are skipped)."""
    samples = (exp.config.get("learning_curve") or {}).get("test_samples")
    if not samples:
        return []
    problems = []
    for stage, outputs in (("baseline", exp.baseline_outputs), ("branchynet", exp.outputs)):
        path = exp.path(os.path.join(stage, "log"))
        if not os.path.exists(path) or outputs is None:
            continue
        log = read_json(path)
        last = log[-1] if log else {}
        keys = sorted((k for k in last if k.startswith(TEST_PREFIX)), key=_exit_number)
        if not keys:
            continue
        n = min(samples, len(outputs))
        correct = np.rint(np.asarray(outputs.take(slice(0, n)).exit_accuracies()) * n)
        if len(keys) != len(correct):
            problems.append(f"{path}: epoch {last.get('epoch')} logs {len(keys)} test "
                            f"accuracies, the exit outputs have {len(correct)} exits")
            continue
        for key, count in zip(keys, correct):
            if abs(last[key] * n - count) > 0.01:
                problems.append(
                    f"{path}: epoch {last.get('epoch')} {key} is {last[key]!r}, the committed "
                    f"exit outputs give {int(count)}/{n} = {count / n!r} (the final weights "
                    f"made both)")
    return problems


def _decimals(text):
    return len(text.split(".", 1)[1]) if "." in text else 0


def _formatted(values, decimals):
    return {f"{v:.{decimals}f}" for v in values}


def readme_problems(folder, rows, accuracies):
    """Figures of ``folder/README.md`` that are not in ``rows`` (Table I rows of every
    device) or ``accuracies`` (percent) at the precision they are written with."""
    path = os.path.join(folder, "README.md")
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        text = f.read()
    percents, times, gains = list(accuracies), [], []
    for row in rows:
        percents += [row[k] for k in ("accuracy", "val_accuracy") if row.get(k) is not None]
        percents += list(row.get("exit_percent") or []) + list(row.get("timed_exit_percent") or [])
        times += [row[k] for k in ("time_ms", "time_q1_ms", "time_q3_ms", "predicted_ms",
                                   "trunk_ms", "val_predicted_ms") if row.get(k) is not None]
        gains += [row[k] for k in ("gain", "gain_low", "gain_high", "trunk_gain")
                  if row.get(k) is not None]
    found = [(m.group(0), figure, percents) for m in PERCENTS.finditer(text)
             for figure in re.split(r"\s*/\s*", m.group(1))]
    found += [(m.group(0), m.group(1), times) for m in MILLISECONDS.finditer(text)]
    found += [(m.group(0), m.group(1), gains) for m in GAINS.finditer(text)]
    found += [(m.group(0), figure, gains) for m in INTERVALS.finditer(text)
              for figure in m.groups()]
    return [f"{path}: '{figure}' in '{context}' is not a figure the folder's table rows or "
            f"accuracies give (re-derived from its exit outputs and timing records)"
            for context, figure, values in found
            if figure not in _formatted(values, _decimals(figure))]
