"""Latency at batch size 1: baseline against the B-net at its knee, and how close to the limit.

    python -m benchmarks.latency --network lenet_mnist            # quick (minutes, CPU)
    python -m benchmarks.latency --network lenet_mnist --results results/lenet_mnist-mnist

For one network and device, at batch size 1 over the first --timing-samples test images:

* baseline and B-net at the knee, end to end (input to the device ... label back:
  ``branchynet.timing.EndToEnd``) and trunk-only (the authors' accounting, ``TrunkOnly``);
  every exit path forced end to end and trunk-only, as the runner measures them
  (``branchynet.timing.latency_variants``);
* each exit path alone: a plain forward through the trunk segments and head of that exit,
  argmax, no decisions at earlier exits. The zero-overhead limit is
  sum_n fraction_n x alone_n, with the exit fractions of the knee on the timed samples;
* the same with the earlier exits' heads computed but no decisions taken ("cascade"):
  what the method has to compute, so the overhead splits into earlier heads and decisions;
* routing overhead = measured / zero-overhead limit - 1 (target <= 10%);
* FLOP-ideal gain: baseline multiply-adds / sum_n fraction_n x multiply-adds of path n
  (and with the earlier heads counted);
* the knee again with the batch-size-1 fast path of the routing turned off (the batched
  loop every batch size used before), side by side;
* Chainer's fixed cost per call, calls per sample, time inside the functions' array code
  (TimerHook), and the FLOP time at the measured matrix-multiply rate: how much of a
  batch-size-1 forward is framework overhead.

All of these are variants of one ``branchynet.timing.interleave`` measurement:
--timing-rounds rounds, and within a round every variant runs on a block of --block
samples before the next block, in a random order after one untimed warm-up call each (the
first call after a switch is slower), so a change in the machine's load hits
all of them alike. Each figure is the median over the rounds of the per-round mean, with
its quartiles; a gain or an overhead is computed round by round (paired) and reported as
the median with the [min, max] of the per-round values (n.s. when that interval includes
no gain). The per-round means of every variant are in the JSON (``timing.rounds_ms``), so
every figure can be recomputed from it. A last figure times the routing code alone on a
stand-in network whose layers do nothing, fast path against batched loop, the same way.

The knee is the runner's (``Experiment.select``): from the results folder's timing record
with --results, else from an exit-path profile (``measure_latency``) on the timed samples.
--thresholds or --exit-mix time another point than the knee, e.g. where a briefly trained
network's knee sends every sample out at one exit (the JSON records which point).
"""
import os
import sys

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import branchynet  # noqa: F401,E402  (compatibility fixes before chainer)
import numpy as np  # noqa: E402
from chainer.function_hooks import TimerHook  # noqa: E402

import branchynet.routing as routing  # noqa: E402
from benchmarks import _common as C  # noqa: E402
from experiments.experiment import compare_with_sweep  # noqa: E402
from branchynet.flops import expected_macs, exit_path_costs  # noqa: E402
from branchynet.net import Branch, BranchyNet  # noqa: E402
from branchynet.routing import check_thresholds  # noqa: E402
from branchynet.sweep import evaluate_grid  # noqa: E402
from branchynet.timing import (EndToEnd, check_point, check_trunks,  # noqa: E402
                               forced_exit_thresholds, interleave, latency_variants, path_name,
                               path_summary)

DEFAULTS = {
    "lenet_mnist": {"eval_samples": 2000, "timing_samples": 500, "warmup": 2, "block": 10},
    "alexnet_cifar10": {"eval_samples": 1000, "timing_samples": 200, "warmup": 1, "block": 10},
    "resnet110_cifar10": {"eval_samples": 200, "timing_samples": 10, "warmup": 1, "block": 5},
}


def parse_args(argv=None):
    p = C.parser(__doc__, DEFAULTS)
    p.add_argument("--eval-samples", type=int,
                   help="test images whose exit outputs select the knee (default: per network; "
                   "at least --timing-samples; with --results, the folder's cached outputs)")
    p.add_argument("--timing-samples", type=int, help="test images timed at batch size 1")
    p.add_argument("--thresholds", type=float, nargs="+",
                   help="time these thresholds instead of the knee")
    p.add_argument("--exit-mix", type=float, nargs="+", metavar="FRACTION",
                   help="time the thresholds that send these fractions of the eval images out "
                   "at each exit (e.g. the paper's knee mix 0.656 0.252 0.092) instead of the knee")
    p.add_argument("--routing-samples", type=int, default=2000,
                   help="samples of the routing-code measurement (default: %(default)s)")
    p.add_argument("--profile-samples", type=int, default=50,
                   help="samples of the framework-overhead profile (default: %(default)s)")
    return C.finish_args(p.parse_args(argv), "latency")


