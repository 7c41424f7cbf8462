"""Export a trained B-net to ONNX and time early exit on ONNX Runtime beside Chainer.

    python -m experiments.deploy export --results results/lenet_mnist-mnist-5k
    python -m experiments.deploy time --results results/lenet_mnist-mnist-5k

``export`` reads a results folder of ``experiments.run`` (config.json, baseline.npz,
branchynet.npz, sweep_<tag>.csv), writes the B-net's parts, the baseline and the composed
batch-size-1 graph to <results>/onnx (``branchynet.deploy``), checks every part against
Chainer on real test samples and checks that ONNX Runtime takes the same exits with the
same labels as Chainer at the knee; it writes <onnx>/check.json.

``time`` measures, in one interleaved run (``branchynet.timing.interleave``), on the same
test samples at batch size 1, end to end: the baseline, every exit path, the knee and the
frontier points on Chainer and on ONNX Runtime (the parts with Python routing, and the
composed one-call graph), and the zero-overhead paths of both. It prints Table I rows for
both runtimes and the gains side by side (Chainer, ONNX Runtime, zero-overhead limit,
FLOP-ideal), and writes deploy_<tag>.json, deploy_table_<tag>.csv and a Fig. 3-style
plot with both frontiers (tradeoff_deploy_<tag>.png/.pdf) into the results folder. The
first sample of every block is left out of every figure (it pays for the previous
variant's caches); figures are given as medians of per-round means and as each sample's
fastest round, mean over samples (robust to other processes' load). See docs/deploy.md.
"""
import argparse
import csv
import json
import os
import sys

import numpy as np

import branchynet  # noqa: F401  (Chainer compatibility fixes first)
from branchynet.datasets import DatasetError
from branchynet.flops import expected_macs

EPILOG = """Bad input (no results folder, no weights, no export, ONNX packages missing) is
reported in one line and exits with status 2. Install the ONNX packages with
  pip install -e ".[deploy]"   (onnx, onnxruntime; the exporter ships with chainer 7.8.1)
"""

# A sample whose Chainer score at an exit it reached lies this close to the threshold may
# exit elsewhere on ONNX Runtime (float32 rounding differs between the runtimes).
NEAR_THRESHOLD = 1e-6
# Largest difference allowed between a part's outputs on the two runtimes, relative to
# the largest output (float32 arithmetic in another order).
PART_TOLERANCE = 1e-5


class UsageError(Exception):
    """Bad input: printed as ``error: ...`` with exit status 2."""


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m experiments.deploy", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG)
    sub = parser.add_subparsers(dest="command", required=True,
                                metavar="{export,time,recompute}")

    def common(p):
        p.add_argument("--results", required=True, metavar="DIR",
                       help="results folder of experiments.run (weights, config, sweep)")
        p.add_argument("--onnx", metavar="DIR",
                       help="folder of the exported graphs (default: DIR/onnx)")
        p.add_argument("--data-dir", help="dataset folder (default: $BRANCHYNET_DATA, then "
                                          "the per-user cache)")
        p.add_argument("--tag", default="cpu",
                       help="which of the folder's sweeps gives the knee and the frontier: "
                            "sweep_<TAG>.csv (default: %(default)s)")

    export = sub.add_parser("export", help="export the B-net and baseline to ONNX and check them",
                            description="Export the B-net's trunk segments and exit heads, the "
                                        "baseline and the composed batch-size-1 graph to ONNX; "
                                        "check them against Chainer.", epilog=EPILOG)
    common(export)
    export.add_argument("--check-samples", type=int, default=1000,
                        help="test samples on which exits and labels are compared with "
                             "Chainer's at the knee (default: %(default)s)")
    time = sub.add_parser("time", help="time both runtimes side by side",
                          description="Time Chainer and ONNX Runtime side by side at batch "
                                      "size 1, interleaved; print Table I rows for both.",
                          epilog=EPILOG)
    common(time)
    time.add_argument("--samples", type=int, default=300,
                      help="test samples timed (default: %(default)s)")
    time.add_argument("--rounds", type=int, default=5,
                      help="interleaved rounds; each figure is the median (default: %(default)s)")
    time.add_argument("--block", type=int, default=10,
                      help="samples per interleaved block (default: %(default)s)")
    time.add_argument("--ort-device", default="cpu", choices=("cpu", "cuda"),
                      help="ONNX Runtime execution provider (default: %(default)s)")
    time.add_argument("--threads", type=int, default=1,
                      help="ONNX Runtime intra-op threads (default: %(default)s, as the "
                           "project's one BLAS thread)")
    time.add_argument("--knee-only", action="store_true",
                      help="time the knee but not the other frontier points")
    time.add_argument("--max-points", type=int, default=8,
                      help="frontier points timed at most, the knee included, spread evenly "
                           "(default: %(default)s)")
    time.add_argument("--exit-mix", type=float, nargs="+", metavar="F",
                      help="also time thresholds that send these fractions of the test "
                           "samples out at each exit (e.g. the paper's knee mix 0.656 0.252 "
                           "0.092 for a weakly trained net whose knee uses one exit)")
    time.add_argument("--paper-t", action="store_true",
                      help="also time Table I's thresholds (branchynet.paper; the paper's "
                           "three networks)")
    time.add_argument("--no-progress", action="store_true", help="no progress bar")
    subsets = sub.add_parser(
        "subsets", help="time B-nets with a subset of their exits (dropped heads never run)",
        description="For every subset of the exits that keeps the last (or --subsets), build "
        "the B-net without the dropped heads, on Chainer and ONNX Runtime (composed graph); "
        "time its exit paths, rank its threshold vectors at the baseline's accuracy (or "
        "better) by the predicted time, time the fastest few; print and write "
        "exit_subsets_<tag>.json (branchynet.exit_subsets).", epilog=EPILOG)
    common(subsets)
    subsets.add_argument("--subsets", nargs="+", metavar="E+E",
                         help="subsets to try, 1-based exits joined by + (e.g. 1+3 3); the "
                              "last exit is always kept (default: every subset)")
    subsets.add_argument("--samples", type=int, default=200,
                         help="test samples timed (default: %(default)s)")
    subsets.add_argument("--rounds", type=int, default=5,
                         help="interleaved rounds (default: %(default)s)")
    subsets.add_argument("--block", type=int, default=10,
                         help="samples per interleaved block (default: %(default)s)")
    subsets.add_argument("--macs-only", action="store_true",
                         help="no timing: per subset, the point with the fewest multiply-adds "
                              "per sample at the baseline's accuracy (from the cached outputs)")
    subsets.add_argument("--candidates", type=int, default=3,
                         help="fastest predicted points timed per subset and runtime "
                              "(default: %(default)s)")
    recompute = sub.add_parser(
        "recompute", help="re-derive deploy_<tag>.json's figures and the table from the "
        "stored per-sample seconds and compare", description="Re-derive every figure of "
        "deploy_<tag>.json and deploy_table_<tag>.csv from deploy_<tag>_seconds.npz (no "
        "timing, no data) and compare; exit status 1 and the first difference if any.",
        epilog=EPILOG)
    common(recompute)
    args = parser.parse_args(argv)
    for name in ("check_samples", "samples", "rounds", "block", "threads", "max_points",
                 "candidates"):
        if getattr(args, name, 1) is not None and getattr(args, name, 1) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    args.onnx = args.onnx or os.path.join(args.results, "onnx")
    return args


