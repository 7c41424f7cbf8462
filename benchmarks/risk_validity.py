"""Is the guarantee kept? Violation rates of Learn-then-Test against the plain rule.

    python -m benchmarks.risk_validity --markdown          # 1,000 splits per case
    python -m benchmarks.risk_validity --splits 200 --cases synthetic

Each case is a pool of committed (or synthetic) exit outputs. A fixed, seeded part of the
pool (``FIT_FRACTION``) is kept apart to fit the per-exit temperatures of the calibrated
variant; the rest is split at random, ``--splits`` times, into a calibration part (the
validation split a user would have) and a test part (new data). On every split each rule
chooses thresholds on the calibration part from the same family (a common threshold at
every exit over ``branchynet.risk.common_family``), and the test part says whether the
promise held:

* ``ltt-accuracy``: Learn-then-Test, 0/1 loss "wrong where the last exit is right", exact
  binomial p-value (the runner's default, ``--risk-epsilon``);
* ``ltt-signed``: Learn-then-Test on the accuracy lost itself, Hoeffding-Bentkus p-value;
* ``plain``: the fastest vector whose calibration accuracy is at most epsilon below the last
  exit's (``--accuracy-drop`` against the last exit): no guarantee.

A violation is a split whose test accuracy lost against the last exit exceeds epsilon; for
the Learn-then-Test rules the rate of their own loss above epsilon is given too. Speed
given up: the mean predicted runtime on the test part (exit fractions x the case's
exit-path latencies) and its gain over the baseline. The family's losses, correctness and
runtime per sample are computed once; each split is then a few matrix products.
"""
import argparse
import json
import os
import platform
import sys
import time

import numpy as np

from branchynet.calibration import calibration_report, fit_temperatures, rescore
from branchynet.io import read_json, write_json
from branchynet.report import _cpu_model
from branchynet.risk import (binomial_cdf, common_family, family_vectors,
                             hoeffding_bentkus_pvalue, sample_losses)
from branchynet.sweep import ExitOutputs, exit_indices
from branchynet.synthetic import default_path_ms, synthetic_exit_outputs
from branchynet.timing import Interleaved, path_summary

FIT_FRACTION = 0.2
RULES = ("ltt-accuracy", "ltt-signed", "plain")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _folder(name):
    return os.path.join(REPO, "results", name)


def _paths(folder, n_exits):
    record = read_json(os.path.join(folder, "timing_cpu.json"))
    return path_summary(Interleaved.from_json(record["profile"]), n_exits)


def _concat(parts):
    return ExitOutputs(np.concatenate([p.scores for p in parts]),
                       np.concatenate([p.predictions for p in parts]),
                       np.concatenate([p.labels for p in parts]), parts[0].criterion,
                       logits=np.concatenate([p.logits for p in parts]))


def lenet_case():
    """B-LeNet on the 10,000 MNIST test images (results/cpu-lenet_mnist)."""
    folder = _folder("cpu-lenet_mnist")
    outputs = ExitOutputs.load(os.path.join(folder, "exit_outputs.npz"))
    paths = _paths(folder, outputs.n_exits)
    return dict(name="B-LeNet, MNIST test set (results/cpu-lenet_mnist)", outputs=outputs,
                path_ms=paths["path_ms"],
                baseline_ms=paths["baseline_ms"], epsilon_pp=0.5, calibration_samples=4000)


def alexnet_case():
    """B-AlexNet's 2,000 validation and 10,000 test outputs (results/cpu-alexnet_cifar10-val)."""
    folder = _folder("cpu-alexnet_cifar10-val")
    parts = [ExitOutputs.load(os.path.join(folder, f)) for f in
             ("exit_outputs_val.npz", "exit_outputs.npz")]
    paths = _paths(folder, parts[0].n_exits)
    return dict(name="B-AlexNet, CIFAR-10 validation + test (results/cpu-alexnet_cifar10-val)",
                outputs=_concat(parts),
                path_ms=paths["path_ms"], baseline_ms=paths["baseline_ms"], epsilon_pp=2.0,
                calibration_samples=2000)


def synthetic_case():
    """Synthetic 3-exit outputs, exit 1 three times more overconfident, exit 3 half as much (``logit_scales``)."""
    outputs = synthetic_exit_outputs(12000, 3, seed=7, logit_scales=(3.0, 1.0, 0.5))
    path_ms = default_path_ms(3)
    return dict(name="synthetic, 3 exits, exit 1 overconfident (logits x 3), exit 3 less so (x 0.5), exits 62/71/80%",
                outputs=outputs, path_ms=path_ms, baseline_ms=path_ms[-1],
                epsilon_pp=2.0, calibration_samples=2000)


def make_logits(data_dir):
    """Every exit's logits of the committed folders the cases read, where missing."""
    from experiments.experiment import Experiment
    for name in ("cpu-lenet_mnist", "cpu-alexnet_cifar10-val"):
        exp = Experiment.from_results(_folder(name))
        exp.s.data_dir = data_dir
        exp.load_cached_outputs()
        exp.add_missing_logits()