def thresholds_for_mix(outputs, mix):
    """Thresholds under which the eval samples leave at each exit in the given proportions.

    For a weakly trained network whose knee sends every sample out at one exit, this gives
    a point with a real mix of exits to time. At exit n, among the samples still in, the
    k with the lowest scores leave: the threshold is the (k+1)-th lowest score (strict <).
    """
    mix = np.asarray(mix, np.float64)
    if len(mix) != outputs.n_exits or (mix < 0).any() or mix.sum() <= 0:
        raise SystemExit(f"error: --exit-mix needs {outputs.n_exits} non-negative fractions")
    mix = mix / mix.sum()
    remaining = np.arange(len(outputs.labels))
    thresholds = []
    for n in range(outputs.n_exits - 1):
        k = int(round(mix[n] * len(outputs.labels)))
        scores = np.sort(outputs.scores[remaining, n])
        t = float(scores[k]) if k < len(scores) else np.inf
        thresholds.append(t)
        remaining = remaining[~(outputs.scores[remaining, n] < t)]
    return thresholds


def alone_name(n):
    return f"{path_name(n)}_alone"


def cascade_name(n):
    """Exit 1 has no earlier heads: its cascade is its plain path."""
    return alone_name(0) if n == 0 else f"{path_name(n)}_cascade"


def trunk_name(n):
    return f"{path_name(n)}_trunk"


def _weighted(name_of, fractions):
    return {name_of(n): f for n, f in enumerate(fractions)}


def variants_for(setup, x, device, thresholds):
    """The library's variants (baseline, exit paths end to end and trunk-only, the point
    ``knee``) and this benchmark's: the knee through the batched routing loop, the plain
    baseline forward (type checks on and off), every exit path alone and in cascade."""
    net, base = setup.branchy, setup.baseline
    variants = latency_variants(net, base, x, device, setup.exp.s.criterion,
                                points={"knee": thresholds})
    variants["knee_batched_routing"] = C.Within(
        EndToEnd(net, x, thresholds, device, setup.exp.s.criterion), C.batched_routing_only)
    variants["baseline_plain"] = C.PlainPath(base, x, 0, device)
    variants["baseline_plain_type_check_off"] = C.Within(C.PlainPath(base, x, 0, device),
                                                         C.no_type_check)
    for n in range(net.n_exits):
        variants[alone_name(n)] = C.PlainPath(net, x, n, device)
        if n:
            variants[cascade_name(n)] = C.PlainPath(net, x, n, device, all_heads=True)
    return variants


def summarise(t, fractions):
    """Every latency figure of one ``Interleaved`` measurement, at the exit ``fractions``
    of the knee: medians (ms) and per-round paired ratios (median, [min, max])."""
    n_exits = len(fractions)
    limit = t.combine(_weighted(alone_name, fractions))
    cascade = t.combine(_weighted(cascade_name, fractions))
    trunk = t.combine(_weighted(trunk_name, fractions))
    predicted = t.combine(_weighted(path_name, fractions))
    m = path_summary(t, n_exits)
    m.update({
        "stats": {name: t.stats(name) for name in t.names},
        "knee_ms": t.median("knee"), "knee_batched_routing_ms": t.median("knee_batched_routing"),
        "baseline_plain_ms": t.median("baseline_plain"),
        "alone_ms": [t.median(alone_name(n)) for n in range(n_exits)],
        "cascade_ms": [t.median(cascade_name(n)) for n in range(n_exits)],
        "zero_overhead_limit_ms": float(np.median(limit)),
        "cascade_limit_ms": float(np.median(cascade)),
        "predicted_ms": float(np.median(predicted)),
        "trunk_only_knee_ms": float(np.median(trunk)),
        "gain": t.ratio("baseline", "knee"),
        "zero_overhead_gain": t.ratio("baseline", limit),
        "trunk_only_gain": t.ratio("baseline_trunk", trunk),
        "routing_overhead": C.shifted(t.ratio("knee", limit), -1),
        "earlier_heads_overhead": C.shifted(t.ratio(cascade, limit), -1),
        "decision_overhead": C.shifted(t.ratio("knee", cascade), -1),
        "routing_overhead_batched_routing": C.shifted(t.ratio("knee_batched_routing", limit), -1),
        "fast_path_saving_us": C.difference_us(t.rounds_ms["knee_batched_routing"],
                                               t.rounds_ms["knee"]),
        "decision_us_per_exit_path": [
            C.difference_us(t.rounds_ms[path_name(n)], t.rounds_ms[cascade_name(n)])
            for n in range(n_exits)],
        "predict_bookkeeping_us_baseline": C.difference_us(t.rounds_ms["baseline"],
                                                           t.rounds_ms["baseline_plain"]),
    })
    return m