def read_sweep(path):
    """Thresholds, accuracy, exit fractions, frontier and knee of a runner's sweep CSV."""
    if not os.path.isfile(path):
        raise UsageError(f"{path} does not exist: run experiments.run on this folder first "
                         f"(or pass --tag for another of its sweeps)")
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows or "knee" not in rows[0]:
        raise UsageError(f"{path} is not a sweep of experiments.run (no knee column)")
    n_t = sum(1 for k in rows[0] if k.startswith("T") and k[1:].isdigit())
    n_exits = sum(1 for k in rows[0] if k.startswith("exit") and k.endswith("_fraction"))
    sweep = {"thresholds": [[float(r[f"T{k + 1}"]) for k in range(n_t)] for r in rows],
             "accuracy": [float(r["accuracy"]) for r in rows],
             "exit_fractions": [[float(r[f"exit{k + 1}_fraction"]) for k in range(n_exits)]
                                for r in rows],
             "frontier": [i for i, r in enumerate(rows) if int(r["frontier"])],
             "knee": next((i for i, r in enumerate(rows) if int(r["knee"])), None)}
    if sweep["knee"] is None:
        raise UsageError(f"{path} marks no knee: run experiments.run on this folder again")
    return sweep


def load_results(args):
    """Experiment, trained networks, test data and sweep of a results folder."""
    from experiments.experiment import Experiment
    from branchynet.training import load_weights
    if not os.path.isdir(args.results):
        raise UsageError(f"{args.results} is not a folder: pass the results folder of "
                         f"experiments.run (e.g. ./dev.sh run --network lenet_mnist --out DIR)")
    try:
        exp = Experiment.from_results(args.results, log=lambda *a: None)
    except SystemExit as err:
        raise UsageError(str(err).removeprefix("error: ")) from None
    for name in ("baseline.npz", "branchynet.npz"):
        if not os.path.isfile(os.path.join(args.results, name)):
            raise UsageError(f"{args.results}/{name} is missing: train there first with "
                             f"experiments.run --out {args.results}")
    sweep = read_sweep(os.path.join(args.results, f"sweep_{args.tag}.csv"))
    exp.s.data_dir = args.data_dir
    exp.s.no_progress = True
    try:
        exp.load_data()
    except SystemExit as err:
        raise UsageError(str(err).removeprefix("error: ")) from None
    except DatasetError as err:  # its message names the folders looked in and the fix
        raise UsageError(str(err)) from None
    exp.build_networks()
    load_weights(os.path.join(args.results, "baseline.npz"), exp.baseline)
    load_weights(os.path.join(args.results, "branchynet.npz"), exp.branchy)
    return exp, sweep


def _require_onnx():
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as err:
        raise UsageError(f"{err.name} is not installed: pip install -e \".[deploy]\" "
                         f"(with PIP_CONSTRAINT=constraints/build.txt, see README)") from None


def borderline(scores, thresholds, exits):
    """Samples whose score at some exit they reached (before their exit, or at it) lies
    within ``NEAR_THRESHOLD`` (relative, at least absolute) of that exit's threshold."""
    near = np.zeros(len(exits), bool)
    for n, t in enumerate(thresholds):
        reached = exits >= n
        if np.isfinite(t):
            near |= reached & (np.abs(scores[:, n] - t) <= NEAR_THRESHOLD * max(1.0, abs(t)))
    return near


def compare_exits(ref_labels, ref_exits, labels, exits, near):
    """Counts of samples whose exit or label differ from the reference, and how many of
    those are near a threshold."""
    differ = (ref_labels != labels) | (ref_exits != exits)
    return {"samples": int(len(labels)), "differ": int(differ.sum()),
            "differ_near_threshold": int((differ & near).sum()),
            "differ_elsewhere": int((differ & ~near).sum()),
            "near_threshold": int(near.sum())}


