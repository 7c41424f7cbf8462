"""Side by side with the authors' code: same weights, same outputs, both clocks.

    python -m experiments.authors --authors-repo ~/src/branchynet --network lenet_mnist

sets up (or reuses) the authors' Python 2.7 environment from their ``requirements.txt``,
takes one set of weights into both implementations (their ``.bn`` model with ``--model``,
ours with ``--weights``, or their own initialisation, optionally trained by their code
with ``--authors-train``), and prints and writes (``--out``):

* equivalence: every exit's logits and entropies, the baseline's logits, exit decisions,
  accuracy and exit counts at the paper's thresholds (their ``test()`` at batch size 1
  against ours);
* training: loss of N Adam steps on the same minibatches, baseline phase and joint phase;
* timing (``--timing-samples``): LeNet and the B-net at T and at each forced exit, their
  reported time (trunk only), their wall clock, our end-to-end and trunk-only time,
  interleaved; and (``--epoch-rounds``) one training epoch, theirs against ours.

The weights cross both ways (``theirs_as_ours_*.npz``, ``ours_as_theirs.bn``).
See docs/authors.md.
"""
import argparse
import os
import sys
import tempfile
import time

import branchynet  # noqa: F401  (Chainer compatibility fixes first)
import chainer
import numpy as np

from branchynet import authors as A
from branchynet.io import write_json, write_text
from branchynet.net import Branch, BranchyNet
from branchynet.paper import TABLE_I
from branchynet.report import machine_info
from networks import REGISTRY, get_network

NEAR = 1e-6  # a sample this close to a threshold may leave elsewhere by float rounding
LOGIT_RTOL = 1e-5  # logits agree within this fraction of the largest |logit| (float32)
ENTROPY_ATOL = 1e-5
LOSS_RTOL = 1e-4
ROUNDING_FACTOR = 3  # theirs may sit this many times farther than ours from float64
FIXTURE_SAMPLES = 300


def spec_exits(spec):
    """The Branch markers of the network (one per exit)."""
    return [layer for layer in spec.build() if isinstance(layer, Branch)]


def paper_thresholds(spec):
    """The paper's knee T (Table I, CPU) for the network of ``spec``."""
    for dev, network, _, _, _, thresholds, _ in TABLE_I:
        if dev == "cpu" and network == "B-" + spec.title:
            return list(thresholds)
    raise ValueError(f"no paper thresholds for {spec.name}")


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m experiments.authors", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--authors-repo", required=True, metavar="PATH",
                   help="your checkout of github.com/kunglab/branchynet")
    p.add_argument("--python2", metavar="PATH",
                   help="Python 2.7 interpreter for their environment (default: python2.7 on "
                        "PATH, else pyenv's 2.7)")
    p.add_argument("--env", metavar="DIR",
                   help=f"their virtualenv, created if missing (default {A.default_env_dir()})")
    p.add_argument("--network", default="lenet_mnist", choices=sorted(REGISTRY))
    src = p.add_mutually_exclusive_group()
    src.add_argument("--model", metavar="FILE.bn",
                     help="a model trained and dill-saved by their code (theirs -> ours)")
    src.add_argument("--weights", metavar="NPZ",
                     help="our B-net weights (e.g. results/.../branchynet.npz; ours -> theirs)")
    p.add_argument("--baseline-weights", metavar="NPZ",
                   help="with --weights: our baseline weights for their main network "
                        "(default: the B-net's trunk and final exit)")
    p.add_argument("--authors-train", nargs=2, type=int, default=(0, 0),
                   metavar=("BASELINE", "JOINT"),
                   help="without --model/--weights: train their initialised model with their "
                        "utils.train for these epochs (batch 512) first")
    p.add_argument("--authors-train-steps", type=int, default=0, metavar="N",
                   help="without --model/--weights: N baseline then N joint minibatches "
                        "(--train-batch) of their training on their initialisation first "
                        "(sets their BatchNorm statistics; a short alternative to "
                        "--authors-train)")
    p.add_argument("--seed", type=int, default=0, help="seed of their initialisation")
    p.add_argument("--data-dir", help="dataset folder (else $BRANCHYNET_DATA, the cache)")
    p.add_argument("--test-samples", type=int, default=1000,
                   help="test images compared (the first N of the test set)")
    p.add_argument("--route-samples", type=int,
                   help="of those, routed one by one through their test() (default: all)")
    p.add_argument("--thresholds", type=float, nargs="+", metavar="T",
                   help="threshold vector for the exit decisions (default: the paper's)")
    p.add_argument("--train-steps", type=int,
                   help="Adam steps for the training check (default 5 for lenet_mnist, else 0)")
    p.add_argument("--train-batch", type=int, default=64)
    p.add_argument("--timing-samples", type=int, default=0,
                   help="test images timed at batch size 1 (0: no timing)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds")
    p.add_argument("--epoch-rounds", type=int, default=0,
                   help="rounds of one training epoch (batch 512, full training set), theirs "
                        "and ours alternating (0: none)")
    p.add_argument("--out", help="results folder (default results/authors-<network>)")
    p.add_argument("--write-fixture", metavar="DIR",
                   help="also write the CI fixture (their weights, outputs, losses) to DIR")
    args = p.parse_args(argv)
    for name in ("test_samples", "timing_samples", "rounds", "train_batch"):
        if getattr(args, name) < (1 if name in ("test_samples", "rounds", "train_batch") else 0):
            p.error(f"--{name.replace('_', '-')} is too small")
    if args.baseline_weights and not args.weights:
        p.error("--baseline-weights goes with --weights")
    if (args.model or args.weights) and (any(args.authors_train) or args.authors_train_steps):
        p.error("--authors-train trains their own initialisation: not with --model/--weights")
    if args.train_steps is None:
        args.train_steps = 5 if args.network == "lenet_mnist" else 0
    for name in ("model", "weights", "baseline_weights"):
        path = getattr(args, name)
        if path and not os.path.isfile(path):
            p.error(f"--{name.replace('_', '-')} {path}: no such file")
    args.out = args.out or os.path.join("results", f"authors-{args.network}")
    return args