CASES = {"lenet": lenet_case, "alexnet": alexnet_case, "synthetic": synthetic_case}


def precompute(outputs, family, path_ms):
    """Per sample and candidate: 0/1 loss, signed loss, correct, predicted runtime."""
    chosen = exit_indices(outputs, family).T  # (samples, K)
    rows = np.arange(len(outputs))[:, None]
    correct = outputs.predictions[rows, chosen] == outputs.labels[:, None]
    return {"loss": sample_losses(outputs, family, "accuracy").astype(np.float32),
            "signed": sample_losses(outputs, family, "signed").astype(np.float32),
            "correct": correct.astype(np.float32),
            "runtime": np.asarray(path_ms, np.float32)[chosen],
            "exit": [(chosen == e).astype(np.float32) for e in range(outputs.n_exits)]}


def _fastest(runtime, accuracy, ok):
    """Per row: the fastest candidate with ``ok``; ties: the more accurate, then the first."""
    keys = np.where(ok, runtime, np.inf) - 1e-9 * accuracy
    return np.argmin(keys, axis=1)


def simulate(per_sample, n_cal, epsilon, delta, splits, seed, chunk=100):
    """Every rule on ``splits`` random calibration/test splits; per-split results."""
    pool = per_sample["loss"].shape[0]
    n_test = pool - n_cal
    cdf = binomial_cdf(np.arange(n_cal + 1), n_cal, epsilon)
    rng = np.random.RandomState(seed)
    out = {rule: {k: [] for k in ("drop", "own", "runtime", "fractions", "certified")}
           for rule in RULES}
    for start in range(0, splits, chunk):
        count = min(chunk, splits - start)
        cal = np.zeros((count, pool), np.float32)
        for s in range(count):
            cal[s, rng.permutation(pool)[:n_cal]] = 1
        test = 1 - cal
        c = {k: cal @ per_sample[k] for k in ("loss", "signed", "correct", "runtime")}
        t = {k: test @ per_sample[k] for k in ("loss", "signed", "correct", "runtime")}
        t_exit = np.stack([test @ m for m in per_sample["exit"]], axis=2) / n_test
        cal_acc, test_acc = c["correct"] / n_cal, t["correct"] / n_test
        p = {"ltt-accuracy": cdf[np.rint(c["loss"]).astype(int)],
             "ltt-signed": hoeffding_bentkus_pvalue((c["signed"] / n_cal + 1) / 2, n_cal,
                                                    (1 + epsilon) / 2)}
        chosen = {}
        for rule, pv in p.items():
            pv = pv.copy()
            pv[:, 0] = 0.0
            failed = pv > delta
            first_fail = np.where(failed.any(axis=1), failed.argmax(axis=1), pv.shape[1])
            certified = np.arange(pv.shape[1])[None, :] < first_fail[:, None]
            chosen[rule] = _fastest(c["runtime"], cal_acc, certified)
            out[rule]["certified"] += (first_fail - 1).tolist()
        ok = cal_acc >= cal_acc[:, :1] - epsilon - 1e-9
        chosen["plain"] = _fastest(c["runtime"], cal_acc, ok)
        rows = np.arange(count)
        for rule, j in chosen.items():
            drop = test_acc[rows, 0] - test_acc[rows, j]
            own = (t["signed"][rows, j] if rule == "ltt-signed" else t["loss"][rows, j]) / n_test
            out[rule]["drop"] += drop.tolist()
            out[rule]["own"] += own.tolist()
            out[rule]["runtime"] += (t["runtime"][rows, j] / n_test).tolist()
            out[rule]["fractions"] += t_exit[rows, j].tolist()
    return out


def summarise(results, epsilon, delta, baseline_ms):
    splits = len(results["plain"]["drop"])
    se = float(np.sqrt(delta * (1 - delta) / splits))
    summary = {}
    for rule, r in results.items():
        drop, own = np.asarray(r["drop"]), np.asarray(r["own"])
        runtime = np.asarray(r["runtime"])
        summary[rule] = {
            "violation_rate": float((drop > epsilon + 1e-12).mean()),
            "own_loss_violation_rate": float((own > epsilon + 1e-12).mean()),
            "passes": bool((drop > epsilon + 1e-12).mean() <= delta + 3 * se),
            "mean_test_drop_pp": 100 * float(drop.mean()),
            "mean_predicted_ms": float(runtime.mean()),
            "mean_gain_vs_baseline": float((baseline_ms / runtime).mean()),
            "mean_exit_percent": (100 * np.asarray(r["fractions"]).mean(axis=0)).tolist(),
            **({"everything_to_last_exit_rate": float((np.asarray(r["certified"]) == 0).mean())}
               if r["certified"] else {})}
    return {"splits": splits, "standard_error": se, "rules": summary}