def command_export(args):
    """Export, then check the parts and the exits; returns the exit status."""
    import chainer
    from branchynet.deploy import OnnxBranchyNet, compare_parts, export_bnet
    from branchynet.io import write_json
    from branchynet.provenance import file_sha256
    from branchynet.sweep import collect_exit_outputs
    _require_onnx()
    exp, sweep = load_results(args)
    x = exp.data.test_x
    knee = sweep["thresholds"][sweep["knee"]]
    criterion = exp.config.get("criterion", "entropy")
    manifest = export_bnet(
        exp.branchy, exp.baseline, x, args.onnx, thresholds=knee, criterion=criterion,
        info={"network": exp.spec.name, "title": exp.spec.title,
              "results": os.path.normpath(args.results),
              "weights_sha256": {n: file_sha256(os.path.join(args.results, f"{n}.npz"))
                                 for n in ("baseline", "branchynet")},
              "knee_accuracy": sweep["accuracy"][sweep["knee"]]})
    print(f"exported B-{exp.spec.title} ({manifest['n_exits']} exits) and {exp.spec.title} to "
          f"{args.onnx}: "
          + ", ".join(sorted(f for f in os.listdir(args.onnx) if f.endswith(".onnx"))))
    runtime = OnnxBranchyNet(args.onnx)
    parts = compare_parts(exp.branchy, exp.baseline, runtime, x[:100])
    bad_parts = [name for name, d in parts.items()
                 if d["max_abs"] > PART_TOLERANCE * max(1.0, d["scale"])]
    print(f"largest |ONNX Runtime - Chainer| on {min(100, len(x))} test samples, per part "
          f"(tolerance {PART_TOLERANCE:g} x max(1, largest output)):")
    for name, d in parts.items():
        print(f"  {name:<16} {d['max_abs']:.3g}   (largest output {d['scale']:.3g})")

    count = min(args.check_samples, len(x))
    xs = x[:count]
    with chainer.using_config("train", False):
        outputs = collect_exit_outputs(exp.branchy, xs, exp.data.test_y[:count],
                                       criterion=criterion)
    labels, exits = [], []
    for start in range(0, count, 100):
        lab, ex = exp.branchy.predict(xs[start:start + 100], knee, criterion)
        labels.append(lab)
        exits.append(ex)
    ref_labels, ref_exits = np.concatenate(labels), np.concatenate(exits)
    near = borderline(outputs.scores, knee, ref_exits)
    ort_batched = [runtime.predict(xs[s:s + 100], knee) for s in range(0, count, 100)]
    checks = {"batched": compare_exits(ref_labels, ref_exits,
                                       np.concatenate([a for a, _ in ort_batched]),
                                       np.concatenate([b for _, b in ort_batched]), near)}
    one = [runtime.predict(xs[i:i + 1], knee) for i in range(count)]
    checks["batch_size_1"] = compare_exits(ref_labels, ref_exits,
                                           np.concatenate([a for a, _ in one]),
                                           np.concatenate([b for _, b in one]), near)
    if criterion == "entropy":
        one = [runtime.predict_one(xs[i:i + 1], knee) for i in range(count)]
        checks["composed_graph"] = compare_exits(ref_labels, ref_exits,
                                                 np.concatenate([a for a, _ in one]),
                                                 np.concatenate([b for _, b in one]), near)
    print(f"exits and labels at the knee T = {', '.join(f'{t:g}' for t in knee)} on {count} "
          f"test samples, ONNX Runtime vs Chainer's predict:")
    for name, c in checks.items():
        print(f"  {name:<15} {c['differ']} differ ({c['differ_near_threshold']} of them within "
              f"{NEAR_THRESHOLD:g} of a threshold; {c['near_threshold']} samples are)")
    write_json(os.path.join(args.onnx, "check.json"),
               {"parts": parts, "part_tolerance": PART_TOLERANCE, "knee": knee,
                "near_threshold": NEAR_THRESHOLD, "exits": checks})
    failed = bad_parts + [n for n, c in checks.items() if c["differ_elsewhere"]]
    if failed:
        print(f"error: ONNX Runtime disagrees with Chainer: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def thresholds_for_mix(outputs, mix):
    """Thresholds under which the test samples leave at each exit in the proportions
    ``mix`` (as ``benchmarks/latency.py``): at exit n, among the samples still in, the k
    with the lowest scores leave; the threshold is the (k+1)-th lowest score."""
    mix = np.asarray(mix, np.float64)
    if len(mix) != outputs.n_exits or (mix < 0).any() or mix.sum() <= 0:
        raise UsageError(f"--exit-mix needs {outputs.n_exits} non-negative fractions "
                         f"(one per exit), got {list(mix)}")
    mix = mix / mix.sum()
    remaining = np.arange(len(outputs.labels))
    thresholds = []
    for n in range(outputs.n_exits - 1):
        k = int(round(mix[n] * len(outputs.labels)))
        scores = np.sort(outputs.scores[remaining, n])
        t = float(scores[k]) if k < len(scores) else float("inf")
        thresholds.append(t)
        remaining = remaining[~(outputs.scores[remaining, n] < t)]
    return thresholds


def _point_name(thresholds):
    from experiments.experiment import point_name
    return point_name(thresholds)


RUNTIMES = (("chainer", "Chainer"), ("ort", "ONNX Runtime, parts"),
            ("ort-1g", "ONNX Runtime, one graph"))


def summarise(timings, fractions, costs, n_exits, points, focus):
    """Per runtime: baseline, exit paths, the point ``focus`` (whose samples leave at each
    exit in ``fractions``) and the frontier, and the gain at ``focus`` with
    what separates it from the FLOP-ideal gain, step by step (each paired per round):

    FLOP-ideal (time in proportion to multiply-adds) -> with one call's fixed cost (ONNX
    Runtime: a graph that only returns its input) -> zero-overhead limit (the measured
    exit paths alone, mixed at the knee's exit fractions) -> with the earlier exits' heads
    (no decisions) -> measured (the decisions too).
    """
    fractions = np.asarray(fractions)
    knee_name = focus
    flop_ideal = costs["baseline_macs"] / expected_macs(fractions, costs["path_macs"])
    flop_heads = costs["baseline_macs"] / expected_macs(fractions, costs["macs"])
    out = {"flop_ideal_gain": flop_ideal, "flop_gain_with_earlier_heads": flop_heads,
           "point": focus, "exit_fractions": fractions.tolist(), "runtimes": {}}
    for key, title in RUNTIMES:
        ref = "ort" if key == "ort-1g" else key  # the one graph shares baseline and paths

        def combine(kind):
            return timings.combine({f"{ref}:exit{n + 1}_{'alone' if n == 0 else kind}": f
                                    for n, f in enumerate(fractions)})
        zero, cascade = combine("alone"), combine("cascade")
        scored = None
        if f"{ref}:exit1_scored" in timings.rounds_ms:
            scored = timings.combine({f"{ref}:exit{n + 1}_scored": f
                                      for n, f in enumerate(fractions)})
        knee_ms = timings.rounds_ms[f"{key}:{knee_name}"]
        base = timings.rounds_ms[f"{ref}:baseline"]
        r = {
            "title": title,
            "baseline": timings.stats(f"{ref}:baseline"),
            "paths": [timings.stats(f"{key}:exit{n + 1}") for n in range(n_exits)],
            "paths_alone": [timings.stats(f"{ref}:exit{n + 1}_alone") for n in range(n_exits)],
            "point": timings.stats(f"{key}:{knee_name}"),
            "gain": timings.ratio(f"{ref}:baseline", f"{key}:{knee_name}"),
            "zero_overhead_ms": float(np.median(zero)),
            "zero_overhead_gain": timings.ratio(f"{ref}:baseline", zero),
            "cascade_ms": float(np.median(cascade)),
            "cascade_gain": timings.ratio(f"{ref}:baseline", cascade),
            "earlier_heads": timings.ratio(cascade, zero),
            "decisions": timings.ratio(knee_ms, cascade),
            "decision_share": float(np.median((knee_ms - cascade) / knee_ms)),
            "gain_vs_flop_ideal": float(np.median(base / knee_ms)) / flop_ideal,
            "frontier": {name: {"stats": timings.stats(f"{key}:{name}"),
                                "gain": timings.ratio(f"{ref}:baseline", f"{key}:{name}")}
                         for name in points},
        }
        if scored is not None:  # the decisions' two parts: the scores, then the routing
            r["scores_share"] = float(np.median((scored - cascade) / knee_ms))
            r["routing_share"] = float(np.median((knee_ms - scored) / knee_ms))
        if f"{ref}:call" in timings.rounds_ms:
            call = timings.rounds_ms[f"{ref}:call"]
            r["call"] = timings.stats(f"{ref}:call")
            r["flop_ideal_with_call_gain"] = float(np.median(
                base / (call + (base - call) / flop_ideal)))
        out["runtimes"][key] = r
    return out


def derive_timing(exp, seconds, raw, block, points, focus, costs):
    """Every figure of ``time`` from the per-sample seconds (variant -> rounds x samples):
    the per-round and fastest-round summaries, the block-start effect and the table rows.
    ``focus``: ``(label, accuracy %, thresholds, exit fractions, point name)`` per point;
    ``raw``: the per-round means with the load. Returns a dict (``record``: its JSON part).
    """
    from branchynet.timing import Interleaved
    seconds = {k: np.asarray(v, np.float64) for k, v in seconds.items()}
    n = next(iter(seconds.values())).shape[1]
    # The first sample of every block runs right after another variant's block and pays
    # for what that one left in the caches: measured here, 2-5x slower than the rest of
    # its block for ONNX Runtime, and by how much depends on which variant precedes it in
    # the rotation (Chainer's baseline before ONNX Runtime's baseline). Those samples are
    # left out of every figure (the raw per-round means are kept in the JSON).
    warm_cols = np.arange(n) % block != 0
    if not warm_cols.any():
        warm_cols[:] = True
    block_start = {}
    if (~warm_cols).any():
        block_start = {k: {"first_of_block_us": 1e6 * float(v[:, ~warm_cols].min(axis=0).mean()),
                           "rest_us": 1e6 * float(v[:, warm_cols].min(axis=0).mean())}
                       for k, v in seconds.items()}
    timings = Interleaved({k: 1e3 * v[:, warm_cols].mean(axis=1)
                           for k, v in seconds.items()}, int(warm_cols.sum()), raw.load)
    # The same runs, each sample at its fastest round, averaged over samples (the statistic
    # of benchmarks/latency.py): a call preempted by another process weighs on a mean of
    # microsecond calls; each sample's own fastest round discards that and keeps the mix
    # of exits (a median over samples would not). One value, so no interval.
    robust = Interleaved({k: [1e3 * v[:, warm_cols].min(axis=0).mean()]
                          for k, v in seconds.items()}, timings.samples, raw.load)
    n_exits = len(costs["path_macs"])
    robust_focus = {label: summarise(robust, f, costs, n_exits, points, name)
                    for label, _, _, f, name in focus}
    summarised = [(label, acc, t, f, summarise(timings, f, costs, n_exits, points, name))
                  for label, acc, t, f, name in focus]
    record = {
        "summary": summarised[0][4],
        "summaries": {label: sm for label, _, _, _, sm in summarised},
        "summaries_fastest_round_per_sample": robust_focus,
        "statistic": "first sample of every block left out; per-round means (summaries) and "
                     "each sample's fastest round, mean over samples "
                     "(summaries_fastest_round_per_sample)",
        "raw_measurement": raw.to_json(), "block_start_effect": block_start,
        "measurement": timings.to_json()}
    return {"record": record, "rows": table_rows(exp, summarised, costs), "timings": timings,
            "robust": robust, "robust_focus": robust_focus, "focus": summarised,
            "block_start": block_start, "focus_specs": focus}


def command_recompute(args):
    """Re-derive deploy_<tag>.json's figures and deploy_table_<tag>.csv from the stored
    per-sample seconds; returns 1 (and names the first difference) if any differs."""
    import tempfile
    from branchynet.io import read_json
    from branchynet.report import write_csv
    from branchynet.timing import Interleaved
    from experiments.compare import csv_difference, json_difference
    from experiments.experiment import Experiment
    stem = os.path.join(args.results, f"deploy_{args.tag}")
    if not os.path.isfile(stem + ".json"):
        raise UsageError(f"{stem}.json does not exist: run the time command on this folder")
    record = read_json(stem + ".json")
    if "focus" not in record or not os.path.isfile(stem + "_seconds.npz"):
        raise UsageError(f"{stem}.json keeps no per-sample seconds ({stem}_seconds.npz): "
                         f"it was timed before they were stored; time the folder again")
    exp = Experiment.from_results(args.results, log=lambda *a: None)
    exp.load_cached_outputs()
    exp.evaluate()
    with np.load(stem + "_seconds.npz") as data:
        seconds = {k: data[k] for k in data.files}
    raw = Interleaved.from_json(record["raw_measurement"])
    raw = Interleaved({k: 1e3 * v.astype(np.float64).mean(axis=1) for k, v in seconds.items()},
                      raw.samples, raw.load)
    focus = [(f["label"], f["accuracy"], record["points"][f["point"]],
              record["summaries"][f["label"]]["exit_fractions"], f["point"])
             for f in record["focus"]]
    derived = derive_timing(exp, seconds, raw, record["settings"]["block"], record["points"],
                            focus, exp.costs)
    problems = []
    found = json_difference({k: record.get(k) for k in derived["record"]},
                            json.loads(json.dumps(derived["record"], default=_plain)))
    if found:
        problems.append(f"{stem}.json: {found}")
    with tempfile.TemporaryDirectory() as tmp:
        table = os.path.join(tmp, "table.csv")
        write_csv(table, derived["rows"])
        committed = os.path.join(args.results, f"deploy_table_{args.tag}.csv")
        found = csv_difference(committed, table)
        if found:
            problems.append(f"{committed}: {found}")
    for problem in problems:
        print(f"error: {problem} (re-derived from {stem}_seconds.npz)")
    if not problems:
        print(f"{stem}.json and deploy_table_{args.tag}.csv: identical to what "
              f"{os.path.basename(stem)}_seconds.npz gives")
    return 1 if problems else 0


def _plain(obj):
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"cannot store {type(obj).__name__} in JSON")


