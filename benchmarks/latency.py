"""Latency at batch size 1: baseline against the B-net at its knee, and how close to the limit.

    python -m benchmarks.latency --network lenet_mnist            # quick (minutes, CPU)
    python -m benchmarks.latency --network lenet_mnist --results results/lenet_mnist-mnist

For one network and device, at batch size 1 over the first --timing-samples test images:

* baseline and B-net at the knee, end to end (input to the device ... label back: what
  ``branchynet.timing.time_early_exit`` measures) and trunk-only (the authors' accounting);
* each exit path measured alone: a plain forward through the trunk segments and head of
  that exit, argmax, no decisions at earlier exits. The zero-overhead limit is
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

The timings run interleaved in blocks of --block samples (every timing on block 1, then
on block 2, ...), --repeats passes over the timed samples, so that a change in the
machine's load hits all of them alike. Each figure is the mean over the samples of each
sample's fastest pass (robust to preemption on a shared machine); plain means over all
passes and per-pass figures are in the JSON too. A last figure times the routing code
alone on a stand-in network whose layers do nothing, fast path against batched loop.

--thresholds or --exit-mix time another point than the knee, e.g. where a briefly trained
network's knee sends every sample out at one exit (the JSON records which point).
"""
import os
import sys

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import branchynet  # noqa: F401,E402  (compatibility fixes before chainer)
import chainer  # noqa: E402
import numpy as np  # noqa: E402
from chainer.function_hooks import TimerHook  # noqa: E402

from benchmarks import _common as C  # noqa: E402
from branchynet.flops import expected_macs, exit_path_costs  # noqa: E402
from branchynet.routing import check_thresholds  # noqa: E402
from branchynet.sweep import evaluate_grid  # noqa: E402
from branchynet.timing import forced_exit_thresholds, time_early_exit, trunk_latency  # noqa: E402

DEFAULTS = {
    "lenet_mnist": {"eval_samples": 2000, "timing_samples": 500, "repeats": 3, "warmup": 2,
                    "block": 10},
    "alexnet_cifar10": {"eval_samples": 1000, "timing_samples": 200, "repeats": 2, "warmup": 1,
                        "block": 10},
    "resnet110_cifar10": {"eval_samples": 200, "timing_samples": 10, "repeats": 1, "warmup": 1,
                          "block": 5},
}


def parse_args(argv=None):
    p = C.parser(__doc__, DEFAULTS)
    p.add_argument("--eval-samples", type=int,
                   help="test images whose exit outputs select the knee (default: per network; "
                   "with --results, the folder's cached outputs)")
    p.add_argument("--timing-samples", type=int, help="test images timed at batch size 1")
    p.add_argument("--repeats", type=int, help="interleaved repetitions of all timings")
    p.add_argument("--warmup", type=int, help="untimed samples before each timing call (after "
                   "one untimed pass of every timing over the first block)")
    p.add_argument("--block", type=int, help="samples per interleaved block of timings")
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


def flop_figures(branchy, baseline, input_shape, fractions):
    """Multiply-adds per exit path, and the FLOP-ideal gains at the given exit fractions."""
    costs = exit_path_costs(branchy, input_shape)
    base_macs = exit_path_costs(baseline, input_shape)["path_macs"][0]
    expected = expected_macs(fractions, costs["path_macs"])
    expected_heads = expected_macs(fractions, costs["macs"])
    return {"baseline_macs": int(base_macs), "path_macs": costs["path_macs"],
            "head_macs": costs["head_macs"], "path_macs_with_earlier_heads": costs["macs"],
            "expected_macs": expected, "expected_macs_with_earlier_heads": expected_heads,
            "flop_ideal_gain": base_macs / expected,
            "flop_gain_with_earlier_heads": base_macs / expected_heads}


