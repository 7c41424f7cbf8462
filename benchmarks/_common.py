"""What the benchmark scripts share: options, the experiment they measure, extra timing
variants, JSON.

The data, networks, weights, exit outputs and knee come from the runner's own object,
``experiments.experiment.Experiment``: either a results folder of ``python -m
experiments.run`` (``--results DIR``, read with ``Experiment.from_results``: its weights,
its cached exit outputs and, for the knee, its timing record) or the runner's data and
training stages run here on a quick setting, in a weights cache folder
``<cache>/benchmark-weights/<network>-<hash of the settings>/`` so that the scripts and
reruns train each setting once. Every JSON records which weights were used.

Every latency the scripts report is timed by ``branchynet.timing.interleave``
(``--timing-rounds`` rounds, variants alternating in blocks of ``--block`` samples): a
figure is the median over rounds with its quartiles, a gain the median of the per-round
paired ratios with their [min, max] as interval. The variants here (``PlainPath``,
``Within``) are timed alongside the library's ``EndToEnd`` and ``TrunkOnly``. Only the
framework constants (``per_call_overhead_us``, ``peak_gflops``) time no network and are
measured on their own.
"""
import argparse
import contextlib
import hashlib
import json
import os
import time

import branchynet  # noqa: F401  (compatibility fixes before chainer)
import chainer
import chainer.links as L
import numpy as np
from chainer import backend

from branchynet import cpu_kernels
from branchynet.datasets import cache_dir
from experiments.experiment import SELECTION_KEYS, Experiment
from branchynet.io import read_json, write_json
from branchynet.provenance import blas_settings
from branchynet.threads import set_blas_threads
from branchynet.report import device_label, machine_info
from branchynet.timing import (Interleaved, interval_coverage, loadavg, measure_latency,
                               synchronize)
from branchynet.training import load_weights, recalibrate_batchnorm, save_weights
from networks import get_network

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS_DIR = os.path.join(REPO, "benchmarks", "results")

# Quick in-script training (when no --results folder is given): enough for exit
# entropies to spread over the grid; not the paper's accuracy. Batch sizes are the
# networks' quick ones (the paper's 512/512/64 are for full training runs).
QUICK_TRAINING = {
    "lenet_mnist": {"dataset": "mnist", "train_limit": 10000, "epochs": 2, "batch_size": 64},
    "alexnet_cifar10": {"dataset": "cifar10", "train_limit": 1024, "epochs": 1, "batch_size": 128},
    "resnet110_cifar10": {"dataset": "cifar10", "train_limit": 128, "epochs": 1, "batch_size": 64},
}


def parser(description, defaults):
    """An argument parser with the options every benchmark script takes.

    ``defaults`` maps each network to its quick per-script settings; options left at
    None are filled from it by ``finish_args``.
    """
    p = argparse.ArgumentParser(description=description,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--network", default="lenet_mnist",
                   help="a network as the runner takes it: a registered name, FILE.py:NAME, "
                   "package.module:NAME or an installed plug-in (default: %(default)s)")
    p.add_argument("--device", default="@numpy",
                   help="Chainer device specifier, e.g. @numpy or @cupy:0 (default: %(default)s)")
    p.add_argument("--out", help="JSON file to write (default: benchmarks/results/"
                   "<benchmark>_<network>_<device>.json)")
    p.add_argument("--results", metavar="DIR",
                   help="use the weights, cached exit outputs and timing record of this "
                   "experiments.run results folder instead of training briefly here")
    p.add_argument("--data-dir", help="dataset folder (default: $BRANCHYNET_DATA, then the cache)")
    p.add_argument("--train-limit", type=int,
                   help="quick training: first N training images (default: per network)")
    p.add_argument("--epochs", type=int,
                   help="quick training: epochs of baseline and of joint training (default: per network)")
    p.add_argument("--train-batch-size", type=int,
                   help="quick training: batch size (default: per network)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    p.add_argument("--weights-cache", default=os.path.join(cache_dir(), "benchmark-weights"),
                   help="where quickly trained weights are kept (default: %(default)s)")
    p.add_argument("--timing-rounds", type=int, default=5,
                   help="interleaved rounds of every timing; figures are medians over the "
                   "rounds (default: %(default)s)")
    p.add_argument("--block", type=int,
                   help="samples per interleaved block of timings (default: per network, else 10)")
    p.add_argument("--warmup", type=int,
                   help="untimed calls of every timing variant before round 1 (default: per "
                   "network, else 2)")
    p.add_argument("--blas-threads", type=int, default=1,
                   help="threads of every loaded BLAS library (threadpoolctl, whatever "
                   "OPENBLAS_NUM_THREADS says) (default: %(default)s, as every timing of the "
                   "runner)")
    p.set_defaults(_defaults=defaults)
    return p