def table_rows(exp, focus, costs):
    """Table I rows for every runtime: the baseline, and the B-net at each point of
    ``focus`` (a list of ``(label, accuracy %, thresholds, exit fractions, summary)``)."""
    from experiments.experiment import ROW_KEYS
    rows = []
    base_acc = 100 * float(exp.baseline_outputs.exit_accuracies()[0])
    for key, title in RUNTIMES:
        r = focus[0][4]["runtimes"][key]
        base = dict.fromkeys(ROW_KEYS)
        base.update(network=exp.spec.title, selection=title, accuracy=base_acc,
                    time_ms=r["baseline"]["median_ms"], time_q1_ms=r["baseline"]["q1_ms"],
                    time_q3_ms=r["baseline"]["q3_ms"], macs=costs["baseline_macs"])
        rows.append(base)
        for label, accuracy, thresholds, fractions, summary in focus:
            r = summary["runtimes"][key]
            row = dict.fromkeys(ROW_KEYS)
            row.update(network=f"B-{exp.spec.title}", selection=f"{title}: {label}",
                       accuracy=accuracy, time_ms=r["point"]["median_ms"],
                       time_q1_ms=r["point"]["q1_ms"], time_q3_ms=r["point"]["q3_ms"],
                       gain=r["gain"]["median"], gain_low=r["gain"]["low"],
                       gain_high=r["gain"]["high"], gain_significant=r["gain"]["significant"],
                       thresholds=list(thresholds), exit_percent=[100 * f for f in fractions],
                       macs=expected_macs(fractions, costs["macs"]))
            rows.append(row)
    return rows


