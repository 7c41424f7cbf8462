"""Print the Chainer vs ONNX Runtime table of docs/deploy.md from deploy_<tag>.json files.

    python scripts/deploy_table.py results/deploy-lenet_mnist results/deploy-alexnet_cifar10 \\
        results/deploy-resnet110_cifar10

    python scripts/deploy_table.py --steps results/deploy-alexnet_cifar10-converged

One row per timed point (the knee, and the --exit-mix point if any) and network. Figures
are each sample's fastest round, mean over samples (``summaries_fastest_round_per_sample``);
in brackets, the median of the per-round means with its range (``summaries``). "Saved":
the share of the time the multiply-adds say could be saved that the runtime saves,
(baseline - B-net) / (baseline - FLOP-ideal time), FLOP-ideal time = baseline / FLOP-ideal
gain. ``--steps``: per point, ONNX Runtime's composed graph from the FLOP-ideal time to the
measured one, step by step (the steps of ``python -m experiments.deploy time``).
"""
import json
import os
import sys


def _gain(fast, rounds):
    g = rounds["gain"]
    return f"{fast['gain']['median']:.2f}x ({g['median']:.2f}x, {g['low']:.2f}-{g['high']:.2f})"


def saved_share(runtime, flop_ideal_gain):
    """(baseline - B-net) / (baseline - baseline / FLOP-ideal gain) of one runtime."""
    base, point = runtime["baseline"]["median_ms"], runtime["point"]["median_ms"]
    return (base - point) / (base - base / flop_ideal_gain)


def rows(folder, tag="cpu"):
    with open(os.path.join(folder, f"deploy_{tag}.json"), encoding="utf-8") as f:
        record = json.load(f)
    manifest_path = os.path.join(folder, "onnx", "manifest.json")
    with open(manifest_path, encoding="utf-8") as f:
        title = json.load(f)["title"]
    out = []
    for label, fast in record["summaries_fastest_round_per_sample"].items():
        per_round = record["summaries"][label]
        c, p, g = (fast["runtimes"][k] for k in ("chainer", "ort", "ort-1g"))
        cr, pr, gr = (per_round["runtimes"][k] for k in ("chainer", "ort", "ort-1g"))
        exits = " / ".join(f"{100 * f:.1f}" for f in fast["exit_fractions"])
        out.append(
            f"| B-{title} | {label} ({exits}) | {fast['flop_ideal_gain']:.2f}x "
            f"| {c['baseline']['median_ms']:.3f} → {c['point']['median_ms']:.3f} | {_gain(c, cr)} "
            f"| {100 * saved_share(c, fast['flop_ideal_gain']):.0f}% "
            f"| {c['zero_overhead_gain']['median']:.2f}x "
            f"| {g['baseline']['median_ms']:.4f} → {g['point']['median_ms']:.4f} | {_gain(g, gr)} "
            f"| {100 * saved_share(g, fast['flop_ideal_gain']):.0f}% "
            f"| {g['zero_overhead_gain']['median']:.2f}x "
            f"| {100 * g['decision_share']:.1f}% "
            f"| {p['point']['median_ms']:.4f}, {p['gain']['median']:.2f}x |")
    return out


def steps(folder, tag="cpu", runtime="ort-1g"):
    """Where the FLOP-ideal saving goes at each timed point, step by step: the time of each
    step (ms) and the share of the FLOP-ideal saving it keeps."""
    with open(os.path.join(folder, f"deploy_{tag}.json"), encoding="utf-8") as f:
        record = json.load(f)
    out = ["| point (exits %) | step | ms per sample | gain | saved |", "|---|---|---|---|---|"]
    for label, fast in record["summaries_fastest_round_per_sample"].items():
        r = fast["runtimes"][runtime]
        base, ideal = r["baseline"]["median_ms"], fast["flop_ideal_gain"]
        point = r["point"]["median_ms"]
        scored = point * (1 - r.get("routing_share", r["decision_share"]))
        rows = [("FLOP-ideal: time in proportion to the exit paths' multiply-adds", ideal),
                ("the B-net's own multiply-adds (earlier heads counted)",
                 fast["flop_gain_with_earlier_heads"]),
                ("FLOP-ideal + one call's fixed cost", r.get("flop_ideal_with_call_gain")),
                ("zero-overhead limit: the exit paths alone, mixed", r["zero_overhead_gain"]["median"]),
                ("+ earlier heads (no scores, no decisions)", r["cascade_gain"]["median"]),
                ("+ scores", base / scored if "scores_share" in r else None),
                ("measured: + comparisons and routing", base / point)]
        exits = " / ".join(f"{100 * f:.1f}" for f in fast["exit_fractions"])
        for name, gain in rows:
            if gain is None:
                continue
            t = base / gain
            out.append(f"| {label} ({exits}) | {name} | {t:.4f} | {gain:.2f}x "
                       f"| {100 * (base - t) / (base - base / ideal):.0f}% |")
    return out


def main(folders):
    if folders and folders[0] == "--steps":
        for folder in folders[1:]:
            print("\n".join(steps(folder)))
        return
    print("| B-net | point (exits %) | FLOP-ideal gain | Chainer: baseline → B-net (ms) "
          "| Chainer gain | Chainer: saved | Chainer zero-overhead limit "
          "| ONNX Runtime, one graph: baseline → B-net (ms) | ONNX Runtime gain "
          "| ONNX Runtime: saved | ONNX Runtime zero-overhead limit | decisions (share) "
          "| ONNX Runtime, parts: B-net (ms), gain |")
    print("|" + "---|" * 13)
    for folder in folders:
        for row in rows(folder):
            print(row)


if __name__ == "__main__":
    main(sys.argv[1:])