def log(*a):
    print(*a, flush=True)


def _save_npz(path, **arrays):
    A.save_interchange(path, arrays)


def _our_nets(spec, arrays):
    net = A.from_interchange(BranchyNet(spec.build()), arrays, "branchy")
    baseline = A.from_interchange(BranchyNet(spec.build(), main_only=True), arrays, "main")
    return net, baseline


def _batched_logits(net, x, batch=100):
    parts = [net.predict_all_exits(x[i:i + batch]) for i in range(0, len(x), batch)]
    return [np.concatenate([p[n] for p in parts]) for n in range(net.n_exits)]


def equivalence(their, spec, net, baseline, x, y, route_n, thresholds, work):
    """Logits, entropies and exit decisions of both on the same weights and images."""
    _save_npz(os.path.join(work, "test.npz"), x=x, y=y)
    their.call("outputs", x=os.path.join(work, "test.npz"),
               out=os.path.join(work, "their_outputs.npz"))
    theirs = A.load_interchange(os.path.join(work, "their_outputs.npz"))
    ours = _batched_logits(net, x)
    ours_main = _batched_logits(baseline, x)[0]
    # Float64 reference on the same weights: how far float32 rounding alone moves outputs.
    x64 = x.astype(np.float64)
    ref = _batched_logits(A.float64_copy(net), x64)
    ref_main = _batched_logits(A.float64_copy(baseline), x64)[0]
    result = {"samples": int(len(x)), "exits": []}
    for n in range(net.n_exits):
        z = theirs[f"logits{n + 1}"]
        e_ours, e_theirs = A.our_entropies(ours[n]), theirs[f"entropy{n + 1}"]
        e_ref = A.our_entropies(ref[n].astype(np.float64))
        row = A.compare_logits(ours[n], z)
        row["entropy_max_abs"] = float(np.abs(e_ours - e_theirs).max())
        row["ours_vs_float64"] = A.compare_logits(ours[n], ref[n])["max_rel"]
        row["theirs_vs_float64"] = A.compare_logits(z, ref[n])["max_rel"]
        row["entropy_ours_vs_float64"] = float(np.abs(e_ours - e_ref).max())
        row["entropy_theirs_vs_float64"] = float(np.abs(e_theirs - e_ref).max())
        result["exits"].append(row)
    result["baseline"] = A.compare_logits(ours_main, theirs["main"])
    result["baseline"]["ours_vs_float64"] = A.compare_logits(ours_main, ref_main)["max_rel"]
    result["baseline"]["theirs_vs_float64"] = A.compare_logits(theirs["main"], ref_main)["max_rel"]
    # Exit decisions: their test() one sample at a time, against our predict() likewise.
    xr, yr = x[:route_n], y[:route_n]
    forced = [[-1.0] * n + [1e9] * (net.n_exits - 1 - n) for n in range(net.n_exits)]
    vectors = [list(thresholds)] + forced
    _save_npz(os.path.join(work, "route.npz"), x=xr, y=yr)
    their.call("route", x=os.path.join(work, "route.npz"),
               out=os.path.join(work, "their_route.npz"), thresholds=vectors)
    routed = A.load_interchange(os.path.join(work, "their_route.npz"))
    entropies = [A.our_entropies(ours[n][:route_n]) for n in range(net.n_exits)]
    result["routing"] = []
    for v, ts in enumerate(vectors):
        ours_labels, ours_exits = [], []
        our_ts = A.our_thresholds(ts)
        for i in range(route_n):
            label, exit_ = net.predict(xr[i:i + 1], our_ts)
            ours_labels.append(int(label[0]))
            ours_exits.append(int(exit_[0]))
        ours_exits = np.array(ours_exits)
        ours_correct = np.array(ours_labels) == yr
        their_exits, their_correct = routed[f"exits_{v}"], routed[f"correct_{v}"]
        row = {"thresholds": ts if v == 0 else f"forced exit {v}",
               **A.compare_decisions(ours_exits, their_exits, entropies, ts, NEAR),
               "accuracy_ours": float(ours_correct.mean()),
               "accuracy_theirs": float(their_correct.mean()),
               "exit_counts_ours": np.bincount(ours_exits, minlength=net.n_exits).tolist(),
               "exit_counts_theirs": np.bincount(their_exits, minlength=net.n_exits).tolist()}
        result["routing"].append(row)
    base_correct = ours_main[:route_n].argmax(1) == yr
    result["baseline_accuracy"] = {"ours": float(base_correct.mean()),
                                   "theirs": float(routed["correct_main"].mean())}
    result["fixture"] = {"their_outputs": theirs, "their_route": routed, "vectors": vectors}
    return result