def format_side_by_side(exp, summary, label, robust=False):
    """The gain at one point on each runtime and the steps down from the FLOP-ideal gain
    (``robust``: each sample's fastest round, mean over samples; only the rows, then)."""
    def interval(r):
        return f"{r['median']:.2f}x [{r['low']:.2f}, {r['high']:.2f}]"
    if robust:
        return "\n".join(["  the same runs, each sample at its fastest round (discards "
                          "preemption by other processes), mean over samples:"]
                         + [_runtime_line(summary["runtimes"][key], lambda r: f"{r['median']:.2f}x")
                            for key, _ in RUNTIMES])
    lines = [f"B-{exp.spec.title} at {label} {summary['point']} (exits "
             f"{', '.join(f'{100 * f:.1f}' for f in summary['exit_fractions'])}%): "
             f"FLOP-ideal gain {summary['flop_ideal_gain']:.2f}x "
             f"({summary['flop_gain_with_earlier_heads']:.2f}x counting the earlier heads)",
             f"  {'runtime':<25}{'baseline':>10}{'B-net':>9}  {'gain [per-round range]':<23}"
             f"{'of FLOP-ideal':>14}{'FLOP-ideal+call':>16}{'zero-overhead':>14}"
             f"{'+earlier heads':>15}{'decisions':>10}",
             f"  {'':<25}{'(ms)':>10}{'(ms)':>9}  {'':<23}{'':>14}{'(gain)':>16}{'(gain)':>14}"
             f"{'(gain)':>15}{'(share)':>10}"]
    for key, _ in RUNTIMES:
        lines.append(_runtime_line(summary["runtimes"][key], interval))
    lines.append("  FLOP-ideal+call: the gain if all but one call's fixed cost (a graph that only "
                 "returns its input) scaled with the multiply-adds; zero-overhead: the exit paths "
                 "alone at the knee's exit fractions; +earlier heads: with the earlier exits' "
                 "heads, no decisions; decisions: share of the point's latency above that (ONNX "
                 "Runtime: the exits' scores computed in the graph, then comparisons and "
                 "routing: If nodes, or Python between the parts)")
    return "\n".join(lines)


def _load_text(load):
    """``'7.5 -> 8.3'``: the 1-minute load average before and after a measurement."""
    before, after = (load or {}).get("before"), (load or {}).get("after")
    return f"{before[0]} -> {after[0]}" if before and after else "unknown"


def _runtime_line(r, interval):
    with_call = r.get("flop_ideal_with_call_gain")
    return (f"  {r['title']:<25}{r['baseline']['median_ms']:>10.4f}"
            f"{r['point']['median_ms']:>9.4f}  {interval(r['gain']):<23}"
            f"{100 * r['gain_vs_flop_ideal']:>13.0f}%"
            f"{'-' if with_call is None else f'{with_call:.2f}x':>16}"
            f"{r['zero_overhead_gain']['median']:>13.2f}x"
            f"{r['cascade_gain']['median']:>14.2f}x"
            f"{100 * r['decision_share']:>9.1f}%"
            + ("" if "scores_share" not in r else
               f" = {100 * r['scores_share']:.1f}% scores + {100 * r['routing_share']:.1f}% routing"))