def finish_args(args, name):
    """Fill per-network defaults (options left at None), the device and the output path."""
    try:
        spec = get_network(args.network)
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None
    if spec.dataset is None and args.network not in QUICK_TRAINING and not args.results:
        raise SystemExit(f"error: {args.network} names no dataset; benchmark it from a runner "
                         f"results folder: --results DIR")
    for key, value in args._defaults.get(args.network, {}).items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    quick = QUICK_TRAINING.get(args.network) or {
        "dataset": get_network(args.network).dataset, "train_limit": 1000, "epochs": 1,
        "batch_size": 64}
    args.train_limit = args.train_limit or quick["train_limit"]
    args.epochs = args.epochs if args.epochs is not None else quick["epochs"]
    args.train_batch_size = args.train_batch_size or quick["batch_size"]
    args.quick_dataset = quick["dataset"]
    args.block = args.block or 10
    args.warmup = args.warmup if args.warmup is not None else 2
    if args.timing_rounds < 1 or args.block < 1:
        raise SystemExit("error: --timing-rounds and --block must be >= 1")
    if args.blas_threads < 1:
        raise SystemExit("error: --blas-threads must be >= 1")
    set_blas_threads(args.blas_threads)
    try:
        args.chainer_device = chainer.get_device(args.device)
    except Exception as err:
        raise SystemExit(f"error: --device {args.device!r} is not a usable Chainer device ({err})")
    args.out = args.out or os.path.join(
        RESULTS_DIR, f"{name}_{spec.slug}_{device_label(args.chainer_device)}.json")
    return args


def log(text):
    print(text, flush=True)


# ---------------------------------------------------------------------------------------
# The experiment a benchmark measures


class Setup:
    """An ``Experiment`` with its networks and data loaded, and where the weights came from."""

    def __init__(self, exp, weights):
        self.exp, self.weights = exp, weights
        self.spec, self.data = exp.spec, exp.data
        self.baseline, self.branchy = exp.baseline, exp.branchy


def prepare(args, test_samples=0, need_weights=True):
    """The experiment of ``args.network``: data, baseline and B-net (on the CPU).

    With ``--results`` the folder's settings, data and weights; else the quick setting,
    trained here (or untrained when ``need_weights`` is false) on the first
    ``test_samples`` test images (0: all).
    """
    if args.results:
        return _from_results(args)
    return _quick(args, test_samples, need_weights)


def _from_results(args):
    exp = Experiment.from_results(args.results, log=log)
    if exp.spec.name != args.network:
        raise SystemExit(f"error: {args.results} holds a {exp.spec.name} run, not {args.network}")
    exp.s.data_dir = args.data_dir
    _settings_checked(exp.load_data)
    exp.build_networks()
    load_weights(exp.path("baseline.npz"), exp.baseline)
    load_weights(exp.path("branchynet.npz"), exp.branchy)
    if all(os.path.exists(exp.path(f"exit_outputs{kind}.npz")) for kind in ("", "_baseline")):
        exp.load_cached_outputs()
    config = exp.config
    weights = {"source": "results folder", "path": os.path.abspath(args.results),
               "sha256": exp.weights_key(),
               "training": {k: config.get(k) for k in (
                   "dataset", "dataset_options", "train_limit", "batch_size",
                   "baseline_epochs", "branchy_epochs", "seed")}}
    return Setup(exp, weights)


def _settings_checked(stage):
    """Run an experiment stage; settings the data cannot serve end the script with the
    runner's message (the library raises them as ValueError)."""
    try:
        return stage()
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None