def training_check(their, spec, data, steps, batch, seed, arrays_trained, work):
    """Baseline phase from their fresh initialisation, joint phase from the given weights:
    N Adam steps each on the same minibatches, theirs (fresh optimizers) and ours."""
    rng = np.random.RandomState(seed)
    idx = rng.permutation(len(data.train_y))[:steps * batch]
    bx = data.train_x[idx].reshape((steps, batch) + data.train_x.shape[1:])
    by = data.train_y[idx].reshape(steps, batch)
    path = os.path.join(work, "batches.npz")
    _save_npz(path, x=bx, y=by)
    out = {"steps": steps, "batch": batch}
    # Joint phase from the compared weights (their main gets the branchy view as well,
    # since their train() scatters main's trunk into every copy).
    branchy_only = {k: v for k, v in arrays_trained.items() if k.startswith("branchy/")}
    _save_npz(os.path.join(work, "branchy_only.npz"), **branchy_only)
    their.call("import", path=os.path.join(work, "branchy_only.npz"))
    theirs_joint = np.array(their.call("train_steps", phase="joint", batches=path)["losses"])
    their.call("export", path=os.path.join(work, "after_joint.npz"))
    net = A.from_interchange(BranchyNet(spec.build()), arrays_trained, "branchy")
    ref_joint = A.run_train_steps(A.float64_copy(net), bx.astype(np.float64), by)
    ours_joint = A.run_train_steps(net, bx, by)
    after = A.load_interchange(os.path.join(work, "after_joint.npz"))
    mine = A.to_interchange(net, "branchy")
    diffs = sorted(((float(np.abs(mine[k] - after[k]).max()), k) for k in mine
                    if k.endswith(("/W", "/b", "gamma", "beta"))), reverse=True)
    out["joint_largest_weight_differences"] = [{"array": k, "max_abs": d} for d, k in diffs[:5]]
    flat = [np.abs(mine[k] - after[k]) for k in mine if k.endswith(("/W", "/b", "gamma", "beta"))]
    out["joint_fraction_of_weights_apart"] = float(
        sum(int((d > 1e-5).sum()) for d in flat) / sum(d.size for d in flat))
    out["joint"] = {"theirs": theirs_joint.tolist(), "ours": ours_joint.tolist(),
                    "ours_float64": ref_joint.tolist(),
                    **_loss_gaps(ours_joint, theirs_joint, ref_joint),
                    "weights_max_abs_after": float(max(np.abs(mine[k] - after[k]).max()
                                                       for k in mine if k.endswith(("/W", "/b"))))}
    # Baseline phase from their fresh initialisation. First the gradients of the first
    # minibatch (their train_main's, without the update), then a fresh build of the same
    # initialisation for the steps.
    their.call("build", network=spec.name, seed=seed + 1)
    their.call("export", path=os.path.join(work, "init.npz"))
    init = A.load_interchange(os.path.join(work, "init.npz"))
    their.call("grads", phase="main", batches=path, out=os.path.join(work, "grads.npz"))
    their_grads = A.load_interchange(os.path.join(work, "grads.npz"))
    their.call("build", network=spec.name, seed=seed + 1)
    gradients = _gradient_check(spec, init, their_grads, bx[0], by[0])
    theirs_main = np.array(their.call("train_steps", phase="main", batches=path)["losses"])
    baseline = A.from_interchange(BranchyNet(spec.build(), main_only=True), init, "main")
    ref_main = A.run_train_steps(A.float64_copy(baseline), bx.astype(np.float64), by)
    ours_main = A.run_train_steps(baseline, bx, by)
    out["baseline"] = {"theirs": theirs_main.tolist(), "ours": ours_main.tolist(),
                       "ours_float64": ref_main.tolist(),
                       **_loss_gaps(ours_main, theirs_main, ref_main),
                       "first_gradients": gradients}
    # Their pipeline continues into the joint phase with the state the baseline phase left.
    their.call("export", path=os.path.join(work, "after_main.npz"))
    their.call("train_steps", phase="joint", batches=path, fresh_optimizers=False)
    desc = their.call("export", path=os.path.join(work, "after_both.npz"))
    mid = A.load_interchange(os.path.join(work, "after_main.npz"))
    end = A.load_interchange(os.path.join(work, "after_both.npz"))
    final = [k for k in init if k.startswith("branchy/exit") and
             k.split("/")[1] == f"exit{len(spec_exits(spec))}"]
    out["their_pipeline"] = {
        "final_exit_untouched_by_baseline_phase": all(np.array_equal(mid[k], init[k])
                                                      for k in final),
        "main_final_copy_change_in_joint_phase": float(max(
            np.abs(end["main" + k[7:]] - mid["main" + k[7:]]).max() for k in final)),
        "main_optimizer_steps_after_both": desc["optimizer_steps"]["main"],
        "branch_optimizer_steps_after_both": desc["optimizer_steps"]["models"]}
    out["fixture"] = {"x": bx, "y": by, "init": init, "theirs_main": theirs_main,
                      "theirs_joint": theirs_joint}
    return out


def _gradient_check(spec, init, their_grads, x, y):
    """Gradients of the baseline loss on one minibatch from the same weights: theirs, ours
    and ours in float64. Per array, the largest difference relative to the array's largest
    float64 gradient; arrays whose float64 gradient is zero up to rounding (below 1e-9 of
    the network's largest, e.g. a convolution bias in front of BatchNorm) are counted apart:
    Adam's first step moves such a parameter by +-alpha whatever the rounding noise."""
    import chainer.functions as F

    def ours(dtype):
        net = A.from_interchange(BranchyNet(spec.build(), main_only=True), init, "main")
        if dtype == np.float64:
            net = A.float64_copy(net)
        with chainer.using_config("train", True):
            loss = F.softmax_cross_entropy(net(np.asarray(x, dtype))[0], np.asarray(y, np.int32))
        net.cleargrads()
        loss.backward()
        return A.interchange_grads(net, "main")

    g32, g64 = ours(np.float32), ours(np.float64)
    top = max(float(np.abs(g).max()) for g in g64.values())
    rel = {"theirs_vs_float64": [], "ours_vs_float64": [], "theirs_vs_ours": []}
    zero = 0
    for key, ref in g64.items():
        scale = float(np.abs(ref).max())
        if scale < 1e-9 * top:
            zero += 1
            continue
        rel["theirs_vs_float64"].append(float(np.abs(their_grads[key] - ref).max()) / scale)
        rel["ours_vs_float64"].append(float(np.abs(g32[key] - ref).max()) / scale)
        rel["theirs_vs_ours"].append(float(np.abs(their_grads[key] - g32[key]).max()) / scale)
    out = {"arrays": len(g64), "zero_gradient_arrays": zero}
    for name, values in rel.items():
        out[name] = {"max": float(np.max(values)), "median": float(np.median(values))}
    return out