def plot(path_stem, exp, sweep, summary, timings, points, costs, title):
    """Fig. 3-style panels: Chainer and ONNX Runtime (each: grid predicted from its exit
    paths, measured frontier, baseline, knee), and both frontiers relative to their own
    baseline beside the FLOP-ideal cost."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from branchynet.io import atomic_path
    from branchynet.report import tradeoff_figure
    acc = 100 * np.asarray(sweep["accuracy"])
    fractions = np.asarray(sweep["exit_fractions"])
    front = [i for i in sweep["frontier"] if _point_name(sweep["thresholds"][i]) in points]
    base_acc = 100 * float(exp.baseline_outputs.exit_accuracies()[0])
    k = sweep["knee"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for ax, key in zip(axes, ("chainer", "ort-1g")):
        r = summary["runtimes"][key]
        ref = "ort" if key == "ort-1g" else key
        paths = [timings.median(f"{key}:exit{n + 1}") for n in range(fractions.shape[1])]
        tradeoff_figure(
            f"{r['title']}", fractions @ np.asarray(paths), acc,
            [timings.median(f"{key}:{_point_name(sweep['thresholds'][i])}") for i in front],
            acc[front], (timings.median(f"{ref}:baseline"), base_acc),
            (r["point"]["median_ms"], acc[k]),
            labels=(f"B-{exp.spec.title}", exp.spec.title), ax=ax)
    ax = axes[2]
    ideal = np.asarray([fractions[i] @ np.asarray(costs["path_macs"]) for i in front]) \
        / costs["baseline_macs"]
    ax.plot(ideal, acc[front], "--", color="0.4", label="FLOP-ideal (MACs / baseline's)")
    for (key, name), color in zip(RUNTIMES, ("C0", "C2", "C1")):
        ref = "ort" if key == "ort-1g" else key
        rel = [timings.median(f"{key}:{_point_name(sweep['thresholds'][i])}")
               / timings.median(f"{ref}:baseline") for i in front]
        ax.plot(rel, acc[front], "-o", ms=3, color=color, label=name)
    ax.axvline(1.0, color="C3", lw=0.8)
    ax.set_xlabel("Runtime relative to the same runtime's baseline")
    ax.set_ylabel("Accuracy (%)")
    ax.set_title("Frontiers, relative", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    for ext in ("png", "pdf"):
        with atomic_path(f"{path_stem}.{ext}") as tmp:
            fig.savefig(tmp, format=ext, dpi=120)
    plt.close(fig)


def command_time(args):
    """Time both runtimes, interleaved; print and write the tables and the plot."""
    from branchynet.deploy import OnnxBranchyNet, chainer_variants, ort_variants, read_manifest
    from branchynet.io import atomic_path, write_json
    from branchynet.report import format_table, machine_info, write_csv
    from branchynet.timing import Interleaved, interleave, interval_coverage, loadavg
    _require_onnx()
    import chainer
    import onnxruntime
    manifest = read_manifest(args.onnx)  # before the data: a missing export fails fast
    exp, sweep = load_results(args)
    exp.load_cached_outputs()
    exp.evaluate()
    costs = exp.costs
    runtime = OnnxBranchyNet(args.onnx, device=args.ort_device, threads=args.threads)
    if manifest["criterion"] != "entropy":
        raise UsageError("time compares the composed graph, which decides by entropy; this "
                         f"export uses {manifest['criterion']}")
    x = exp.data.test_x[:args.samples]
    k = sweep["knee"]
    knee_name = _point_name(sweep["thresholds"][k])
    chosen = [] if args.knee_only else [i for i in sweep["frontier"] if i != k]
    if len(chosen) > args.max_points - 1:
        chosen = [chosen[int(j)] for j in np.linspace(0, len(chosen) - 1, args.max_points - 1)]
    chosen = sorted(set(chosen) | {k})
    points = {_point_name(sweep["thresholds"][i]): sweep["thresholds"][i] for i in chosen}
    focus = [("knee", 100 * sweep["accuracy"][k], sweep["thresholds"][k],
              sweep["exit_fractions"][k], knee_name)]
    if args.exit_mix:
        from branchynet.sweep import evaluate_grid
        mix = thresholds_for_mix(exp.outputs, args.exit_mix)
        on_test = evaluate_grid(exp.outputs, [mix])
        points[_point_name(mix)] = mix
        one = [k for k, f in enumerate(args.exit_mix) if f > 0]
        label = f"all at exit {one[0] + 1}" if len(one) == 1 else "exit mix"
        focus.append((label, 100 * float(on_test.accuracy[0]), mix,
                      on_test.exit_fractions[0].tolist(), _point_name(mix)))
    if args.paper_t:
        from branchynet.paper import paper_thresholds
        from branchynet.sweep import evaluate_grid
        paper = paper_thresholds(exp.spec.name)
        if paper is None or len(paper) != exp.outputs.n_exits - 1:
            raise UsageError(f"--paper-t: Table I has no thresholds for {exp.spec.name} with "
                             f"{exp.outputs.n_exits} exits")
        on_test = evaluate_grid(exp.outputs, [paper])
        points[_point_name(paper)] = paper
        focus.append(("paper's T", 100 * float(on_test.accuracy[0]), paper,
                      on_test.exit_fractions[0].tolist(), _point_name(paper)))
    variants = {**chainer_variants(exp.branchy, exp.baseline, x, points),
                **ort_variants(runtime, x, points)}
    print(f"timing {len(variants)} variants on {len(x)} test samples at batch size 1, "
          f"{args.rounds} interleaved rounds (load {loadavg()})", flush=True)
    raw = interleave(variants, len(x), rounds=args.rounds, block=args.block, warmup=10,
                     progress=not args.no_progress)
    # Per-sample seconds as float32 (every figure is re-derived from them: recompute).
    seconds = {k: v.astype(np.float32) for k, v in raw.seconds.items()}
    raw = Interleaved({k: 1e3 * v.astype(np.float64).mean(axis=1) for k, v in seconds.items()},
                      len(x), raw.load)
    derived = derive_timing(exp, seconds, raw, args.block, points, focus, costs)
    timings, robust = derived["timings"], derived["robust"]
    block_start, robust_focus, focus = (derived["block_start"], derived["robust_focus"],
                                        derived["focus"])
    exits = {}
    scores = exp.outputs.scores[:len(x)]
    for name in points:
        near = borderline(scores, points[name], variants[f"chainer:{name}"].exits)
        for key in ("ort", "ort-1g"):
            v, r = variants[f"{key}:{name}"], variants[f"chainer:{name}"]
            exits[f"{key}:{name}"] = compare_exits(r.labels, r.exits, v.labels, v.exits, near)
    rows = table_rows(exp, focus, costs)
    machine = machine_info(chainer.get_device("@numpy"))
    machine.update(onnxruntime=onnxruntime.__version__, ort_device=args.ort_device,
                   ort_threads=args.threads,
                   blas_threads=os.environ.get("OPENBLAS_NUM_THREADS", "unset"))
    m = timings.to_json()
    title = (f"Table I rows: {exp.spec.title} on {exp.config['dataset']}, Chainer vs ONNX Runtime "
             f"{onnxruntime.__version__} ({args.ort_device}, {args.threads} thread(s)) on "
             f"{machine['cpu']}, {machine.get('cpu_count')} cores; time = ms per sample at batch "
             f"size 1, end to end, median of {m['rounds']} interleaved rounds over {len(x)} test "
             f"samples, the first of each block of {args.block} left out (gain range: per-round gains, "
             f"{100 * interval_coverage(m['rounds']):.1f}% coverage); load {timings.load}")
    print(format_table(rows, title))
    for label, _, _, _, summary in focus:
        print()
        print(format_side_by_side(exp, summary, label))
        print(format_side_by_side(exp, robust_focus[label], label, robust=True))
    if block_start:
        worst = max(block_start, key=lambda k: block_start[k]["first_of_block_us"]
                    / block_start[k]["rest_us"])
        w = block_start[worst]
        print(f"left out: the first sample of each block, up to "
              f"{w['first_of_block_us'] / w['rest_us']:.1f}x slower than the rest of its block "
              f"({worst}: {w['first_of_block_us']:.1f} vs {w['rest_us']:.1f} us, each sample's "
              f"fastest round; all variants in the JSON, block_start_effect)")
    differ = {k: v for k, v in exits.items() if v["differ"]}
    print(f"exits and labels vs Chainer on the timed samples: "
          + ("identical at every point" if not differ else
             "; ".join(f"{k}: {v['differ']} differ ({v['differ_near_threshold']} near a "
                       f"threshold)" for k, v in differ.items())))
    tag = args.ort_device if args.threads == 1 else f"{args.ort_device}-{args.threads}t"
    stem = os.path.join(args.results, f"deploy_{tag}")
    with atomic_path(stem + "_seconds.npz") as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **seconds)
    write_json(stem + ".json", {
        "title": title, "machine": machine, "settings": vars(args),
        **derived["record"], "exits_vs_chainer": exits, "points": points, "knee": knee_name,
        "focus": [{"label": label, "accuracy": acc, "point": name}
                  for label, acc, _, _, name in derived["focus_specs"]],
        "seconds_file": os.path.basename(stem) + "_seconds.npz",
        "costs": {k: costs[k] for k in ("path_macs", "macs", "head_macs", "baseline_macs")}})
    write_csv(os.path.join(args.results, f"deploy_table_{tag}.csv"), rows)
    plot(os.path.join(args.results, f"tradeoff_deploy_{tag}"), exp, sweep,
         robust_focus[focus[0][0]], robust, points, costs,
         f"B-{exp.spec.title} on {exp.config['dataset']}: Chainer vs ONNX Runtime "
         f"{onnxruntime.__version__} ({args.ort_device}), {machine['cpu']}, batch size 1; each "
         f"sample's fastest of {m['rounds']} interleaved rounds, mean over {len(x)} samples "
         f"(first of each block left out); 1-min load {_load_text(raw.load)}")
    print(f"wrote {stem}.json, deploy_table_{tag}.csv and tradeoff_deploy_{tag}.png/.pdf in "
          f"{args.results}")
    return 1 if any(v["differ_elsewhere"] for v in exits.values()) else 0


def _fastest_round_ms(seconds, block):
    """Each sample's fastest round, mean over samples (ms), first of each block left out."""
    warm = np.arange(seconds.shape[1]) % block != 0
    if not warm.any():
        warm[:] = True
    return 1e3 * float(seconds[:, warm].min(axis=0).mean())


