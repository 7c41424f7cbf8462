"""Threshold search at scale: the exhaustive grid against coordinate descent and quantiles.

    python -m benchmarks.selection_search                   # synthetic 3-5 exits (~1-3 min)
    python -m benchmarks.selection_search --results results/criteria-lenet-mnist

With N exits the paper's grid has |values|^(N-1) threshold vectors. This compares, on the
same validation outputs and exit-path latencies, the three searches of
``branchynet.selection``: ``grid`` (every vector), ``coordinate`` (coordinate descent over
the same per-exit values) and ``quantile`` (MSDNet-style: a fraction q of the samples that
reach each exit leaves there; 201 values of q).

Cases:
  * synthetic (``branchynet.synthetic``): validation (5,000) and test (10,000) outputs
    drawn from one model with entropy scores; exit accuracies rising evenly from 62% to 80%
    (B-AlexNet-like), exit-path latencies evenly from 2 to 10 ms. Grids: the paper's
    AlexNet values (11) and LeNet/ResNet values (17) with 3 exits (121 and 289 vectors),
    and the 17 values with 4 and 5 exits (4,913 and 83,521; --exits 6: 1,419,857).
  * real (--results DIR, repeatable): a results folder of ``experiments.run`` made with
    --val-size: exit_outputs_val.npz, exit_outputs.npz, timing_cpu.json, and its grid.

Per case and search:
  * latency budgets: --budgets budgets evenly spaced strictly between the fastest and the
    slowest exit path; for each, the most accurate T on validation that fits. Grid and
    quantile search once and select per budget; coordinate descent traces the frontier
    once (the knee search) and then refines per budget from those vectors (``warm``); the
    cost of one budget alone (ladder + refinement) is reported too. Reported: validation
    accuracy shortfall
    against the grid's choice in percentage points (negative: better than the grid, which
    only the quantile search can be, its thresholds not being restricted to the grid
    values), test accuracy of the chosen T, and how often its predicted runtime on the
    test set still fits the budget.
  * accuracy floors: --floors floors evenly spaced strictly between the first exit's and
    the best validation accuracy; the fastest T that keeps each; runtime excess over the
    grid's choice (%), and how often the floor still holds on the test set.
  * knee: the knee of each search's candidates, on validation and on test.
  * cost: wall seconds of all the searches of the case, and threshold vectors evaluated.

Prints one line per case and writes a JSON (default benchmarks/results/selection_search.json).
"""
import argparse
import os
import sys
import time

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import branchynet  # noqa: F401,E402  (compatibility fixes before chainer)
import numpy as np  # noqa: E402

from branchynet.io import read_json, write_json  # noqa: E402
from branchynet.report import machine_info  # noqa: E402
from branchynet.selection import (AccuracyFloor, LatencyBudget, coordinate_search,  # noqa: E402
                                  grid_search, quantile_search, select, select_knee)
from branchynet.sweep import ExitOutputs, evaluate_grid, predict_runtime  # noqa: E402
from branchynet.timing import Interleaved, path_summary  # noqa: E402
from branchynet.synthetic import default_path_ms, synthetic_exit_outputs  # noqa: E402
from networks import get_network  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METHODS = ("grid", "coordinate", "quantile")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--exits", type=int, nargs="*", default=[3, 4, 5],
                   help="synthetic cases: numbers of exits (3 runs both the 11- and the "
                   "17-value grid; default: %(default)s; none: no synthetic case)")
    p.add_argument("--results", action="append", default=[], metavar="DIR",
                   help="a real case: an experiments.run results folder made with --val-size")
    p.add_argument("--val-samples", type=int, default=5000, help="synthetic validation samples")
    p.add_argument("--test-samples", type=int, default=10000, help="synthetic test samples")
    p.add_argument("--budgets", type=int, default=9, help="latency budgets per case")
    p.add_argument("--floors", type=int, default=5, help="accuracy floors per case")
    p.add_argument("--seed", type=int, default=0, help="synthetic seed (validation; test: +1)")
    p.add_argument("--markdown", action="store_true",
                   help="also print the results as the Markdown table of docs/selection.md")
    p.add_argument("--out", default=os.path.join(REPO, "benchmarks", "results", "selection_search.json"),
                   help="JSON to write (default: benchmarks/results/selection_search.json)")
    return p.parse_args(argv)