def framework_profile(baseline, x, device, base_macs, warmup):
    """Where a batch-size-1 forward of the baseline spends its time."""
    plain = C.time_plain_path(baseline, x, 0, device, warmup).mean()
    with chainer.using_config("type_check", False):
        plain_unchecked = C.time_plain_path(baseline, x, 0, device, warmup).mean()
    hook = TimerHook()
    with hook:
        C.time_plain_path(baseline, x, 0, device, warmup=0)
    per_call = C.per_call_overhead_us(device)
    peak = C.peak_gflops(device)  # last: a large multiply may leave BLAS threads spinning
    summary = hook.summary()
    calls = sum(v["occurrence"] for v in summary.values()) / len(x)
    inside = hook.total_time() / len(x)
    flop_s = 2 * base_macs / (peak * 1e9)
    return {
        **per_call, "peak_gflops": peak, "samples": len(x),
        "forward_ms": 1e3 * plain, "forward_type_check_off_ms": 1e3 * plain_unchecked,
        "functions_per_sample": calls, "inside_functions_ms": 1e3 * inside,
        "outside_functions_ms": 1e3 * (plain - inside), "flop_ms": 1e3 * flop_s,
        "flop_fraction": flop_s / plain,
        "fixed_call_cost_ms": 1e-3 * calls * per_call["function_call_us"],
        "by_function": {name: {"calls_per_sample": v["occurrence"] / len(x),
                               "ms_per_sample": 1e3 * v["elapsed_time"] / len(x)}
                        for name, v in sorted(summary.items(),
                                              key=lambda kv: -kv[1]["elapsed_time"])},
    }


def measure(setup, x, device, thresholds, warmup, repeats, block):
    """Every timing, interleaved in blocks of ``block`` samples so that changes in the
    machine's load hit all of them alike; ``repeats`` passes over ``x``.

    Returns per-sample milliseconds per timing (concatenated over blocks and passes), the
    pass of each sample, and the labels and exits of the knee (first pass).
    """
    base, net = setup.baseline, setup.branchy
    n_exits = net.n_exits
    knee_result = {}

    def knee(xb):
        seconds, labels, exits = time_early_exit(net, xb, thresholds, device, warmup)
        knee_result.setdefault("labels", []).append(labels)
        knee_result.setdefault("exits", []).append(exits)
        return seconds

    def knee_batched(xb):
        with C.batched_routing_only() as has_fast_path:
            seconds, labels, exits = time_early_exit(net, xb, thresholds, device, warmup)
        knee_result["has_fast_path"] = has_fast_path
        knee_result.setdefault("labels_b", []).append(labels)
        knee_result.setdefault("exits_b", []).append(exits)
        return seconds

    def trunk(n, which):
        # trunk_latency returns a mean per block; repeat it per sample for the same layout.
        return lambda xb: np.full(len(xb), trunk_latency(which, xb, device, warmup)[n])

    timings = {"baseline": lambda xb: time_early_exit(base, xb, [], device, warmup)[0],
               "baseline_plain": lambda xb: C.time_plain_path(base, xb, 0, device, warmup),
               "baseline_trunk": trunk(0, base)}
    for n in range(n_exits):
        forced = forced_exit_thresholds(n, n_exits)
        timings[f"path{n}"] = (lambda t: lambda xb: time_early_exit(net, xb, t, device,
                                                                     warmup)[0])(forced)
        timings[f"alone{n}"] = (lambda n: lambda xb: C.time_plain_path(net, xb, n, device,
                                                                       warmup))(n)
        if n:
            timings[f"cascade{n}"] = (lambda n: lambda xb: C.time_plain_path(
                net, xb, n, device, warmup, all_heads=True))(n)
    timings["trunk"] = lambda xb: np.stack([np.full(len(xb), v) for v in
                                            trunk_latency(net, xb, device, warmup)], axis=1)
    timings["knee"] = knee
    timings["knee_batched_routing"] = knee_batched

    for run in timings.values():  # one untimed pass over the first block warms everything
        run(x[:block])
    knee_result.clear()
    seconds = {key: [] for key in timings}
    passes = []
    for rep in range(repeats):
        for start in range(0, len(x), block):
            xb = x[start:start + block]
            for key, run in timings.items():
                seconds[key].append(run(xb))
            passes.append(np.full(len(xb), rep))
    ms = {key: 1e3 * np.concatenate(v) for key, v in seconds.items()}
    ms["pass"] = np.concatenate(passes)
    count = len(x)
    labels = np.concatenate(knee_result["labels"])[:count]
    exits = np.concatenate(knee_result["exits"])[:count]
    same = (np.array_equal(np.concatenate(knee_result["labels"]),
                           np.concatenate(knee_result["labels_b"]))
            and np.array_equal(np.concatenate(knee_result["exits"]),
                               np.concatenate(knee_result["exits_b"])))
    return ms, labels, exits, same, knee_result["has_fast_path"]