def _loss_gaps(ours, theirs, ref):
    """Largest relative loss differences: ours vs theirs, and each against float64."""
    rel = lambda a, b: float(np.max(np.abs(a - b) / np.abs(b)))  # noqa: E731
    return {"max_rel": rel(ours, theirs), "ours_vs_float64": rel(ours, ref),
            "theirs_vs_float64": rel(theirs, ref)}


class _TheirClock:
    """One of their timed variants as an ``interleave`` callable: returns their wall clock
    per sample and keeps the time their code reports (trunk only) for every call, keyed by
    sample and wall time, so the calls ``interleave`` timed (not its warm-up calls) can be
    picked out afterwards."""

    def __init__(self, their, variant, thresholds=None):
        self.their, self.variant, self.thresholds = their, variant, thresholds
        self.reported = {}

    def __call__(self, i):
        r = self.their.call("time", variant=self.variant, start=int(i), count=1,
                            thresholds=self.thresholds)
        wall = float(r["wall"][0])
        self.reported[(int(i), wall)] = r["reported"][0]
        return wall

    def reported_rounds_ms(self, seconds):
        """Per-round mean (ms) of the reported times of the calls timed in ``seconds``
        (rounds x samples, as ``Interleaved.seconds[name]``)."""
        values = np.array([[self.reported[(i, float(s))] for i, s in enumerate(row)]
                           for row in np.asarray(seconds)])
        return 1e3 * values.mean(axis=1)


class _OurTrunkAt:
    """Our trunk segments only, timed per sample under early exit at ``thresholds`` (the
    authors' accounting of a mixed point); heads, entropy and routing run untimed."""

    def __init__(self, net, x, thresholds):
        self.net, self.x, self.thresholds = net, x, list(thresholds)
        self.score = A.entropy

    def __call__(self, i):
        net, total, h = self.net, 0.0, self.x[i:i + 1]
        with chainer.using_config("train", False), chainer.no_backprop_mode():
            for n, head in enumerate(net.heads):
                start = time.perf_counter()
                h = net.run_trunk(h, n)
                total += time.perf_counter() - start
                if n == net.n_exits - 1:
                    break
                logits = chainer.as_array(head(h))
                if self.score(logits)[0] < self.thresholds[n]:
                    break
        return total


class _ChildClocks:
    """Our timed variants in a forked child process, driven one call at a time over a pipe,
    as their variants are in their process: both sides then sleep between calls alike, so
    the scheduler treats them alike on a loaded machine."""

    def __init__(self, variants):
        import multiprocessing
        ctx = multiprocessing.get_context("fork")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_serve_clocks, args=(child, variants), daemon=True)
        self.proc.start()

    def variant(self, name):
        def run(i):
            self.conn.send((name, i))
            return self.conn.recv()
        return run

    def close(self):
        self.conn.send(None)
        self.proc.join(timeout=30)


def _serve_clocks(conn, variants):
    while True:
        message = conn.recv()
        if message is None:
            return
        name, i = message
        conn.send(variants[name](i))


def timing(their, net, baseline, x, y, thresholds, rounds, work):
    """LeNet and the B-net at T and at each forced exit: their reported and wall times,
    our end-to-end and trunk-only times, in interleaved sample blocks.

    Their variants run in their process and ours in a child process, each driven one
    sample at a time; our end-to-end time is also taken in this (driving) process, to
    show what the difference in scheduling does.
    """
    from branchynet.timing import EndToEnd, TrunkOnly, forced_exit_thresholds, interleave
    _save_npz(os.path.join(work, "timing.npz"), x=x, y=y)
    their.call("load_timing_data", x=os.path.join(work, "timing.npz"))
    configs = [("baseline", None, None)]
    configs.append(("T=" + ",".join(f"{t:g}" for t in thresholds), list(thresholds), None))
    for n in range(net.n_exits):
        configs.append((f"exit {n + 1}", forced_exit_thresholds(n, net.n_exits), n))
    ours, here, theirs = {}, {}, {}
    for name, ts, n in configs:
        if ts is None:
            ours[f"{name}|ours"] = EndToEnd(baseline, x, [])
            ours[f"{name}|ours_trunk"] = TrunkOnly(baseline, x, 0)
            here[f"{name}|ours_here"] = EndToEnd(baseline, x, [])
            theirs[name] = _TheirClock(their, "main")
        else:
            ours[f"{name}|ours"] = EndToEnd(net, x, ts)
            ours[f"{name}|ours_trunk"] = (TrunkOnly(net, x, n) if n is not None
                                          else _OurTrunkAt(net, x, ts))
            here[f"{name}|ours_here"] = EndToEnd(net, x, ts)
            their_ts = [-1.0 if t == 0 else (1e9 if np.isinf(t) else t) for t in ts]
            theirs[name] = _TheirClock(their, "branchy", their_ts)
    child = _ChildClocks(ours)
    try:
        variants = {name: child.variant(name) for name in ours}
        variants.update(here)
        variants.update({f"{name}|theirs": clock for name, clock in theirs.items()})
        t = interleave(variants, len(x), rounds=rounds, block=10)
    finally:
        child.close()
    rows = []
    for name, _, _ in configs:
        reported = theirs[name].reported_rounds_ms(t.seconds[f"{name}|theirs"])
        row = {"config": name,
               "theirs_reported": _stats(reported),
               "theirs_wall": t.stats(f"{name}|theirs"),
               "ours_end_to_end": t.stats(f"{name}|ours"),
               "ours_trunk_only": t.stats(f"{name}|ours_trunk"),
               "ours_end_to_end_in_driver": t.stats(f"{name}|ours_here"),
               "wall_theirs_over_ours": t.ratio(f"{name}|theirs", f"{name}|ours")}
        rows.append(row)
    return {"samples": len(x), "rounds": rounds, "rows": rows, "interleaved": t.to_json(),
            "processes": "theirs: their Python 2.7 process; ours: a forked child process; "
                         "'in driver': the process running interleave()"}