def cases(args):
    """(name, description, validation outputs, test outputs, path_ms, values, inc_amt)."""
    alexnet, wide = get_network("alexnet_cifar10").grid, get_network("lenet_mnist").grid
    for n in args.exits:
        val = synthetic_exit_outputs(args.val_samples, n, seed=args.seed)
        test = synthetic_exit_outputs(args.test_samples, n, seed=args.seed + 1)
        for name, values in ([("alexnet-values", alexnet)] if n == 3 else []) + [("17-values", wide)]:
            yield (f"synthetic-{n}exits-{name}", f"synthetic, {n} exits, {len(values)} values per exit",
                   val, test, default_path_ms(n), values, -0.0001)
    for folder in args.results:
        config = read_json(os.path.join(folder, "config.json"))
        val = ExitOutputs.load(os.path.join(folder, "exit_outputs_val.npz"))
        test = ExitOutputs.load(os.path.join(folder, "exit_outputs.npz"))
        timing = read_json(os.path.join(folder, "timing_cpu.json"))
        # The exit-path medians of the runner's profile (timed on validation inputs).
        path_ms = path_summary(Interleaved.from_json(timing["profile"]), val.n_exits)["path_ms"]
        values = get_network(config["network"]).grid  # the entropy grid (the outputs' criterion)
        yield (f"real-{os.path.basename(os.path.normpath(folder))}",
               f"{config['network']} on {config['dataset']}, validation {len(val.labels)}, "
               f"test {len(test.labels)}", val, test, np.array(path_ms), values,
               config["inc_amt"])


def on_test(test, thresholds, path_ms):
    result = evaluate_grid(test, [thresholds])
    return float(result.accuracy[0]), float(predict_runtime(result.exit_fractions[0], path_ms))