def _quick(args, test_samples, need_weights):
    from experiments.run import parse_args as runner_args
    spec = get_network(args.network)
    settings = {"network": spec.name, "dataset": args.quick_dataset,
                "dataset_options": dict(spec.dataset_options), "train_limit": args.train_limit,
                "epochs": args.epochs, "batch_size": args.train_batch_size, "seed": args.seed}
    key = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]
    folder = os.path.join(args.weights_cache, f"{spec.name}-{key}")
    argv = ["--network", spec.name, "--dataset", args.quick_dataset,
            "--train-limit", str(args.train_limit), "--test-limit", str(test_samples),
            "--baseline-epochs", str(args.epochs), "--branchy-epochs", str(args.epochs),
            "--batch-size", str(min(args.train_batch_size, args.train_limit)),
            "--seed", str(args.seed),
            "--timing-samples", "0", "--timing-rounds", str(args.timing_rounds),
            "--out", folder, "--no-progress"]
    exp = Experiment(runner_args(argv + (["--data-dir", args.data_dir] if args.data_dir else [])),
                     log=log)
    _settings_checked(exp.load_data)
    if not need_weights:
        exp.build_networks()
        return Setup(exp, {"source": "untrained (random initialisation)", "training": settings})
    _settings_checked(exp.check_folder)
    paths = {name: exp.path(f"{name}.npz") for name in ("baseline", "branchynet")}
    fresh = [name for name, path in paths.items() if not os.path.exists(path)]
    start = time.perf_counter()
    exp.train(args.chainer_device)
    recalibrated = False
    for name in fresh:
        net = exp.baseline if name == "baseline" else exp.branchy
        net.to_device("@numpy")
        recalibrated = recalibrate_batchnorm(net, exp.data.train_x)
        if recalibrated:
            save_weights(paths[name], net)
    if fresh:
        log(f"[weights] {spec.name}: trained {' and '.join(fresh)} on {len(exp.data.train_y)} "
            f"{args.quick_dataset} images in {time.perf_counter() - start:.0f} s" + (
                "; BatchNorm statistics re-estimated on one batch" if recalibrated else ""))
    weights = {"source": "trained by the benchmark", "training": settings, "cache": folder,
               "sha256": exp.weights_key()}
    return Setup(exp, weights)


def exit_outputs(setup, device):
    """The experiment's exit outputs and exact sweep: the results folder's cached outputs,
    else computed now by the runner's stage (``Experiment.exit_outputs``, which caches them
    in the folder, keyed to the weights and inputs)."""
    exp = setup.exp
    if exp.outputs is None:
        exp.exit_outputs(device)
    if exp.sweep is None:
        exp.evaluate()
    return exp.outputs


def knee_point(setup, device, x, args):
    """The knee as the runner picks it (``Experiment.select`` on a timing record).

    The record is the results folder's ``timing_<device>.json`` when there is one with a
    profile, else an exit-path profile measured now on ``x`` with ``measure_latency``
    (``--timing-rounds`` rounds). Returns a dict with the thresholds, their accuracy and
    exit fractions on the exit outputs, the exit-path medians, the frontier and the
    profile.
    """
    exp = setup.exp
    outputs = exit_outputs(setup, device)
    path = exp.path(f"timing_{exp.tag(device)}.json")
    record = read_json(path) if args.results and os.path.exists(path) else {}
    if "profile" in record:
        machine = record.get("machine") or {}
        source = (f"results folder ({os.path.basename(path)}, measured on "
                  f"{machine.get('gpu') or machine.get('cpu')})")
    else:
        setup.branchy.to_device(device)
        setup.baseline.to_device(device)
        profile, _ = measure_latency(setup.branchy, setup.baseline, x, device,
                                     rounds=args.timing_rounds, block=args.block,
                                     criterion=exp.s.criterion)
        settings = {k: getattr(exp.s, k) for k in SELECTION_KEYS}
        settings["grid"] = list(settings["grid"])
        record = {"settings": settings, "profile": profile.to_json()}
        source = f"measured now on {len(x)} test samples"
    selection = exp.select(record)
    k, sweep = int(selection["knee"]), exp.sweep
    return {"thresholds": [float(t) for t in sweep.thresholds[k]],
            "accuracy": float(sweep.accuracy[k]),
            "exit_fractions": sweep.exit_fractions[k].tolist(),
            "predicted_ms": float(selection["predicted"][k]),
            "path_ms": selection["paths"]["path_ms"], "path_ms_source": source,
            "frontier_thresholds": [sweep.thresholds[i].tolist() for i in selection["frontier"]],
            "grid_points": len(sweep.accuracy), "eval_samples": len(outputs),
            "profile": record["profile"]}