def command_subsets(args):
    """Exit subsets on both runtimes: exit paths, then the fastest candidates at the
    baseline's accuracy, each phase in one interleaved run."""
    import chainer
    import onnxruntime
    from branchynet import exit_subsets as es
    from branchynet.deploy import OnnxBranchyNet, Timed, export_bnet
    from branchynet.io import write_json
    from branchynet.report import machine_info
    from branchynet.sweep import exit_indices
    from branchynet.timing import EndToEnd, forced_exit_thresholds, interleave, loadavg
    _require_onnx()
    exp, sweep = load_results(args)
    exp.load_cached_outputs()
    n_exits = exp.branchy.n_exits
    if args.subsets:
        try:
            chosen = [es.check_subset([int(e) - 1 for e in text.split("+")], n_exits)
                      for text in args.subsets]
        except ValueError as err:
            raise UsageError(f"--subsets: {err}") from None
    else:
        chosen = es.all_subsets(n_exits)
    x = exp.data.test_x[:args.samples]
    cpu = chainer.get_device("@numpy")
    outputs, grid = exp.outputs, exp.config["grid"]
    base_acc = float(exp.baseline_outputs.exit_accuracies()[0])
    min_correct = int(round(base_acc * len(outputs)))
    exp.evaluate()
    fewest = {}
    for keep in chosen:
        macs = es.subset_macs(exp.costs, keep)
        best = es.fastest_candidates(outputs, keep, grid, macs, min_correct, 1)
        fewest[es.subset_name(keep)] = {"exit_macs": macs, "fewest": best[0] if best else None}
    if args.macs_only:
        print(format_subset_macs(fewest, exp.costs["baseline_macs"], base_acc, exp.spec.title))
        return 0
    nets, runtimes = {}, {}
    for keep in chosen:
        name = es.subset_name(keep)
        nets[name] = es.subset_network(exp.branchy, keep)
        folder = args.onnx if len(keep) == n_exits else os.path.join(
            args.onnx, "subsets", name.replace(" ", "-").replace("+", "_"))
        if len(keep) < n_exits:
            export_bnet(nets[name], exp.baseline, x, folder, criterion="entropy",
                        info={"network": exp.spec.name, "exits_kept": [k + 1 for k in keep]})
        runtimes[name] = OnnxBranchyNet(folder)
    full = runtimes[es.subset_name(tuple(range(n_exits)))] if tuple(range(n_exits)) in chosen \
        else OnnxBranchyNet(args.onnx)
    zero = np.zeros(1, np.int32)
    baselines = {"chainer:baseline": EndToEnd(exp.baseline, x, [], cpu),
                 "ort:baseline": Timed(lambda xi: (full.predict_baseline(xi), zero), x)}

    def pair(name, keep, thresholds):
        """The Chainer and ONNX Runtime variants of one subset at ``thresholds``."""
        rt = runtimes[name]
        return {"chainer": EndToEnd(nets[name], x, thresholds, cpu),
                "ort": Timed(lambda xi, t=list(thresholds): rt.predict_one(xi, t), x)}

    variants = dict(baselines)
    for keep in chosen:
        name = es.subset_name(keep)
        for j in range(len(keep)):
            for key, v in pair(name, keep, forced_exit_thresholds(j, len(keep))).items():
                variants[f"{key}:{name}:exit{keep[j] + 1}"] = v
    print(f"exit paths of {len(chosen)} subsets: {len(variants)} variants on {len(x)} test "
          f"samples, {args.rounds} rounds (load {loadavg()})", flush=True)
    paths = interleave(variants, len(x), rounds=args.rounds, block=args.block, warmup=3)
    path_ms = {k: _fastest_round_ms(v, args.block) for k, v in paths.seconds.items()}
    result, variants = {}, dict(baselines)
    for keep in chosen:
        name = es.subset_name(keep)
        result[name] = {"exits": [k + 1 for k in keep], "runtimes": {}}
        for key in ("chainer", "ort"):
            ms = [path_ms[f"{key}:{name}:exit{k + 1}"] for k in keep]
            cands = es.fastest_candidates(outputs, keep, grid, ms, min_correct, args.candidates)
            result[name]["runtimes"][key] = {"path_ms": ms, "candidates": cands}
            for c, cand in enumerate(cands):
                variants[f"{key}:{name}:c{c}"] = pair(name, keep, cand["thresholds"])[key]
    print(f"candidates at the baseline's accuracy ({100 * base_acc:.2f}%): {len(variants)} "
          f"variants (load {loadavg()})", flush=True)
    points = interleave(variants, len(x), rounds=args.rounds, block=args.block, warmup=3)
    point_ms = {k: _fastest_round_ms(v, args.block) for k, v in points.seconds.items()}
    scores = outputs.scores[:len(x)]
    mismatches = []
    for keep in chosen:
        name = es.subset_name(keep)
        for key in ("chainer", "ort"):
            r = result[name]["runtimes"][key]
            base = point_ms[f"{key}:baseline"]
            r["baseline_ms"] = base
            for c, cand in enumerate(r["candidates"]):
                cand["measured_ms"] = point_ms[f"{key}:{name}:c{c}"]
                v = variants[f"{key}:{name}:c{c}"]
                want = exit_indices(outputs, [cand["full_thresholds"]])[0][:len(x)]
                got = np.asarray(keep)[v.exits]
                labels = outputs.predictions[np.arange(len(x)), want]
                near = borderline(scores, cand["full_thresholds"], want)
                differ = ((got != want) | (v.labels != labels)) & ~near
                if differ.any():
                    mismatches.append(f"{key} {name} T={cand['thresholds']}: "
                                      f"{int(differ.sum())} samples")
            best = es.choose(r["candidates"], [c["measured_ms"] for c in r["candidates"]])
            if best is not None:
                best["gain"] = base / best["measured_ms"]
            r["fastest"] = best
    machine = machine_info(cpu)
    machine.update(onnxruntime=onnxruntime.__version__, ort_threads=1,
                   blas_threads=os.environ.get("OPENBLAS_NUM_THREADS", "unset"))
    record = {"command": "python -m experiments.deploy " + " ".join(sys.argv[1:]),
              "machine": machine, "settings": {k: v for k, v in vars(args).items()},
              "baseline_accuracy": base_acc, "samples": len(x),
              "statistic": "each sample's fastest round, mean over samples, first of each "
                           "block left out; ONNX Runtime: the composed graph (one call)",
              "load": {"paths": paths.load, "points": points.load}, "subsets": result,
              "fewest_macs": fewest, "baseline_macs": exp.costs["baseline_macs"],
              "decisions_differ": mismatches}
    tag = args.tag
    write_json(os.path.join(args.results, f"exit_subsets_{tag}.json"), record)
    print(format_subsets(record, exp.spec.title))
    for m in mismatches:
        print(f"error: exits or labels differ from the cached outputs: {m}", file=sys.stderr)
    return 1 if mismatches else 0