def run_case(val, test, path_ms, values, inc_amt, n_budgets, n_floors):
    grid_size = len(values) ** (val.n_exits - 1)
    latency = [LatencyBudget(ms) for ms in np.linspace(path_ms[0], path_ms[-1], n_budgets + 2)[1:-1]]
    first = val.exit_accuracies()[0]
    out = {}
    for method in METHODS:
        start = time.perf_counter()
        evaluations = 0
        if method == "coordinate":
            knee_set = coordinate_search(val, path_ms, values)
            per_budget = {}
            for b in latency:
                per_budget[b] = coordinate_search(val, path_ms, values, budget=b, warm=knee_set)
                evaluations += per_budget[b].evaluations
            evaluations += knee_set.evaluations
        else:
            knee_set = (grid_search(val, path_ms, values) if method == "grid"
                        else quantile_search(val, path_ms))
            per_budget = {b: knee_set for b in latency}
            evaluations = knee_set.evaluations
        if method == "grid":
            best = knee_set.accuracy.max()
            floors = [AccuracyFloor(a) for a in np.linspace(first, best, n_floors + 2)[1:-1]]
        for f in floors:
            if method == "coordinate":
                per_budget[f] = coordinate_search(val, path_ms, values, budget=f, warm=knee_set)
                evaluations += per_budget[f].evaluations
            else:
                per_budget[f] = knee_set
        seconds = time.perf_counter() - start
        single = None
        if method == "coordinate":  # what one budget costs alone: the ladder, then refinement
            alone = coordinate_search(val, path_ms, values, budget=latency[len(latency) // 2])
            single = {"seconds": alone.seconds, "evaluations": alone.evaluations}
        chosen = {}
        for b, candidates in per_budget.items():
            i = select(candidates, b)
            t = candidates.thresholds[i]
            test_acc, test_ms = on_test(test, t, path_ms)
            chosen[b] = {"T": t.tolist(), "val_accuracy": float(candidates.accuracy[i]),
                         "val_ms": float(candidates.runtime_ms[i]),
                         "test_accuracy": test_acc, "test_ms": test_ms}
        k = select_knee(knee_set, inc_amt)
        knee_test = on_test(test, knee_set.thresholds[k], path_ms)
        out[method] = {
            "seconds": seconds, "evaluations": int(evaluations), "grid_size": grid_size,
            "one_budget_alone": single,
            "knee": {"T": knee_set.thresholds[k].tolist(), "val_accuracy": float(knee_set.accuracy[k]),
                     "val_ms": float(knee_set.runtime_ms[k]), "test_accuracy": knee_test[0],
                     "test_ms": knee_test[1]},
            "latency": [dict(budget_ms=b.ms, **chosen[b]) for b in latency],
            "floors": [dict(floor=f.accuracy, **chosen[f]) for f in floors]}
    grid = out["grid"]
    for method in METHODS:
        m = out[method]
        short = [100 * (g["val_accuracy"] - c["val_accuracy"]) for g, c in zip(grid["latency"], m["latency"])]
        excess = [100 * (c["val_ms"] / g["val_ms"] - 1) for g, c in zip(grid["floors"], m["floors"])]
        m["summary"] = {
            "val_shortfall_pp_mean": float(np.mean(short)), "val_shortfall_pp_max": float(np.max(short)),
            "test_accuracy_mean": float(np.mean([c["test_accuracy"] for c in m["latency"]])),
            "latency_fits_on_test": float(np.mean([c["test_ms"] <= c["budget_ms"] * (1 + 1e-9)
                                                   for c in m["latency"]])),
            "floor_runtime_excess_pct_mean": float(np.mean(excess)),
            "floor_runtime_excess_pct_max": float(np.max(excess)),
            "floor_holds_on_test": float(np.mean([c["test_accuracy"] >= c["floor"] for c in m["floors"]])),
        }
    return out


def markdown(doc):
    """The figures as one Markdown table (one row per case and search)."""
    lines = ["| case | grid vectors | search | wall s | vectors evaluated | budgets: val shortfall "
             "mean / max (pp) | budgets: test acc. mean (%) | budget met on test | floors: runtime "
             "vs grid mean / max | floor met on test |", "|---" * 10 + "|"]
    for name, figure in doc["figures"].items():
        for k, method in enumerate(METHODS):
            m, s = figure[method], figure[method]["summary"]
            evaluated = f"{m['evaluations']:,}"
            if m["one_budget_alone"]:
                evaluated += (f" (one budget alone: {m['one_budget_alone']['evaluations']:,}, "
                              f"{m['one_budget_alone']['seconds']:.2f} s)")
            lines.append("| " + " | ".join([
                figure["description"] if k == 0 else "", f"{m['grid_size']:,}" if k == 0 else "",
                method, f"{m['seconds']:.2f}", evaluated,
                "—" if method == "grid" else
                f"{s['val_shortfall_pp_mean']:+.2f} / {s['val_shortfall_pp_max']:+.2f}",
                f"{100 * s['test_accuracy_mean']:.2f}", f"{100 * s['latency_fits_on_test']:.0f}%",
                "—" if method == "grid" else f"{s['floor_runtime_excess_pct_mean']:+.1f}% / "
                f"{s['floor_runtime_excess_pct_max']:+.1f}%",
                f"{100 * s['floor_holds_on_test']:.0f}%"]) + " |")
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    doc = {"benchmark": "selection_search", "settings": vars(args), "machine": machine_info("@numpy"),
           "load_at_start": os.getloadavg(), "figures": {}}
    for name, description, val, test, path_ms, values, inc_amt in cases(args):
        result = run_case(val, test, np.asarray(path_ms, float), values, inc_amt,
                          args.budgets, args.floors)
        result.update(description=description, path_ms=list(map(float, path_ms)),
                      values=list(values), val_samples=len(val.labels), test_samples=len(test.labels),
                      exit_accuracies_val=val.exit_accuracies().tolist(),
                      val_exit1_score_below_1e4=float((val.scores[:, 0] < 1e-4).mean()),
                      load_after=os.getloadavg())
        doc["figures"][name] = result
        parts = []
        for method in METHODS:
            m, s = result[method], result[method]["summary"]
            part = f"{method} {m['seconds']:.2f}s/{m['evaluations']:,} evals"
            if m["one_budget_alone"]:
                part += (f" (one budget alone {m['one_budget_alone']['seconds']:.2f}s/"
                         f"{m['one_budget_alone']['evaluations']:,})")
            if method != "grid":
                part += (f", budgets: val shortfall mean {s['val_shortfall_pp_mean']:+.2f} max "
                         f"{s['val_shortfall_pp_max']:+.2f} pp; floors: runtime "
                         f"{s['floor_runtime_excess_pct_mean']:+.1f}% mean")
            part += f", knee test {100 * m['knee']['test_accuracy']:.2f}% @ {m['knee']['test_ms']:.2f} ms"
            parts.append(part)
        print(f"{name} ({result['grid']['grid_size']:,} grid vectors): " + " | ".join(parts))
    doc["load_at_end"] = os.getloadavg()
    write_json(args.out, doc)
    if args.markdown:
        print(markdown(doc))
    print(f"JSON {args.out}")
    return doc


if __name__ == "__main__":
    main()