# ---------------------------------------------------------------------------------------
# Timing variants the library does not have (callables i -> seconds, for ``interleave``)


class PlainPath:
    """A plain forward of sample ``i`` to exit ``n`` at batch size 1, no routing.

    Trunk segments up to exit ``n``, then head ``n`` and the argmax; the input is sent to
    the device and the label back, with the inference settings of ``BranchyNet.predict``,
    so only the exit decisions are missing. With ``all_heads`` the heads of the exits
    before ``n`` run as well (outputs unused): what a sample leaving at exit ``n`` computes
    in early-exit inference, without the decisions.
    """

    def __init__(self, net, x, n, device, all_heads=False):
        self.net, self.x, self.n, self.device, self.all_heads = net, x, n, device, all_heads
        self.cpu = backend.CpuDevice()

    def __call__(self, i):
        start = time.perf_counter()
        with chainer.using_config("train", False), chainer.no_backprop_mode():
            h = self.device.send(self.x[i:i + 1])
            for m in range(self.n + 1):
                h = self.net.run_trunk(h, m)
                if m < self.n and self.all_heads:
                    self.net.heads[m](h)
            label = chainer.as_array(self.net.heads[self.n](h)).argmax(axis=1)
        self.cpu.send(label)
        synchronize(self.device)
        return time.perf_counter() - start


class Within:
    """A variant run inside a context (made fresh per call by ``context()``), which stays
    outside the variant's own clock reads."""

    def __init__(self, variant, context):
        self.variant, self.context = variant, context

    def __call__(self, i):
        with self.context():
            return self.variant(i)


def no_type_check():
    return chainer.using_config("type_check", False)


@contextlib.contextmanager
def batched_routing_only():
    """Route batch-size-1 inputs through the general batched loop of ``early_exit``.

    That loop is what every batch size ran before the batch-size-1 fast path was added,
    so this measures "before" side by side with "after". A no-op if there is no fast path.
    """
    import branchynet.routing as routing
    had = hasattr(routing, "SINGLE_SAMPLE_FAST_PATH")
    saved = getattr(routing, "SINGLE_SAMPLE_FAST_PATH", None)
    if had:
        routing.SINGLE_SAMPLE_FAST_PATH = False
    try:
        yield had
    finally:
        if had:
            routing.SINGLE_SAMPLE_FAST_PATH = saved