def _stats(per_round_ms):
    r = np.asarray(per_round_ms, np.float64)
    q1, med, q3 = np.percentile(r, [25, 50, 75])
    return {"median_ms": float(med), "q1_ms": float(q1), "q3_ms": float(q3),
            "min_ms": float(r.min()), "max_ms": float(r.max())}


def epoch_timing(their, spec, data, rounds, work, batch=512):
    """One training epoch at batch 512, baseline phase and joint phase, theirs and ours,
    alternating (the order flips every round). Wall seconds per epoch."""
    from branchynet.training import train
    path = os.path.join(work, "train.npz")
    _save_npz(path, x=data.train_x, y=data.train_y)
    cpu = chainer.get_device("@numpy")
    results = {k: [] for k in ("theirs_main", "theirs_joint", "ours_main", "ours_joint",
                               "theirs_main_reported", "theirs_joint_reported")}
    for r in range(rounds):
        order = ["theirs", "ours"] if r % 2 == 0 else ["ours", "theirs"]
        for phase in ("main", "joint"):
            for who in order:
                if who == "theirs":
                    res = their.call("epoch", phase=phase, data=path, batchsize=batch, seed=r)
                    results[f"theirs_{phase}"].append(res["wall"])
                    results[f"theirs_{phase}_reported"].append(res["reported"])
                else:
                    net = BranchyNet(spec.build(), main_only=(phase == "main"))
                    with tempfile.TemporaryDirectory(dir=work) as out:
                        start = time.perf_counter()
                        train(net, data.train_x, data.train_y, 1, batch, out, cpu, seed=r,
                              progress=False)
                        results[f"ours_{phase}"].append(time.perf_counter() - start)
                log(f"[epoch] round {r + 1} {phase} {who}: "
                    f"{results[f'{who}_{phase}'][-1]:.1f} s")
    return {"batch": batch, "train_samples": int(len(data.train_y)), "rounds": rounds,
            "seconds": results}


def write_fixture(path, spec, arrays, eq, train, x, y, info):
    """The CI fixture: their weights, their outputs and decisions on the first
    ``FIXTURE_SAMPLES`` images, their losses from given weights and batches."""
    n = min(FIXTURE_SAMPLES, len(x))
    os.makedirs(path, exist_ok=True)
    weights = {k: v for k, v in arrays.items()}
    A.save_interchange(os.path.join(path, "weights.npz"), weights, compressed=True)
    outs = eq["fixture"]["their_outputs"]
    route = eq["fixture"]["their_route"]
    fixed = {"x": x[:n], "y": y[:n], "main": outs["main"][:n]}
    for k, v in outs.items():
        if k.startswith(("logits", "entropy")):
            fixed[k] = v[:n]
    for k, v in route.items():
        fixed[k] = v[:n]
    A.save_interchange(os.path.join(path, "outputs.npz"), fixed, compressed=True)
    meta = {"network": spec.name, "samples": n, "vectors": eq["fixture"]["vectors"], **info}
    if train:
        f = train["fixture"]
        A.save_interchange(os.path.join(path, "training.npz"),
                           {"x": f["x"], "y": f["y"], "theirs_main": f["theirs_main"],
                            "theirs_joint": f["theirs_joint"],
                            **{k: v for k, v in f["init"].items() if k.startswith("main/")}},
                           compressed=True)
        meta["training"] = {"steps": train["steps"], "batch": train["batch"]}
    write_json(os.path.join(path, "meta.json"), meta)


# ---------------------------------------------------------------------------------------
# Tables


def _ms(s):
    return f"{s['median_ms']:.3f} [{s['min_ms']:.3f}-{s['max_ms']:.3f}]"