def flop_figures(branchy, baseline, input_shape, fractions):
    """Multiply-adds per exit path, and the FLOP-ideal gains at the given exit fractions."""
    costs = exit_path_costs(branchy, input_shape)
    base_macs = exit_path_costs(baseline, input_shape)["path_macs"][0]
    expected = expected_macs(fractions, costs["path_macs"])
    expected_heads = expected_macs(fractions, costs["macs"])
    return {"baseline_macs": int(base_macs), "path_macs": costs["path_macs"],
            "head_macs": costs["head_macs"], "path_macs_with_earlier_heads": costs["macs"],
            "exit_fractions": list(fractions),
            "expected_macs": expected, "expected_macs_with_earlier_heads": expected_heads,
            "flop_ideal_gain": base_macs / expected,
            "flop_gain_with_earlier_heads": base_macs / expected_heads}


def framework_profile(baseline, x, device, latency, base_macs):
    """Where a batch-size-1 forward of the baseline spends its time: the interleaved
    medians of the plain forward (``latency``), a TimerHook pass over ``x``, the fixed
    cost per Chainer call and the FLOP time at the measured matrix-multiply rate."""
    forward = latency["stats"]["baseline_plain"]["median_ms"]
    unchecked = latency["stats"]["baseline_plain_type_check_off"]["median_ms"]
    plain = C.PlainPath(baseline, x, 0, device)
    hook = TimerHook()
    with hook:
        for i in range(len(x)):
            plain(i)
    per_call = C.per_call_overhead_us(device)
    peak = C.peak_gflops(device)  # last: a large multiply may leave BLAS threads spinning
    summary = hook.summary()
    calls = sum(v["occurrence"] for v in summary.values()) / len(x)
    inside_ms = 1e3 * hook.total_time() / len(x)
    flop_ms = 1e3 * 2 * base_macs / (peak * 1e9)
    return {
        **per_call, "peak_gflops": peak, "hook_samples": len(x),
        "forward_ms": forward, "forward_type_check_off_ms": unchecked,
        "functions_per_sample": calls, "inside_functions_ms": inside_ms,
        "outside_functions_ms": forward - inside_ms, "flop_ms": flop_ms,
        "flop_fraction": flop_ms / forward,
        "fixed_call_cost_ms": 1e-3 * calls * per_call["function_call_us"],
        "by_function": {name: {"calls_per_sample": v["occurrence"] / len(x),
                               "ms_per_sample": 1e3 * v["elapsed_time"] / len(x)}
                        for name, v in sorted(summary.items(),
                                              key=lambda kv: -kv[1]["elapsed_time"])},
    }


def routing_code_cost(n_exits, n_classes, device, args):
    """Microseconds per sample of the routing code alone, fast path against batched loop.

    A stand-in network with ``n_exits`` exits whose trunk segments pass the input on and
    whose heads return fixed logits (one real-looking row) leaves only what the project's
    code does per sample: ``predict``'s checks and inference settings, the routing loop,
    the entropy, the comparisons, the transfers. "plain" is the same stand-in run without
    decisions (``PlainPath``): what remains is Chainer's Link calls and the timing.
    """
    logits = device.send(np.random.RandomState(0).randn(1, n_classes).astype(np.float32))
    layers = []
    for n in range(n_exits):
        if n:
            layers.append(lambda h: h)
        layers.append(Branch([lambda h: logits]))
    stub = BranchyNet(layers)
    x = np.zeros((args.routing_samples, 1), np.float32)
    variants = {}
    for n in range(n_exits):
        forced = forced_exit_thresholds(n, n_exits)
        variants[f"fast{n}"] = EndToEnd(stub, x, forced, device)
        variants[f"batched{n}"] = C.Within(EndToEnd(stub, x, forced, device),
                                           C.batched_routing_only)
        variants[f"plain{n}"] = C.PlainPath(stub, x, n, device)
    t = interleave(variants, len(x), args.timing_rounds, args.block, args.warmup)

    def us(kind):
        return [1e3 * t.median(f"{kind}{n}") for n in range(n_exits)]
    return {"samples": len(x), "fast_path_us": us("fast"), "batched_loop_us": us("batched"),
            "plain_us": us("plain"), "timing": t.to_json()}