def per_call_overhead_us(device, calls=2000):
    """Microseconds of Chainer's fixed cost per call, on a 1x1 array in inference mode:
    ``F.identity`` (a FunctionNode) and a 1x1 ``L.Linear`` (a Link calling one function);
    the median of 5 runs."""
    import chainer.functions as F
    a = device.send(np.zeros((1, 1), np.float32))
    linear = L.Linear(1, 1)
    linear.to_device(device)
    result = {}
    with chainer.using_config("train", False), chainer.no_backprop_mode():
        for name, fn in (("function_call_us", lambda: F.identity(a)),
                         ("link_call_us", lambda: linear(a)),
                         ("numpy_op_us", lambda: device.xp.maximum(a, 0))):
            for _ in range(100):
                fn()
            runs = []
            for _ in range(5):
                synchronize(device)
                start = time.perf_counter()
                for _ in range(calls // 5):
                    fn()
                synchronize(device)
                runs.append((time.perf_counter() - start) / (calls // 5))
            result[name] = 1e6 * float(np.median(runs))
    return result


def peak_gflops(device, size=1024, repeats=5):
    """Measured float32 matrix-multiply throughput (GFLOP/s) of ``device``: the rate at
    which the FLOP count of a network could be executed at best."""
    xp = device.xp
    a = xp.asarray(np.random.RandomState(0).rand(size, size).astype(np.float32))
    a @ a
    runs = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        a @ a
        synchronize(device)
        runs.append(time.perf_counter() - start)
    return 2 * size ** 3 / min(runs) / 1e9


def concatenate_rounds(parts):
    """One ``Interleaved`` from several run one after the other (rounds appended)."""
    names = parts[0].names
    rounds = {k: np.concatenate([p.rounds_ms[k] for p in parts]) for k in names}
    load = {"before": parts[0].load.get("before"), "after": parts[-1].load.get("after")}
    return Interleaved(rounds, parts[0].samples, load)


def shifted(summary, by):
    """A ``ratio_summary`` moved by ``by`` (e.g. -1: a ratio as an overhead)."""
    return {**summary, "median": summary["median"] + by, "low": summary["low"] + by,
            "high": summary["high"] + by}


def difference_us(a, b):
    """Per-round ``a - b`` (ms arrays) in microseconds: median and [min, max]."""
    d = 1e3 * (np.asarray(a) - np.asarray(b))
    return {"median": float(np.median(d)), "low": float(d.min()), "high": float(d.max())}


def fmt_stats(stats):
    """'0.630 ms [0.621, 0.644]': median and quartiles over the rounds."""
    return f"{stats['median_ms']:.3f} ms [{stats['q1_ms']:.3f}, {stats['q3_ms']:.3f}]"


def fmt_ratio(r, unit="x"):
    """'1.38x [1.35, 1.41]': median and range of the per-round values; 'n.s.' when the
    range includes 1 (a gain) or 0 (an overhead)."""
    text = f"{r['median']:.2f}{unit} [{r['low']:.2f}, {r['high']:.2f}]"
    return text if r.get("significant", True) else text + " n.s."


def timing_note(timings):
    """'(median of 5 interleaved rounds, 93.8% interval; load 1.02 -> 1.10)'."""
    load = timings.load or {}
    before, after = load.get("before"), load.get("after")
    where = f"; load {before[0]:.2f} -> {after[0]:.2f}" if before and after else ""
    return (f"(median of {timings.rounds} interleaved rounds, interval "
            f"{100 * interval_coverage(timings.rounds):.1f}%{where})")


# ---------------------------------------------------------------------------------------
# Results


class Report:
    """Collects the figures of one run, with the machine load around each, into JSON."""

    def __init__(self, benchmark, args, setup=None):
        self.path = args.out
        device = args.chainer_device
        self.doc = {"benchmark": benchmark, "network": args.network,
                    "device": device_label(device), "machine": machine_info(device),
                    "cpu_cores": os.cpu_count(), "threads": blas_settings(),
                    "fast_cpu_kernels": cpu_kernels.is_enabled(),
                    "load_at_start": loadavg(),
                    "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                    "timing_method": "branchynet.timing.interleave: per figure the median over "
                                     f"{args.timing_rounds} interleaved rounds of the per-round "
                                     f"mean, with quartiles; gains paired per round, interval "
                                     f"= [min, max] of the per-round ratios",
                    "settings": {k: v for k, v in vars(args).items()
                                 if not k.startswith("_") and k != "chainer_device"},
                    "weights": setup.weights if setup else None, "figures": {}}

    @contextlib.contextmanager
    def figure(self, key):
        """Record a figure: yields a dict to fill; load and wall time are added."""
        record = {"load_before": loadavg()}
        start = time.perf_counter()
        yield record
        record["wall_s"] = round(time.perf_counter() - start, 3)
        record["load_after"] = loadavg()
        self.doc["figures"][key] = record

    def write(self):
        self.doc["load_at_end"] = loadavg()
        self.doc["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
        write_json(self.path, self.doc)
        log(f"wrote {self.path}")
        return self.doc


def load_note(record):
    """' (load 1.23)' from a figure record: the 1-minute load average after it."""
    load = record.get("load_after") or record.get("load_before")
    return f" (load {load[0]:.2f})" if load else ""

