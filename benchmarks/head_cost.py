"""Where each exit path's time goes in Chainer at batch size 1, and the overhead cuts
before/after, measured in one interleaved run.

    python -m benchmarks.head_cost --results results/cpu-alexnet_cifar10-converged

On the weights and test samples of a runner's results folder: every exit path forced
(``branchynet.head_cost.PathProfile``: each layer, the score, the decision, the label and
``predict``'s set-up clocked apart, with the layer's multiply-adds), and end to end
(``branchynet.timing.EndToEnd``) with Chainer's type checks on every call ("before",
``branchynet.net.INFERENCE_TYPE_CHECK = True``) and as ``predict`` runs now (checked on the
first input of each shape only, "after"), at every exit path, the knee and Table I's
thresholds; all variants in the same rounds (``branchynet.timing.interleave``). Figures:
each sample's fastest round, mean over samples (the first of each block left out), and the
paired per-round ratio before / after. Writes JSON (default
``benchmarks/results/head_cost_<network>_cpu.json``) and prints the tables of
docs/benchmarks.md.
"""
import argparse
import os
import sys

import numpy as np

import branchynet  # noqa: F401  (compatibility fixes first)
from branchynet import net as net_module

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class _Checked:
    """A variant run with ``INFERENCE_TYPE_CHECK = True`` (type checks on every call)."""

    def __init__(self, variant):
        self.variant = variant
        self.labels, self.exits = variant.labels, variant.exits

    def __call__(self, i):
        net_module.INFERENCE_TYPE_CHECK = True
        try:
            return self.variant(i)
        finally:
            net_module.INFERENCE_TYPE_CHECK = False


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m benchmarks.head_cost", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", required=True, metavar="DIR",
                   help="results folder of experiments.run (weights, config, sweep)")
    p.add_argument("--data-dir", help="dataset folder (default: $BRANCHYNET_DATA)")
    p.add_argument("--samples", type=int, default=200, help="test samples (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default: %(default)s)")
    p.add_argument("--block", type=int, default=10, help="samples per block (default: %(default)s)")
    p.add_argument("--out", help="JSON to write (default: benchmarks/results/"
                                 "head_cost_<network>_cpu.json)")
    args = p.parse_args(argv)
    for name in ("samples", "rounds", "block"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1")
    if not os.path.isdir(args.results):
        p.error(f"--results {args.results} is not a folder")
    return args


def measure(args):
    """Build the variants, time them interleaved, return the JSON record."""
    import chainer
    from branchynet.head_cost import PathProfile
    from branchynet.paper import paper_thresholds
    from branchynet.report import machine_info
    from branchynet.timing import EndToEnd, forced_exit_thresholds, interleave
    from experiments.deploy import load_results
    exp, sweep = load_results(argparse.Namespace(results=args.results, data_dir=args.data_dir,
                                                 tag="cpu"))
    exp.load_cached_outputs()
    exp.evaluate()
    net, base = exp.branchy, exp.baseline
    x = exp.data.test_x[:args.samples]
    cpu = chainer.get_device("@numpy")
    points = {"knee": sweep["thresholds"][sweep["knee"]]}
    paper = paper_thresholds(exp.spec.name)
    if paper is not None and len(paper) == net.n_exits - 1:
        points["paper's T"] = paper
    variants = {"baseline": EndToEnd(base, x, [], cpu)}
    variants["baseline:checked"] = _Checked(EndToEnd(base, x, [], cpu))
    for n in range(net.n_exits):
        variants[f"profile:exit{n + 1}"] = PathProfile(net, x, n)
        forced = forced_exit_thresholds(n, net.n_exits)
        variants[f"exit{n + 1}"] = EndToEnd(net, x, forced, cpu)
        variants[f"exit{n + 1}:checked"] = _Checked(EndToEnd(net, x, forced, cpu))
    for name, t in points.items():
        variants[name] = EndToEnd(net, x, t, cpu)
        variants[f"{name}:checked"] = _Checked(EndToEnd(net, x, t, cpu))
    print(f"timing {len(variants)} variants on {len(x)} samples, {args.rounds} rounds",
          flush=True)
    raw = interleave(variants, len(x), rounds=args.rounds, block=args.block, warmup=3)
    warm = np.arange(len(x)) % args.block != 0
    if not warm.any():
        warm[:] = True
    fastest = {k: 1e3 * float(v[:, warm].min(axis=0).mean()) for k, v in raw.seconds.items()}
    per_round = {k: 1e3 * v[:, warm].mean(axis=1) for k, v in raw.seconds.items()}
    identical = {}
    for name, v in variants.items():
        if name.endswith(":checked") and name != "baseline:checked":
            other = variants[name[:-len(":checked")]]
            identical[name[:-len(":checked")]] = bool(
                np.array_equal(v.labels, other.labels) and np.array_equal(v.exits, other.exits))
    for n in range(net.n_exits):
        prof, e2e = variants[f"profile:exit{n + 1}"], variants[f"exit{n + 1}"]
        identical[f"profile:exit{n + 1}"] = bool(np.array_equal(prof.labels, e2e.labels)
                                                 and np.array_equal(prof.exits, e2e.exits))
    cuts = {}
    for name in ["baseline"] + [f"exit{n + 1}" for n in range(net.n_exits)] + list(points):
        ratio = per_round[f"{name}:checked"] / per_round[name]
        cuts[name] = {"before_ms": fastest[f"{name}:checked"], "after_ms": fastest[name],
                      "fastest_ratio": fastest[f"{name}:checked"] / fastest[name],
                      "per_round_ratio": {"median": float(np.median(ratio)),
                                          "low": float(ratio.min()), "high": float(ratio.max())}}
    profiles = {f"exit{n + 1}": {"parts": variants[f"profile:exit{n + 1}"].summary(warm),
                                 "profiled_ms": fastest[f"profile:exit{n + 1}"],
                                 "end_to_end_ms": fastest[f"exit{n + 1}"]}
                for n in range(net.n_exits)}
    machine = machine_info(cpu)
    machine["blas_threads"] = os.environ.get("OPENBLAS_NUM_THREADS", "unset")
    return {"command": "python -m benchmarks.head_cost " + " ".join(sys.argv[1:]),
            "network": exp.spec.title, "results": os.path.normpath(args.results),
            "settings": {k: v for k, v in vars(args).items()}, "machine": machine,
            "load": raw.load, "points": points, "statistic": (
                "each sample's fastest round, mean over samples; first sample of every "
                "block left out; per_round_ratio: per-round means, paired"),
            "baseline_macs": exp.costs["baseline_macs"], "path_macs": exp.costs["path_macs"],
            "profiles": profiles, "cuts": cuts, "identical_decisions": identical,
            "per_round_ms": {k: v.tolist() for k, v in per_round.items()}}


def group(parts):
    """Parts summed by kind (trunk K, head K, score K, decision K, label, set-up), in order."""
    out = {}
    for p in parts:
        entry = out.setdefault(p["kind"], {"kind": p["kind"], "macs": 0, "us": 0.0, "layers": 0})
        entry["macs"] += p["macs"]
        entry["us"] += p["us"]
        entry["layers"] += 1
    return list(out.values())


def format_record(record):
    """The markdown tables of docs/benchmarks.md for one record."""
    lines = [f"{record['network']} ({record['results']}), 1-minute load "
             f"{record['load']['before'][0]} -> {record['load']['after'][0]}", ""]
    for path, prof in record["profiles"].items():
        total = sum(p["us"] for p in prof["parts"])
        lines += [f"{path} path: {prof['end_to_end_ms'] * 1e3:.0f} us end to end, "
                  f"{total:.0f} us in its parts",
                  "", "| part | layer | MACs | us | share |", "|---|---|---|---|---|"]
        for p in prof["parts"]:
            lines.append(f"| {p['kind']} | {p['name']} | {p['macs']:,} | {p['us']:.1f} "
                         f"| {100 * p['us'] / total:.1f}% |")
        lines += ["", "| part | layers | MACs | us | share |", "|---|---|---|---|---|"]
        for g in group(prof["parts"]):
            lines.append(f"| {g['kind']} | {g['layers']} | {g['macs']:,} | {g['us']:.1f} "
                         f"| {100 * g['us'] / total:.1f}% |")
        lines.append("")
    lines += ["| variant | type checks every call (ms) | first call only (ms) | before / after "
              "| per-round [min, max] | decisions identical |", "|---|---|---|---|---|---|"]
    for name, c in record["cuts"].items():
        r = c["per_round_ratio"]
        same = record["identical_decisions"].get(name, "-")
        lines.append(f"| {name} | {c['before_ms']:.3f} | {c['after_ms']:.3f} "
                     f"| {c['fastest_ratio']:.3f}x | {r['median']:.3f}x "
                     f"[{r['low']:.3f}, {r['high']:.3f}] | {same} |")
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    from branchynet.io import write_json
    from experiments.deploy import UsageError
    try:
        record = measure(args)
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out = args.out or os.path.join(REPO, "benchmarks", "results",
                                   f"head_cost_{record['network'].lower()}_cpu.json")
    write_json(out, record)
    print(format_record(record))
    print(f"wrote {out}")
    return 0 if all(record["identical_decisions"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