def per_sample(ms, repeats, statistic):
    """Per-sample ms of each timing: every pass ("mean"), or the fastest of the passes
    for each sample ("min": a sample's time when no other process preempted it)."""
    out = {}
    for key, v in ms.items():
        if key == "pass":
            continue
        if statistic == "min":
            v = v.reshape((repeats, -1) + v.shape[1:]).min(axis=0)
        out[key] = v
    return out


def summarise(ms, n_exits, fractions):
    """Mean ms per sample of each timing (``ms`` from ``per_sample``), and derived figures."""
    mean = {key: float(v.mean()) for key, v in ms.items() if v.ndim == 1}
    m = {"baseline_ms": mean["baseline"], "baseline_plain_ms": mean["baseline_plain"],
         "baseline_trunk_ms": mean["baseline_trunk"],
         "path_ms": [mean[f"path{n}"] for n in range(n_exits)],
         "alone_ms": [mean[f"alone{n}"] for n in range(n_exits)],
         "cascade_ms": [mean["alone0"]] + [mean[f"cascade{n}"] for n in range(1, n_exits)],
         "trunk_ms": ms["trunk"].mean(axis=0).tolist(),
         "knee_ms": mean["knee"], "knee_batched_routing_ms": mean["knee_batched_routing"]}
    limit = m["zero_overhead_limit_ms"] = float(np.dot(fractions, m["alone_ms"]))
    cascade = m["cascade_limit_ms"] = float(np.dot(fractions, m["cascade_ms"]))
    m["predicted_ms"] = float(np.dot(fractions, m["path_ms"]))
    trunk = m["trunk_only_knee_ms"] = float(np.dot(fractions, m["trunk_ms"]))
    m.update({
        "gain": m["baseline_ms"] / m["knee_ms"],
        "zero_overhead_gain": m["baseline_ms"] / limit,
        "trunk_only_gain": m["baseline_trunk_ms"] / trunk,
        "routing_overhead": m["knee_ms"] / limit - 1,
        "earlier_heads_overhead": cascade / limit - 1,
        "decision_overhead": m["knee_ms"] / cascade - 1,
        "decision_us_per_exit_path": [1e3 * (p - c) for p, c in
                                      zip(m["path_ms"], m["cascade_ms"])],
        "predict_bookkeeping_us_baseline": 1e3 * (m["baseline_ms"] - m["baseline_plain_ms"]),
        "fast_path_saving_us": 1e3 * (m["knee_batched_routing_ms"] - m["knee_ms"]),
        "routing_overhead_batched_routing": m["knee_batched_routing_ms"] / limit - 1,
    })
    return m


def routing_code_cost(n_exits, n_classes, device, samples, repeats, warmup):
    """Microseconds per sample of the routing code alone, fast path against batched loop.

    A stand-in network with ``n_exits`` exits whose trunk segments pass the input on and
    whose heads return fixed logits (one real-looking row) leaves only what the project's
    code does per sample: ``predict``'s checks and inference settings, the routing loop,
    the entropy, the comparisons, the transfers. "plain" is the same stand-in run without
    decisions (``time_plain_path``): what remains is Chainer's Link calls and the timing.
    """
    from branchynet.net import Branch, BranchyNet
    logits = device.send(np.random.RandomState(0).randn(1, n_classes).astype(np.float32))
    layers = []
    for n in range(n_exits):
        if n:
            layers.append(lambda h: h)
        layers.append(Branch([lambda h: logits]))
    stub = BranchyNet(layers)
    x = np.zeros((samples, 1), np.float32)
    timings = {}
    for n in range(n_exits):
        forced = forced_exit_thresholds(n, n_exits)
        timings[f"fast{n}"] = (lambda t: lambda: time_early_exit(stub, x, t, device, warmup)[0])(forced)
        timings[f"batched{n}"] = (lambda t: lambda: _batched(stub, x, t, device, warmup))(forced)
        timings[f"plain{n}"] = (lambda n: lambda: C.time_plain_path(stub, x, n, device, warmup))(n)
    runs = {key: [] for key in timings}
    for _ in range(repeats):
        for key, run in timings.items():
            runs[key].append(run())
    us = {key: 1e6 * float(np.stack(v).min(axis=0).mean()) for key, v in runs.items()}
    return {"samples": samples, "repeats": repeats, "statistic": "min over passes, mean over samples",
            "fast_path_us": [us[f"fast{n}"] for n in range(n_exits)],
            "batched_loop_us": [us[f"batched{n}"] for n in range(n_exits)],
            "plain_us": [us[f"plain{n}"] for n in range(n_exits)]}