def tables(eq, train, tim, epoch, spec):
    lines = [f"## Equivalence: {spec.name}, {eq['samples']} test images", "",
             "Differences relative to the largest |logit|; float64: each float32 result against "
             "ours in float64 on the same weights (what rounding alone does).", "",
             "| output | max abs diff | ours vs theirs | ours vs float64 | theirs vs float64 | "
             "same argmax | entropy: ours vs theirs (ours, theirs vs float64) |",
             "|---|---|---|---|---|---|---|"]
    for n, row in enumerate(eq["exits"]):
        lines.append(f"| exit {n + 1} logits | {row['max_abs']:.2e} | {row['max_rel']:.2e} | "
                     f"{row['ours_vs_float64']:.2e} | {row['theirs_vs_float64']:.2e} | "
                     f"{100 * row['argmax_equal']:.2f}% | {row['entropy_max_abs']:.2e} "
                     f"({row['entropy_ours_vs_float64']:.2e}, "
                     f"{row['entropy_theirs_vs_float64']:.2e}) |")
    b = eq["baseline"]
    lines.append(f"| baseline (their main) logits | {b['max_abs']:.2e} | {b['max_rel']:.2e} | "
                 f"{b['ours_vs_float64']:.2e} | {b['theirs_vs_float64']:.2e} | "
                 f"{100 * b['argmax_equal']:.2f}% | - |")
    lines += ["", "| thresholds | samples | exits differ (near T / far) | accuracy ours / theirs (%) "
              "| exit counts ours / theirs |", "|---|---|---|---|---|"]
    for r in eq["routing"]:
        ts = r["thresholds"] if isinstance(r["thresholds"], str) else \
            "T = " + ", ".join(f"{t:g}" for t in r["thresholds"])
        lines.append(f"| {ts} | {r['samples']} | {r['differ']} ({r['differ_near_threshold']} / "
                     f"{r['differ_far']}) | {100 * r['accuracy_ours']:.2f} / "
                     f"{100 * r['accuracy_theirs']:.2f} | {r['exit_counts_ours']} / "
                     f"{r['exit_counts_theirs']} |")
    ba = eq["baseline_accuracy"]
    lines.append(f"| baseline | {eq['routing'][0]['samples']} | - | {100 * ba['ours']:.2f} / "
                 f"{100 * ba['theirs']:.2f} | - |")
    if train:
        lines += ["", f"## Training: {train['steps']} Adam steps, batch {train['batch']}", "",
                  "Loss per exit; relative differences: ours vs theirs (ours, theirs vs ours in "
                  "float64 from the same weights).", "",
                  "| phase | step | loss theirs | loss ours | rel. diff (vs float64) |",
                  "|---|---|---|---|---|"]
        for phase in ("baseline", "joint"):
            t = np.array(train[phase]["theirs"])
            o = np.array(train[phase]["ours"])
            r = np.array(train[phase]["ours_float64"])
            for s in range(len(t)):
                rel = lambda a, b: np.max(np.abs(a - b) / np.abs(b))  # noqa: E731
                lines.append(f"| {phase} | {s + 1} | {', '.join(f'{v:.6f}' for v in t[s])} | "
                             f"{', '.join(f'{v:.6f}' for v in o[s])} | "
                             f"{rel(o[s], t[s]):.1e} ({rel(o[s], r[s]):.1e}, "
                             f"{rel(t[s], r[s]):.1e}) |")
        g = train["baseline"]["first_gradients"]
        lines.append(f"\nGradients of the first baseline minibatch, per array, largest difference "
                     f"relative to the array's largest float64 gradient (max / median over "
                     f"{g['arrays'] - g['zero_gradient_arrays']} arrays): theirs vs ours "
                     f"{g['theirs_vs_ours']['max']:.1e} / {g['theirs_vs_ours']['median']:.1e}; "
                     f"theirs vs float64 {g['theirs_vs_float64']['max']:.1e} / "
                     f"{g['theirs_vs_float64']['median']:.1e}; ours vs float64 "
                     f"{g['ours_vs_float64']['max']:.1e} / {g['ours_vs_float64']['median']:.1e}; "
                     f"{g['zero_gradient_arrays']} array(s) with a zero float64 gradient left out.")
        lines.append(f"\nJoint phase, largest parameter differences after {train['steps']} steps: "
                     + ", ".join(f"{d['array']} {d['max_abs']:.2e}"
                                 for d in train["joint_largest_weight_differences"][:3])
                     + f"; weights more than 1e-5 apart: "
                       f"{100 * train['joint_fraction_of_weights_apart']:.3f}%")
        q = train["their_pipeline"]
        lines.append(f"\nTheir pipeline (baseline steps, then joint steps, as their script runs "
                     f"them): their B-net's final exit after the baseline phase is still its "
                     f"initialisation: {q['final_exit_untouched_by_baseline_phase']}; their "
                     f"main's final-classifier copy, which gets no gradient in the joint phase, "
                     f"still moved by up to {q['main_final_copy_change_in_joint_phase']:.2e} "
                     f"(Adam momentum); Adam steps of their main optimizer after both phases: "
                     f"{q['main_optimizer_steps_after_both']} (carried over), of the branch "
                     f"optimizers: {q['branch_optimizer_steps_after_both']}.")
    if tim:
        lines += ["", f"## Batch-size-1 latency, ms per sample: median [min-max] of "
                      f"{tim['rounds']} interleaved rounds, {tim['samples']} test images", "",
                  "Theirs run in their Python 2.7 process and ours in a child process, each "
                  "called one sample at a time over a pipe; the last column times ours in the "
                  "process that drives the rounds (no pipe, never idle).", "",
                  "| network / point | theirs: reported (trunk only) | theirs: wall clock | "
                  "ours: end to end | ours: trunk only | wall theirs / ours | "
                  "ours: end to end, in the driving process |",
                  "|---|---|---|---|---|---|---|"]
        for r in tim["rows"]:
            name = spec.title if r["config"] == "baseline" else f"B-{spec.title} {r['config']}"
            q = r["wall_theirs_over_ours"]
            lines.append(f"| {name} | {_ms(r['theirs_reported'])} | {_ms(r['theirs_wall'])} | "
                         f"{_ms(r['ours_end_to_end'])} | {_ms(r['ours_trunk_only'])} | "
                         f"{q['median']:.2f}x [{q['low']:.2f}-{q['high']:.2f}] | "
                         f"{_ms(r['ours_end_to_end_in_driver'])} |")
        load = tim["interleaved"].get("load", {})
        if load:
            lines.append(f"\nLoad average before / after: {load.get('before')} / {load.get('after')}")
    if epoch:
        s = epoch["seconds"]
        lines += ["", f"## One training epoch, batch {epoch['batch']}, {epoch['train_samples']} "
                      f"images: wall seconds, {epoch['rounds']} alternating round(s)", "",
                  "| phase | theirs | theirs (their own sum) | ours |", "|---|---|---|---|"]
        for phase, label in (("main", "baseline"), ("joint", "B-net (joint)")):
            fmt = lambda v: ", ".join(f"{x:.1f}" for x in v)  # noqa: E731
            lines.append(f"| {label} | {fmt(s[f'theirs_{phase}'])} | "
                         f"{fmt(s[f'theirs_{phase}_reported'])} | {fmt(s[f'ours_{phase}'])} |")
    return "\n".join(lines) + "\n"