def _pct(r):
    text = f"{100 * r['median']:.1f}% [{100 * r['low']:.1f}, {100 * r['high']:.1f}]"
    return text if r["significant"] else text + " n.s."


def timed_point(setup, args, point, tag):
    """The thresholds to time: the knee, --thresholds, or those of --exit-mix."""
    if not (args.thresholds or args.exit_mix):
        return point["thresholds"], "knee", None
    outputs = setup.exp.outputs
    if args.thresholds:
        thresholds = [float(t) for t in check_thresholds(args.thresholds, setup.branchy.n_exits)]
        source = "--thresholds"
    else:
        thresholds = thresholds_for_mix(outputs, args.exit_mix)
        source = f"--exit-mix {','.join(f'{f:g}' for f in args.exit_mix)}"
    chosen = evaluate_grid(outputs, [thresholds])
    record = {"source": source, "thresholds": thresholds, "accuracy": float(chosen.accuracy[0]),
              "exit_fractions": chosen.exit_fractions[0].tolist()}
    C.log(f"{tag}: timing {source} instead of the knee: T="
          f"{', '.join(f'{t:.4g}' for t in thresholds)}, exits "
          f"{'/'.join(f'{100 * f:.1f}' for f in chosen.exit_fractions[0])}%, accuracy "
          f"{100 * chosen.accuracy[0]:.2f}% on {len(outputs)} eval images")
    return thresholds, source, record