def format_subset_macs(fewest, baseline_macs, base_acc, title):
    """Per subset: the point with the fewest multiply-adds at the baseline's accuracy."""
    lines = [f"B-{title}: fewest multiply-adds per sample at the baseline's accuracy "
             f"({100 * base_acc:.2f}%, {baseline_macs:,} multiply-adds) per exit subset",
             "| exits kept | multiply-adds per exit | T | accuracy | exits (%) | "
             "multiply-adds per sample | FLOP gain |", "|---|---|---|---|---|---|---|"]
    for name, f in fewest.items():
        b, exits = f["fewest"], [int(e) for e in name[6:].split("+")]
        macs = " / ".join(f"{m / 1e6:.2f}M" for m in f["exit_macs"])
        if b is None:
            lines.append(f"| {name[6:]} | {macs} | none reaches it | | | | |")
            continue
        shares = " / ".join(f"{100 * b['exit_fractions'][e - 1]:.1f}" for e in exits)
        thresholds = ", ".join(f"{t:g}" for t in b["thresholds"]) or "-"
        lines.append(f"| {name[6:]} | {macs} | {thresholds} | {100 * b['accuracy']:.2f} "
                     f"| {shares} | {b['predicted_ms']:,.0f} "
                     f"| {baseline_macs / b['predicted_ms']:.2f}x |")
    return "\n".join(lines)


def format_subsets(record, title):
    """The exit-subset table: per subset and runtime, the exit paths and the fastest
    measured point at the baseline's accuracy."""
    lines = [f"B-{title}: fastest measured point at the baseline's accuracy "
             f"({100 * record['baseline_accuracy']:.2f}%) per exit subset, batch size 1, "
             f"{record['samples']} test samples (ms: each sample's fastest round, mean)",
             "| exits kept | runtime | exit paths (ms) | baseline (ms) | T | accuracy | "
             "exits (%) | predicted (ms) | measured (ms) | gain |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    names = {"chainer": "Chainer", "ort": "ONNX Runtime"}
    for name, sub in record["subsets"].items():
        for key, r in sub["runtimes"].items():
            paths = " / ".join(f"{m:.3f}" for m in r["path_ms"])
            b = r["fastest"]
            if b is None:
                lines.append(f"| {name[6:]} | {names[key]} | {paths} | {r['baseline_ms']:.3f} "
                             f"| none reaches it | | | | | |")
                continue
            exits = " / ".join(f"{100 * b['exit_fractions'][k - 1]:.1f}" for k in sub["exits"])
            lines.append(f"| {name[6:]} | {names[key]} | {paths} | {r['baseline_ms']:.3f} "
                         f"| {', '.join(f'{t:g}' for t in b['thresholds']) or '-'} "
                         f"| {100 * b['accuracy']:.2f} | {exits} | {b['predicted_ms']:.3f} "
                         f"| {b['measured_ms']:.3f} | {b['gain']:.2f}x |")
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    if args.command == "recompute":  # no ONNX needed: the figures come from the seconds
        try:
            return command_recompute(args)
        except UsageError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
    try:
        _require_onnx()
        from branchynet.deploy import DeployError
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        return {"export": command_export, "time": command_time, "subsets": command_subsets,
                "recompute": command_recompute}[args.command](args)
    except (UsageError, DeployError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