def run_case(case, splits, delta, seed):
    outputs = case["outputs"]
    order = np.random.RandomState(seed).permutation(len(outputs))
    k = int(round(FIT_FRACTION * len(outputs)))
    fit, rest = np.sort(order[:k]), np.sort(order[k:])
    temperatures = fit_temperatures(outputs.take(fit))
    report = calibration_report(temperatures, {"fit": outputs.take(fit),
                                               "rest": outputs.take(rest)})
    calibration = [{"exit": e["exit"], "temperature": e["temperature"],
                    **{f"{part}_{when}_{m}": e[part][when][m] for part in ("fit", "rest")
                       for when in ("before", "after") for m in ("ece", "nll")}}
                   for e in report["exits"]]
    variants = {"raw": outputs.take(rest),
                "calibrated": rescore(outputs.take(rest), temperatures)}
    classes = int(outputs.labels.max()) + 1
    family = family_vectors(common_family(outputs.criterion, classes), outputs.n_exits)
    epsilon = case["epsilon_pp"] / 100
    doc = {"case": case["name"], "pool": len(outputs), "temperature_fit_samples": k,
           "temperatures": temperatures, "calibration": calibration,
           "ece_bins": report["ece_bins"], "calibration_samples": case["calibration_samples"],
           "test_samples": len(rest) - case["calibration_samples"],
           "epsilon_pp": case["epsilon_pp"], "delta": delta, "path_ms": list(case["path_ms"]),
           "baseline_ms": float(case["baseline_ms"]),
           "last_exit_accuracy": float(outputs.exit_accuracies()[-1]), "variants": {}}
    for name, outs in variants.items():
        start = time.perf_counter()
        per_sample = precompute(outs, family, case["path_ms"])
        results = simulate(per_sample, case["calibration_samples"], epsilon, delta, splits,
                           seed + 1)
        doc["variants"][name] = {**summarise(results, epsilon, delta, case["baseline_ms"]),
                                 "seconds": time.perf_counter() - start}
    return doc


def markdown(docs):
    lines = ["| case | scores | rule | violation rate (test drop > eps) | own loss > eps | "
             "passes (<= delta + 3 SE) | mean test drop (pp) | exits (%) | predicted ms | "
             "gain vs baseline | last exit only |", "|" + "---|" * 11]
    for doc in docs:
        case = (f"{doc['case']}; eps {doc['epsilon_pp']:g} pp, delta {doc['delta']:g}, "
                f"n {doc['calibration_samples']:,} / test {doc['test_samples']:,}")
        for variant, v in doc["variants"].items():
            for rule, r in v["rules"].items():
                own = "-" if rule == "plain" else f"{100 * r['own_loss_violation_rate']:.1f}%"
                last = r.get("everything_to_last_exit_rate")
                last = "-" if last is None else f"{100 * last:.1f}%"
                exits = " / ".join(f"{p:.1f}" for p in r["mean_exit_percent"])
                lines.append(
                    f"| {case} | {variant} | {rule} | {100 * r['violation_rate']:.1f}% | {own} | "
                    f"{'yes' if r['passes'] else 'NO'} | {r['mean_test_drop_pp']:+.2f} | "
                    f"{exits} | {r['mean_predicted_ms']:.3f} | "
                    f"{r['mean_gain_vs_baseline']:.2f}x | {last} |")
                case = ""
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.risk_validity",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES))
    parser.add_argument("--splits", type=int, default=1000,
                        help="random calibration/test splits per case (default: %(default)s)")
    parser.add_argument("--delta", type=float, default=0.1, help="(default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")
    parser.add_argument("--out", default=os.path.join(REPO, "benchmarks", "results",
                                                      "risk_validity.json"))
    parser.add_argument("--markdown", action="store_true", help="print the docs table")
    parser.add_argument("--data-dir", help="add a folder's missing logits to its exit "
                        "outputs from its committed weights first (inference only; needs the data; "
                        "default folder: $BRANCHYNET_DATA)")
    parser.add_argument("--make-logits", action="store_true",
                        help="compute the missing logits (see --data-dir), then run")
    args = parser.parse_args(argv)
    if args.splits < 1 or not 0 < args.delta < 1:
        parser.error("--splits must be >= 1 and --delta in (0, 1)")
    if args.make_logits:
        make_logits(args.data_dir)
    start = time.perf_counter()
    docs = [run_case(CASES[name](), args.splits, args.delta, args.seed) for name in args.cases]
    doc = {"command": "python -m benchmarks.risk_validity " + " ".join(
               sys.argv[1:] if argv is None else argv),
           "machine": {"cpu": _cpu_model(), "cores": os.cpu_count(),
                       "platform": platform.platform(), "load_at_start": os.getloadavg()},
           "seconds": time.perf_counter() - start, "cases": docs}
    write_json(args.out, doc)
    if args.markdown:
        print(markdown(docs))
    return doc


if __name__ == "__main__":
    main()