def rounding_limited(row):
    """Outputs so sensitive that float32 rounding alone moves ours this far: theirs are
    then no farther from the float64 reference than ``ROUNDING_FACTOR`` times ours."""
    return row["theirs_vs_float64"] <= ROUNDING_FACTOR * max(row["ours_vs_float64"], LOGIT_RTOL / 10)


def verdict(eq, train):
    """Problems that make the comparison fail (an empty list: equivalent)."""
    problems = []
    for n, row in enumerate(eq["exits"] + [eq["baseline"]]):
        name = f"exit {n + 1}" if n < len(eq["exits"]) else "baseline"
        if row["nonfinite_ours"] or row["nonfinite_theirs"]:
            problems.append(f"{name}: logits not finite for {row['nonfinite_theirs']} sample(s) "
                            f"of theirs and {row['nonfinite_ours']} of ours (no comparison)")
            continue
        if row["max_rel"] > LOGIT_RTOL and not rounding_limited(row):
            problems.append(f"{name} logits differ by {row['max_rel']:.1e} of the largest, "
                            f"more than float32 rounding explains")
        if "entropy_max_abs" in row and row["entropy_max_abs"] > ENTROPY_ATOL and not (
                rounding_limited(row) and row["entropy_theirs_vs_float64"]
                <= ROUNDING_FACTOR * max(row["entropy_ours_vs_float64"], ENTROPY_ATOL)):
            problems.append(f"{name} entropies differ by {row['entropy_max_abs']:.1e}")
    for r in eq["routing"]:
        if r["differ_far"]:
            problems.append(f"{r['differ_far']} exit decision(s) differ away from a threshold "
                            f"at {r['thresholds']}")
    if train:
        for phase in ("baseline", "joint"):
            t = train[phase]
            g = t.get("first_gradients")
            if g:  # rounding, if their gradients are no farther from float64 than ours
                rounding = g["theirs_vs_float64"]["max"] <= ROUNDING_FACTOR * max(
                    g["ours_vs_float64"]["max"], 1e-6)
            else:
                rounding = t["theirs_vs_float64"] <= ROUNDING_FACTOR * max(
                    t["ours_vs_float64"], LOSS_RTOL / 10)
            if t["max_rel"] > LOSS_RTOL and not rounding:
                problems.append(f"{phase} training losses differ by {t['max_rel']:.1e}, "
                                f"more than float32 rounding explains")
    return problems


def _compare(args, spec, data, x, y, route_n, thresholds, checkout, python, info):
    """Everything that talks to their process; returns the results."""
    with tempfile.TemporaryDirectory(prefix="authors-") as work, \
            A.AuthorsProcess(python, checkout) as their:
        info["theirs"] = {"chainer": their.info.get("chainer"), "checkout": checkout}
        if args.model:
            log(f"[authors] loading their model {args.model}")
            their.call("load_bn", path=os.path.abspath(args.model))
            info["source"] = f"their model {args.model}"
        elif args.weights:
            from branchynet.training import load_weights
            log(f"[authors] our weights {args.weights} -> their network")
            ours = load_weights(args.weights, BranchyNet(spec.build()))
            arrays = A.to_interchange(ours, "branchy")
            if args.baseline_weights:
                base = load_weights(args.baseline_weights, BranchyNet(spec.build(), main_only=True))
                arrays.update(A.to_interchange(base, "main"))
            sent = arrays
            _save_npz(os.path.join(work, "ours.npz"), **arrays)
            their.call("build", network=spec.name, seed=args.seed)
            their.call("import", path=os.path.join(work, "ours.npz"))
            their.call("save_bn", path=os.path.abspath(os.path.join(args.out, "ours_as_theirs.bn")))
            log(f"[authors] wrote {os.path.join(args.out, 'ours_as_theirs.bn')} (their dill format)")
            info["source"] = f"our weights {args.weights}"
        else:
            their.call("build", network=spec.name, seed=args.seed)
            info["source"] = f"their initialisation (seed {args.seed})"
            if any(args.authors_train):
                path = os.path.join(work, "train.npz")
                _save_npz(path, x=data.train_x, y=data.train_y)
                for phase, epochs in zip(("main", "joint"), args.authors_train):
                    for e in range(epochs):
                        r = their.call("epoch", phase=phase, data=path, seed=args.seed * 1000 + e)
                        log(f"[authors] their {phase} epoch {e + 1}/{epochs}: {r['wall']:.0f} s, "
                            f"loss {r['loss']}")
                bn = os.path.abspath(os.path.join(args.out, "theirs_trained.bn"))
                their.call("save_bn", path=bn)
                info["source"] += (f", trained by their utils.train: {args.authors_train[0]} "
                                   f"baseline + {args.authors_train[1]} joint epochs, batch 512")
                log(f"[authors] wrote their trained model {bn}")
            if args.authors_train_steps:
                n, b = args.authors_train_steps, args.train_batch
                idx = np.random.RandomState(args.seed + 2).permutation(len(data.train_y))[:n * b]
                path = os.path.join(work, "pretrain.npz")
                _save_npz(path, x=data.train_x[idx].reshape((n, b) + data.train_x.shape[1:]),
                          y=data.train_y[idx].reshape(n, b))
                for phase in ("main", "joint"):
                    losses = their.call("train_steps", phase=phase, batches=path,
                                        fresh_optimizers=(phase == "main"))["losses"]
                    log(f"[authors] their {phase} phase, {n} steps: last loss {losses[-1]}")
                info["source"] += (f", trained by their train_main() then train() on {n} + {n} "
                                   f"minibatches of {b}")
        desc = their.call("export", path=os.path.join(work, "theirs.npz"))
        info["their_model"] = {k: v for k, v in desc.items() if k != "layers"}
        arrays = A.load_interchange(os.path.join(work, "theirs.npz"))
        if args.weights:  # ours -> theirs: their network now holds exactly our arrays
            info["ours_to_theirs_exact"] = A.same_arrays({k: arrays[k] for k in sent}, sent)
            log(f"[authors] ours -> theirs exact: {info['ours_to_theirs_exact']}")
        A.save_interchange(os.path.join(args.out, "theirs_interchange.npz"), arrays)
        net, baseline = _our_nets(spec, arrays)
        from branchynet.training import save_weights
        save_weights(os.path.join(args.out, "theirs_as_ours_branchynet.npz"), net)
        save_weights(os.path.join(args.out, "theirs_as_ours_baseline.npz"), baseline)
        back = A.to_interchange(net, "branchy")
        back.update(A.to_interchange(baseline, "main"))
        info["roundtrip_exact"] = A.same_arrays(back, arrays)
        log(f"[authors] weights across: {len(arrays)} arrays; theirs -> ours -> theirs exact: "
            f"{info['roundtrip_exact']}; their trunk copies equal their main: "
            f"{desc['trunk_copies_equal_main']}; final classifier copy equal: "
            f"{desc['final_classifier_copy_equal']}")
        log(f"[authors] equivalence on {len(x)} test images ({route_n} routed one by one)")
        eq = equivalence(their, spec, net, baseline, x, y, route_n, thresholds, work)
        train = None
        if args.train_steps:
            if spec.name == "alexnet_cifar10":
                log("[authors] training check skipped: B-AlexNet's dropout masks come from "
                    "each side's own random stream, so the losses cannot match step by step")
            else:
                log(f"[authors] training check: {args.train_steps} Adam steps, batch {args.train_batch}")
                train = training_check(their, spec, data, args.train_steps, args.train_batch,
                                       args.seed, arrays, work)
        tim = None
        if args.timing_samples:
            n = min(args.timing_samples, len(data.test_y))
            log(f"[authors] timing {n} images at batch size 1, {args.rounds} rounds")
            tim = timing(their, net, baseline, data.test_x[:n], data.test_y[:n], thresholds,
                         args.rounds, work)
        epoch = None
        if args.epoch_rounds:
            log(f"[authors] one training epoch, {args.epoch_rounds} round(s)")
            epoch = epoch_timing(their, spec, data, args.epoch_rounds, work)
        if args.write_fixture:
            write_fixture(args.write_fixture, spec, arrays, eq, train, x, y, info)
            log(f"[authors] wrote the fixture to {args.write_fixture}")
    return eq, train, tim, epoch


