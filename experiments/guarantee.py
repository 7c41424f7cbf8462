"""The runner's guaranteed selection and per-exit calibration (--risk-epsilon, --calibrate).

Derived, like the rest of a results folder, from exit outputs and the timing profile only:

* ``--calibrate``: every exit's logits on the validation and test samples, as the exit
  outputs keep them (``exit_outputs_val.npz``, ``exit_outputs.npz``); one
  temperature per exit fitted on a seeded half of the validation samples (``FIT_FRACTION``);
  ``calibration.json`` (T, ECE and NLL before/after on the fitting half, the other half and
  the test set) and ``reliability.png`` (the held-out half). The guarantee is then tested
  on the other half only, so the temperatures do not depend on the samples it tests.
* ``--risk-epsilon PP --risk-delta D``: Learn-then-Test (``branchynet.risk``) over a common
  threshold at every exit, beside the plain rule (the fastest vector whose validation
  accuracy is within PP of the last exit's; no guarantee), both reported on the test set
  with predicted runtime (exit fractions x the profile's exit-path medians; these points
  are not timed). Files ``guarantee_<tag>[_calibrated].json/.csv``; the JSON records its
  settings, so ``recompute`` re-derives and compares every such file a folder holds.
"""
import glob
import json
import os
import tempfile

import numpy as np

from branchynet.calibration import calibration_report, fit_temperatures, rescore
from branchynet.io import read_json, write_json, write_text
from branchynet.report import plot_reliability, write_csv
from branchynet.risk import (common_family, family_vectors, ltt_select, plain_select,
                             sample_losses)
from branchynet.sweep import evaluate_grid, predict_runtime
from branchynet.timing import Interleaved, path_summary
from experiments.errors import SettingsError

FIT_FRACTION = 0.5
DIGITS = 6  # significant digits kept of fitted temperatures and reported calibration errors
COLUMNS = ("selection", "guarantee", "thresholds", "temperatures", "val_samples",
           "val_accuracy", "val_loss_rate", "pvalue", "test_accuracy",
           "test_accuracy_drop_pp", "test_loss_rate", "test_exit_percent",
           "predicted_ms", "predicted_gain", "note")


def settings_of(args):
    """The guarantee settings of the runner's options, or None when none was asked for."""
    if not getattr(args, "calibrate", False) and getattr(args, "risk_epsilon", None) is None:
        return None
    return {"calibrate": bool(args.calibrate), "epsilon_pp": args.risk_epsilon,
            "delta": args.risk_delta, "loss": args.risk_loss}


def _round(x):
    return float(f"{x:.{DIGITS}g}")