def _batched(net, x, thresholds, device, warmup):
    with C.batched_routing_only():
        return time_early_exit(net, x, thresholds, device, warmup)[0]


def main(argv=None):
    args = parse_args(argv)
    device = args.chainer_device
    setup = C.prepare(args)
    report = C.Report("latency", args, setup)
    setup.baseline.to_device(device)
    setup.branchy.to_device(device)
    net, spec = setup.branchy, setup.spec
    x = setup.data.test_x[:args.timing_samples]
    y = setup.data.test_y[:args.timing_samples]
    tag = f"[latency] {spec.name} {report.doc['device']}"

    with report.figure("knee") as fig:
        point = C.knee_for(setup, device, args.eval_samples, x, args.warmup)
        fig.update({k: point[k] for k in ("thresholds", "accuracy", "exit_fractions", "path_ms",
                                          "path_ms_source", "eval_samples")})
        fig["grid_points"] = len(point["grid"])
        fig["frontier_size"] = len(point["frontier"])
    C.log(f"{tag}: knee T={', '.join(f'{t:g}' for t in point['thresholds'])}, exits "
          f"{'/'.join(f'{100 * f:.1f}' for f in point['exit_fractions'])}% and accuracy "
          f"{100 * point['accuracy']:.2f}% on {point['eval_samples']} eval images"
          + C.load_note(fig))
    thresholds, timed_point = point["thresholds"], "knee"
    if args.thresholds or args.exit_mix:
        outputs, _, _ = C.exit_outputs_for(setup, device, args.eval_samples)
        if args.thresholds:
            thresholds = list(check_thresholds(args.thresholds, net.n_exits))
            timed_point = "--thresholds"
        else:
            thresholds = thresholds_for_mix(outputs, args.exit_mix)
            timed_point = f"--exit-mix {','.join(f'{f:g}' for f in args.exit_mix)}"
        chosen = evaluate_grid(outputs, [thresholds])
        report.doc["figures"]["knee"]["timed_point"] = {
            "source": timed_point, "thresholds": thresholds,
            "accuracy": float(chosen.accuracy[0]),
            "exit_fractions": chosen.exit_fractions[0].tolist()}
        C.log(f"{tag}: timing {timed_point} instead of the knee: T="
              f"{', '.join(f'{t:.4g}' for t in thresholds)}, exits "
              f"{'/'.join(f'{100 * f:.1f}' for f in chosen.exit_fractions[0])}%, accuracy "
              f"{100 * chosen.accuracy[0]:.2f}% on {len(outputs.labels)} eval images")

    with report.figure("latency") as fig:
        ms, labels, exits, same, has_fast_path = measure(
            setup, x, device, thresholds, args.warmup, args.repeats, args.block)
        fractions = np.bincount(exits, minlength=net.n_exits) / len(exits)
        robust = summarise(per_sample(ms, args.repeats, "min"), net.n_exits, fractions)
        plain_mean = summarise(per_sample(ms, args.repeats, "mean"), net.n_exits, fractions)
        per_pass = [summarise(per_sample({k: v[ms["pass"] == rep] for k, v in ms.items()},
                                         1, "mean"), net.n_exits, fractions)
                    for rep in range(args.repeats)]
        m = robust
        fig.update(m)
        fig.update({
            "timing_samples": len(x), "repeats": args.repeats, "block": args.block,
            "statistic": "per sample the fastest of the passes, then the mean over samples "
                         "(blocks of all timings interleaved)",
            "mean_over_passes": plain_mean,
            "routing_overhead_per_pass": [p["routing_overhead"] for p in per_pass],
            "gain_per_pass": [p["gain"] for p in per_pass],
            "knee_median_ms": float(np.median(ms["knee"])),
            "baseline_median_ms": float(np.median(ms["baseline"])),
            "timed_point": timed_point, "thresholds": thresholds,
            "exit_fractions_timed": fractions.tolist(),
            "accuracy_timed": float((labels == y).mean()),
            "fast_path_same_decisions": same, "has_fast_path": has_fast_path,
            "target_routing_overhead": 0.10,
        })
    note = C.load_note(fig)
    limit, trunk = m["zero_overhead_limit_ms"], m["trunk_only_knee_ms"]
    C.log(f"{tag}: baseline {m['baseline_ms']:.3f} ms end to end, {m['baseline_trunk_ms']:.3f} ms "
          f"trunk-only{note}")
    C.log(f"{tag}: B-net at {timed_point} {m['knee_ms']:.3f} ms end to end (gain {m['gain']:.2f}x), "
          f"trunk-only {trunk:.3f} ms (authors' accounting, gain {m['trunk_only_gain']:.2f}x)"
          f"{note}")
    C.log(f"{tag}: zero-overhead limit {limit:.3f} ms (gain {m['zero_overhead_gain']:.2f}x); "
          f"routing overhead {100 * m['routing_overhead']:.1f}% (target <= 10%) = earlier "
          f"heads {100 * m['earlier_heads_overhead']:.1f}% + decisions "
          f"{100 * m['decision_overhead']:.1f}%{note}")
    C.log(f"{tag}: same with plain means over all passes: gain {plain_mean['gain']:.2f}x, "
          f"limit gain {plain_mean['zero_overhead_gain']:.2f}x, routing overhead "
          f"{100 * plain_mean['routing_overhead']:.1f}% (per pass "
          f"{', '.join(f'{100 * v:.1f}%' for v in fig['routing_overhead_per_pass'])})")
    if has_fast_path:
        C.log(f"{tag}: batch-size-1 fast path {m['knee_ms']:.3f} ms vs batched routing loop "
              f"{m['knee_batched_routing_ms']:.3f} ms at the {timed_point} (saves "
              f"{m['fast_path_saving_us']:.1f} us/sample; same decisions: {same}){note}")

    if has_fast_path:
        with report.figure("routing_code") as fig:
            fig.update(routing_code_cost(net.n_exits, int(setup.data.train_y.max()) + 1, device,
                                         args.routing_samples, max(args.repeats, 3), args.warmup))
        C.log(f"{tag}: routing code alone per sample, by exit taken: fast path "
              f"{', '.join(f'{v:.1f}' for v in fig['fast_path_us'])} us, batched loop "
              f"{', '.join(f'{v:.1f}' for v in fig['batched_loop_us'])} us, no decisions "
              f"{', '.join(f'{v:.1f}' for v in fig['plain_us'])} us{C.load_note(fig)}")

    with report.figure("flops") as fig:
        fig.update(flop_figures(net, setup.baseline, x.shape[1:], fractions))
    C.log(f"{tag}: FLOP-ideal gain {fig['flop_ideal_gain']:.2f}x "
          f"({fig['flop_gain_with_earlier_heads']:.2f}x counting earlier heads); multiply-adds "
          f"per exit path {', '.join(f'{v / 1e6:.3g}M' for v in fig['path_macs'])}, baseline "
          f"{fig['baseline_macs'] / 1e6:.3g}M")
    base_macs = fig["baseline_macs"]

    with report.figure("framework_overhead") as fig:
        fig.update(framework_profile(setup.baseline, x[:args.profile_samples], device,
                                     base_macs, args.warmup))
    C.log(f"{tag}: framework at batch size 1: {fig['function_call_us']:.1f} us per Chainer "
          f"function call ({fig['link_call_us']:.1f} us per Link, {fig['numpy_op_us']:.2f} us per "
          f"raw array op), {fig['functions_per_sample']:.0f} calls per baseline forward "
          f"({fig['forward_ms']:.3f} ms): {fig['inside_functions_ms']:.3f} ms inside the "
          f"functions' array code, FLOP time {fig['flop_ms']:.4f} ms at {fig['peak_gflops']:.0f} "
          f"GFLOP/s ({100 * fig['flop_fraction']:.1f}%); type checks off: "
          f"{fig['forward_type_check_off_ms']:.3f} ms{C.load_note(fig)}")
    return report.write()


if __name__ == "__main__":
    main()
    sys.exit(0)