def main(argv=None):
    args = parse_args(argv)
    try:
        checkout = A.check_checkout(args.authors_repo)
        python = A.ensure_env(checkout, args.python2, args.env, log=log)
    except A.AuthorsSetupError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    spec = get_network(args.network)
    thresholds = args.thresholds or paper_thresholds(spec)
    n_exits = len(spec_exits(spec))
    if len(thresholds) != n_exits - 1:
        print(f"error: --thresholds: {spec.name} has {n_exits} exits, so it needs "
              f"{n_exits - 1} threshold(s), got {len(thresholds)}", file=sys.stderr)
        sys.exit(2)
    from branchynet.datasets import DatasetError, load_dataset
    try:
        data = load_dataset(spec.dataset, args.data_dir, **spec.dataset_options)
    except DatasetError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    x, y = data.test_x[:args.test_samples], data.test_y[:args.test_samples]
    route_n = min(args.route_samples or len(x), len(x))
    os.makedirs(args.out, exist_ok=True)
    info = {"command": "python -m experiments.authors " + " ".join(argv or sys.argv[1:]),
            "ours": A.python_info(), "network": spec.name,
            "machine": machine_info("@numpy"),
            "blas_threads": os.environ.get("OPENBLAS_NUM_THREADS"),
            "load_average_start": list(os.getloadavg()),
            "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
    try:
        eq, train, tim, epoch = _compare(args, spec, data, x, y, route_n, thresholds, checkout,
                                         python, info)
    except A.AuthorsError as err:
        print(f"error: {err}", file=sys.stderr)
        if getattr(err, "their_traceback", None):
            print(f"(in their process:)\n{err.their_traceback}", file=sys.stderr)
        sys.exit(1)
    text = tables(eq, train, tim, epoch, spec)
    problems = verdict(eq, train)
    eq.pop("fixture")
    if train:
        train.pop("fixture")
    write_json(os.path.join(args.out, "equivalence.json"), {"info": info, "equivalence": eq,
                                                             "training": train,
                                                             "problems": problems})
    if tim:
        write_json(os.path.join(args.out, "timing.json"), {"info": info, **tim})
    if epoch:
        write_json(os.path.join(args.out, "epoch.json"), {"info": info, **epoch})
    m = info["machine"]
    header = (f"# {spec.name}: ours against the authors' code\n\nSource of the weights: "
              f"{info['source']}\n\nCommand: `{info['command']}`\n\nMachine: {m['cpu']}, "
              f"{m['cpu_count']} cores, CPU only, OPENBLAS_NUM_THREADS={info['blas_threads']}; "
              f"started {info['started']}, load average {info['load_average_start']} "
              f"(1, 5, 15 min); ours: Python {m['python']}, Chainer {m['chainer']}, NumPy "
              f"{m['numpy']}; theirs: Python 2.7, Chainer {info['theirs']['chainer']}\n\n")
    write_text(os.path.join(args.out, "tables.md"), header + text)
    print(header + text)
    if problems:
        print("NOT EQUIVALENT:\n  " + "\n  ".join(problems), file=sys.stderr)
        sys.exit(1)
    print(f"equivalent within tolerance (logits {LOGIT_RTOL:g} of the largest, entropies "
          f"{ENTROPY_ATOL:g}, losses {LOSS_RTOL:g} relative, or no farther from float64 than "
          f"{ROUNDING_FACTOR}x our own float32 rounding); results in {args.out}")


if __name__ == "__main__":
    main()