def _rounded(obj):
    if isinstance(obj, float):
        return _round(obj) if np.isfinite(obj) else obj  # inf: a threshold releasing all
    if isinstance(obj, dict):
        return {k: _rounded(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_rounded(v) for v in obj]
    return obj


# -- calibration --------------------------------------------------------------------------

def fit_split(n, seed):
    """Sorted positions of the validation samples the temperatures are fitted on, and of the
    others (where the guarantee is tested)."""
    order = np.random.RandomState(seed).permutation(n)
    k = int(round(FIT_FRACTION * n))
    return np.sort(order[:k]), np.sort(order[k:])


def calibrate(exp):
    """Temperatures and the calibration report; the held-out validation positions."""
    test, val = exp.outputs, exp.val_outputs
    if test.logits is None or val.logits is None:
        raise SettingsError(
            f"{exp.out}: its exit outputs hold no logits (written before December 2026), and "
            f"calibration needs every exit's logits. Add them from the committed weights "
            f"(inference only, needs the data): python -m experiments.run --from-results "
            f"{exp.out} --calibrate --data-dir DIR")
    fit, held = fit_split(len(val), exp.s.seed)
    temperatures = [_round(t) for t in fit_temperatures(val.take(fit))]
    report = calibration_report(temperatures, {"fit": val.take(fit), "held_out": val.take(held),
                                               "test": test})
    report.update(fit_samples=len(fit), held_out_samples=len(held), seed=exp.s.seed,
                  fit_fraction=FIT_FRACTION)
    return temperatures, _rounded(report), held


def write_calibration(out, report, title):
    write_json(os.path.join(out, "calibration.json"), report)
    plot_reliability(os.path.join(out, "reliability.png"), report, "held_out", title)


# -- the guaranteed selection -------------------------------------------------------------

def file_stem(tag, settings):
    return f"guarantee_{tag}" + ("_calibrated" if settings["calibrate"] else "")


def derive(exp, record, settings):
    """The guarantee document for one timing record: rows and everything they came from."""
    paths = path_summary(Interleaved.from_json(record["profile"]), exp.outputs.n_exits)
    val, test = exp.val_outputs, exp.outputs
    temperatures = report = None
    if settings["calibrate"]:
        temperatures, report, held = calibrate(exp)
        val = rescore(val.take(held), temperatures)
        test = rescore(test, temperatures)
    classes = int(val.labels.max()) + 1
    values = common_family(val.criterion, classes)
    family = family_vectors(values, val.n_exits)
    epsilon, delta = settings["epsilon_pp"] / 100, settings["delta"]
    chosen = ltt_select(val, paths["path_ms"], epsilon, delta, family, settings["loss"])
    plain = plain_select(val, paths["path_ms"], epsilon, family)
    picked = family[[0, plain, chosen.index]]
    on_test = evaluate_grid(test, picked)
    val_loss = sample_losses(val, picked, settings["loss"]).mean(axis=0)
    test_loss = sample_losses(test, picked, settings["loss"]).mean(axis=0)
    rows = []
    for k, (name, j, statement) in enumerate((
            ("every sample to the last exit", 0, "-"),
            (f"val accuracy >= last exit - {settings['epsilon_pp']:g} pp (no guarantee)",
             plain, "none"),
            ("Learn-then-Test" + ("" if chosen.feasible else ": INFEASIBLE, last exit kept"),
             chosen.index, chosen.statement()))):
        fractions = on_test.exit_fractions[k]
        predicted = float(predict_runtime(fractions, paths["path_ms"]))
        rows.append({
            "selection": name, "guarantee": statement,
            "thresholds": [float(t) for t in family[j]],
            "temperatures": temperatures or "-",
            "val_samples": len(val), "val_accuracy": 100 * chosen.candidates.accuracy[j],
            "val_loss_rate": 100 * val_loss[k],
            "pvalue": float(chosen.pvalues[j]) if k == 2 else "-",
            "test_accuracy": 100 * on_test.accuracy[k],
            "test_accuracy_drop_pp": 100 * (on_test.accuracy[0] - on_test.accuracy[k]),
            "test_loss_rate": 100 * test_loss[k],
            "test_exit_percent": [100 * f for f in fractions],
            "predicted_ms": predicted, "predicted_gain": paths["baseline_ms"] / predicted,
            "note": "" if chosen.feasible or k != 2 else chosen.infeasible_message()})
    doc = {"settings": {**settings, "family": f"common threshold at every exit: 0, "
                                              f"{len(values) - 2} values geometric from "
                                              f"{values[1]:g} to {values[-2]:g}, inf",
                        "seed": exp.s.seed, "criterion": val.criterion},
           "method": "Learn-then-Test (Angelopoulos et al. 2021), fixed-sequence testing, "
                     + ("Hoeffding-Bentkus" if settings["loss"] == "signed" else
                        "exact binomial tail") + " p-value; branchynet/risk.py",
           "statement": chosen.statement(), "feasible": chosen.feasible,
           "certified_candidates": chosen.rejected,
           "samples_needed": chosen.samples_needed,
           "path_ms": paths["path_ms"], "baseline_ms": paths["baseline_ms"],
           "runtime_note": "predicted: test exit fractions x exit-path medians of the "
                           "profile (batch size 1); these points are not timed",
           "rows": _rounded(json.loads(json.dumps(rows, default=lambda o: o.tolist())))}
    return doc, report


def write(out, tag, settings, doc):
    stem = os.path.join(out, file_stem(tag, settings))
    write_json(stem + ".json", doc)
    write_csv(stem + ".csv", doc["rows"], list(COLUMNS))


def format_rows(doc):
    lines = [f"Guaranteed selection: {doc['statement']}"]
    for r in doc["rows"]:
        lines.append(f"  {r['selection']}: T = {', '.join(f'{t:g}' for t in r['thresholds'])}; "
                     f"test acc. {r['test_accuracy']:.2f}% (drop {r['test_accuracy_drop_pp']:+.2f} "
                     f"pp), exits {', '.join(f'{p:.1f}' for p in r['test_exit_percent'])}%, "
                     f"predicted {r['predicted_ms']:.3f} ms ({r['predicted_gain']:.2f}x)")
        if r["note"]:
            lines.append(f"    note: {r['note']}")
    return "\n".join(lines)


def run_stage(exp, tag, record, settings):
    """Derive and write the guarantee (and calibration) files of one device's record."""
    doc, report = (derive(exp, record, settings) if settings["epsilon_pp"] is not None
                   else (None, calibrate(exp)[1]))
    if report is not None:
        write_calibration(exp.out, report, _reliability_title(exp))
    if doc is not None:
        write(exp.out, tag, settings, doc)
        exp.log(format_rows(doc))
    return doc


def recompute(exp, tag, record, settings):
    """Re-derive every guarantee file of ``tag`` the folder holds, and the one ``settings``
    asks for, and compare them with the folder's; a file the folder lacks is written there
    (the first derivation of those settings). Returns the list of differences."""
    wanted = {}
    for path in sorted(glob.glob(exp.path(f"guarantee_{tag}*.json"))):
        stem = os.path.basename(path)[:-len(".json")]
        if stem in (f"guarantee_{tag}", f"guarantee_{tag}_calibrated"):
            kept = read_json(path)["settings"]
            wanted[stem] = {k: kept[k] for k in ("calibrate", "epsilon_pp", "delta", "loss")}
    problems = []
    if settings is not None and settings["epsilon_pp"] is not None:
        stem = file_stem(tag, settings)
        if wanted.setdefault(stem, settings) != settings:
            problems.append(f"{exp.path(stem + '.json')} holds a guarantee with other settings "
                            f"({json.dumps(wanted[stem])}, asked: {json.dumps(settings)}); "
                            f"it is checked as it is: delete it to derive these")
    calibrated = os.path.exists(exp.path("calibration.json")) or bool(
        settings and settings["calibrate"])
    with tempfile.TemporaryDirectory() as tmp:
        names, report = [], None
        for stem, s in wanted.items():
            doc, fitted = derive(exp, record, s)
            report = fitted or report
            write(tmp, tag, s, doc)
            names += [stem + ".json", stem + ".csv"]
        if calibrated:
            report = report or calibrate(exp)[1]
            write_json(os.path.join(tmp, "calibration.json"), report)
            names.append("calibration.json")
        for name in names:
            committed, fresh = exp.path(name), os.path.join(tmp, name)
            if not os.path.exists(committed):
                write_text(committed, _text(fresh))
                if name == "calibration.json":
                    plot_reliability(exp.path("reliability.png"), report, "held_out",
                                     _reliability_title(exp))
                exp.log(f"{committed}: written (the first derivation of these settings)")
            elif _text(committed) != _text(fresh):
                problems.append(f"{committed}: differs from what its exit outputs and "
                                f"timing_{tag}.json give")
            else:
                exp.log(f"{committed}: identical to what its exit outputs and "
                        f"timing_{tag}.json give")
    return problems


def _reliability_title(exp):
    return f"{exp.spec.title}: reliability on the held-out half of the validation split"


def _text(path):
    with open(path, encoding="utf-8") as f:
        return f.read()