def main(argv=None):
    args = parse_args(argv)
    device = args.chainer_device
    setup = C.prepare(args, test_samples=max(args.eval_samples, args.timing_samples))
    report = C.Report("latency", args, setup)
    net, spec = setup.branchy, setup.spec
    net.to_device(device)
    setup.baseline.to_device(device)
    x = setup.data.test_x[:args.timing_samples]
    y = setup.data.test_y[:args.timing_samples]
    tag = f"[latency] {spec.name} {report.doc['device']}"

    with report.figure("knee") as fig:
        point = C.knee_point(setup, device, x, args)
        fig.update(point)
    C.log(f"{tag}: knee T={', '.join(f'{t:g}' for t in point['thresholds'])}, exits "
          f"{'/'.join(f'{100 * f:.1f}' for f in point['exit_fractions'])}% and accuracy "
          f"{100 * point['accuracy']:.2f}% on {point['eval_samples']} eval images (exit-path "
          f"profile: {point['path_ms_source']}){C.load_note(fig)}")
    thresholds, source, record = timed_point(setup, args, point, tag)
    if record:
        report.doc["figures"]["knee"]["timed_point"] = record

    with report.figure("latency") as fig:
        variants = variants_for(setup, x, device, thresholds)
        t = interleave(variants, len(x), args.timing_rounds, args.block, args.warmup)
        knee = variants["knee"]
        counts = np.bincount(knee.exits, minlength=net.n_exits)
        fractions = counts / len(x)
        m = summarise(t, fractions)
        checks, flags = check_point(t, "knee", fractions)
        batched = variants["knee_batched_routing"].variant
        other, borderline = compare_with_sweep(setup.exp.outputs.take(slice(0, len(x))),
                                               thresholds, knee.exits)
        fig.update(m)
        fig.update({
            "timing_samples": len(x), "timed_point": source, "thresholds": thresholds,
            "exit_counts_timed": counts.tolist(), "exit_fractions_timed": fractions.tolist(),
            "accuracy_timed": float((knee.labels == y).mean()),
            "other_exit_than_sweep": other, "other_exit_borderline": borderline,
            "fast_path_same_decisions": bool(np.array_equal(knee.exits, batched.exits)
                                             and np.array_equal(knee.labels, batched.labels)),
            "has_fast_path": hasattr(routing, "SINGLE_SAMPLE_FAST_PATH"),
            "checks": checks, "flags": flags + check_trunks(t, net.n_exits),
            "target_routing_overhead": 0.10, "timing": t.to_json()})
    note = " " + C.timing_note(t)
    C.log(f"{tag}: baseline {C.fmt_stats(m['stats']['baseline'])} end to end, "
          f"{C.fmt_stats(m['stats']['baseline_trunk'])} trunk-only{note}")
    C.log(f"{tag}: B-net at {source} {C.fmt_stats(m['stats']['knee'])} end to end (gain "
          f"{C.fmt_ratio(m['gain'])}), trunk-only {m['trunk_only_knee_ms']:.3f} ms (authors' "
          f"accounting, gain {C.fmt_ratio(m['trunk_only_gain'])}); exits "
          f"{'/'.join(f'{100 * f:.1f}' for f in fractions)}% on the {len(x)} timed samples")
    C.log(f"{tag}: zero-overhead limit {m['zero_overhead_limit_ms']:.3f} ms (gain "
          f"{C.fmt_ratio(m['zero_overhead_gain'])}); routing overhead "
          f"{_pct(m['routing_overhead'])} (target <= 10%): earlier heads "
          f"{_pct(m['earlier_heads_overhead'])}, decisions {_pct(m['decision_overhead'])}")
    C.log(f"{tag}: measured / predicted from the exit paths "
          f"{C.fmt_ratio(checks['vs_prediction'])}; consistency flags: "
          f"{', '.join(fig['flags']) or 'none'}")
    if fig["has_fast_path"]:
        C.log(f"{tag}: batch-size-1 fast path {m['knee_ms']:.3f} ms vs batched routing loop "
              f"{m['knee_batched_routing_ms']:.3f} ms at the {source} (saves "
              f"{m['fast_path_saving_us']['median']:.1f} us/sample, per round "
              f"[{m['fast_path_saving_us']['low']:.1f}, {m['fast_path_saving_us']['high']:.1f}]; "
              f"same decisions: {fig['fast_path_same_decisions']})")

    if fig["has_fast_path"]:
        with report.figure("routing_code") as fig:
            fig.update(routing_code_cost(net.n_exits, int(setup.data.train_y.max()) + 1,
                                         device, args))
        C.log(f"{tag}: routing code alone per sample, by exit taken: fast path "
              f"{', '.join(f'{v:.1f}' for v in fig['fast_path_us'])} us, batched loop "
              f"{', '.join(f'{v:.1f}' for v in fig['batched_loop_us'])} us, no decisions "
              f"{', '.join(f'{v:.1f}' for v in fig['plain_us'])} us (medians of "
              f"{args.timing_rounds} rounds){C.load_note(fig)}")

    with report.figure("flops") as fig:
        fig.update(flop_figures(net, setup.baseline, x.shape[1:], fractions))
    C.log(f"{tag}: FLOP-ideal gain {fig['flop_ideal_gain']:.2f}x "
          f"({fig['flop_gain_with_earlier_heads']:.2f}x counting earlier heads); multiply-adds "
          f"per exit path {', '.join(f'{v / 1e6:.3g}M' for v in fig['path_macs'])}, baseline "
          f"{fig['baseline_macs'] / 1e6:.3g}M")
    base_macs = fig["baseline_macs"]

    with report.figure("framework_overhead") as fig:
        fig.update(framework_profile(setup.baseline, x[:args.profile_samples], device, m,
                                     base_macs))
    C.log(f"{tag}: framework at batch size 1: {fig['function_call_us']:.1f} us per Chainer "
          f"function call ({fig['link_call_us']:.1f} us per Link, {fig['numpy_op_us']:.2f} us per "
          f"raw array op), {fig['functions_per_sample']:.0f} calls per baseline forward "
          f"({fig['forward_ms']:.3f} ms, interleaved median): {fig['inside_functions_ms']:.3f} ms "
          f"inside the functions' array code, FLOP time {fig['flop_ms']:.4f} ms at "
          f"{fig['peak_gflops']:.0f} GFLOP/s ({100 * fig['flop_fraction']:.1f}%); type checks "
          f"off: {fig['forward_type_check_off_ms']:.3f} ms{C.load_note(fig)}")
    return report.write()


if __name__ == "__main__":
    main()
    sys.exit(0)
